"""Helpers of the outbox tests: commit a firing or a change, drain the outbox, read it back.

Shared by the test modules of this directory (pytest puts it on sys.path, as there is no
package here); their fixtures are in conftest.py.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from reliability.config import SlackConfig
from reliability.incidents import flows
from reliability.notify.dispatcher import Dispatcher
from reliability.notify.models import NotificationRoot, OutboxRow, OutboxStatus
from reliability.testing.slack import SlackStandIn

# Fast enough that tests of ordering and outages do not wait on the 1/s default pacing;
# the pacing itself has its own test at the default.
TEST_RATE = 200.0


def slack_config(**overrides: Any) -> SlackConfig:
    fields: dict[str, Any] = {"token_env": "SLACK_BOT_TOKEN", "channel": "#alerts"}
    return SlackConfig(**(fields | {"max_per_second": TEST_RATE} | overrides))


def rows(session: Session) -> list[OutboxRow]:
    """The outbox as it is now; the read's transaction ends, so SQLite's lock is released."""
    session.expire_all()
    found = list(session.scalars(sa.select(OutboxRow).order_by(OutboxRow.id)))
    session.commit()
    return found


def fire(session: Session, name: str, *, severity: str = "critical", **fields) -> int:
    """One firing of signal `name`, committed with its outbox rows; the incident's id."""
    upsert = flows.open_or_update(
        session,
        fingerprint=name,
        title=f"{name} is hot",
        severity=severity,
        source="rule",
        labels=fields.pop("labels", {"node": "gpu-1"}),
        summary=fields.pop("summary", "temperature 91 C > 85 C"),
        **fields,
    )
    session.commit()
    return upsert.incident.id


def act(session: Session, change: Callable[..., object], incident_id: int, **fields) -> None:
    """Acknowledge, resolve or annotate an incident, committed with its outbox rows."""
    change(session, incident_id=incident_id, **fields)
    session.commit()


def drain(dispatcher: Dispatcher, session: Session, timeout_s: float = 10.0) -> None:
    """Run passes until no row is pending."""
    deadline = time.monotonic() + timeout_s
    while any(row.status == OutboxStatus.pending for row in rows(session)):
        assert time.monotonic() < deadline, f"still pending: {rows(session)}"
        if not dispatcher.run_once():
            time.sleep(0.02)


def statuses(session: Session) -> Counter[str]:
    return Counter(row.status.value for row in rows(session))


def by_incident(slack: SlackStandIn, session: Session) -> dict[int, list[str]]:
    """The successful chat calls for each incident, in arrival order: post, update, reply."""
    session.expire_all()
    roots = {m.ref: m.incident_id for m in session.scalars(sa.select(NotificationRoot))}
    session.commit()
    out: dict[int, list[str]] = {}
    for call in slack.calls():
        if not call.ok or not call.method.startswith("chat."):
            continue
        if call.method == "chat.update":
            out.setdefault(roots[call.ts], []).append("update")
        elif call.thread_ts:
            out.setdefault(roots[call.thread_ts], []).append("reply")
        else:
            # A root post the database does not know would be a message nobody updates.
            assert call.ts in roots, f"a root post no incident owns: {call.text!r}"
            out.setdefault(roots[call.ts], []).append("post")
    return out
