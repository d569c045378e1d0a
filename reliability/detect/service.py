"""Pending rule groups in the shared database (`pending_alerts`, detect/models.py): saved
by the detection loop on transitions only (a group starts pending; it fires or clears), read
by a member that takes targets over. Keyword-only arguments, the caller's session.

Ages are measured by the database server on PostgreSQL (the cluster's one clock): a row's
`since` is written as `now() - age` and read back as `now() - since`. SQLite is one daemon,
whose own clock is the only one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from reliability.detect.models import PendingAlert

_INSERT = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


@dataclass(frozen=True, slots=True)
class Pending:
    """A rule group pending on some member: held for `age` seconds when written or read."""

    fingerprint: str
    rule: str
    labels: dict[str, str]
    age: float


def _server(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _ago(session: Session, seconds: float) -> sa.ColumnElement[datetime] | datetime:
    if _server(session):
        return sa.func.now() - sa.literal(timedelta(seconds=seconds), sa.Interval())
    return datetime.now(UTC) - timedelta(seconds=seconds)


def save(
    session: Session, *, started: Sequence[Pending], ended: Sequence[str], member_id: str | None
) -> None:
    """Record groups that started pending (replacing an entry of the same fingerprint) and
    remove those that fired or cleared."""
    if ended:
        session.execute(sa.delete(PendingAlert).where(PendingAlert.fingerprint.in_(ended)))
    table = PendingAlert.__table__
    for p in started:
        values = {
            "fingerprint": p.fingerprint,
            "rule": p.rule,
            "labels": p.labels,
            "since": _ago(session, p.age),
            "member_id": member_id,
        }
        stmt = _INSERT[session.get_bind().dialect.name](table).values(values)
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=[table.c.fingerprint],
                set_={k: stmt.excluded[k] for k in values if k != "fingerprint"},
            )
        )


def pending(session: Session) -> list[Pending]:
    """Every pending entry, with its age now."""
    if _server(session):
        age = sa.extract("epoch", sa.func.now() - PendingAlert.since)
        rows = session.execute(sa.select(PendingAlert, age)).all()
        return [Pending(p.fingerprint, p.rule, dict(p.labels), float(a)) for p, a in rows]
    now = datetime.now(UTC)
    return [
        Pending(p.fingerprint, p.rule, dict(p.labels), (now - p.since).total_seconds())
        for p in session.scalars(sa.select(PendingAlert))
    ]


def prune(session: Session, *, older_than: float) -> int:
    """Drop entries pending longer than `older_than` seconds (a rule or target removed from
    the config leaves one nobody fires or clears); how many went."""
    done = session.execute(
        sa.delete(PendingAlert).where(PendingAlert.since < _ago(session, older_than))
    )
    return done.rowcount or 0
