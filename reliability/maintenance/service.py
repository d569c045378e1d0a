"""Maintenance windows in the database, and which incidents they cover (database only; the
caller owns the session and the clock).

`create` checks what a window may be: a reason, an end after its start, a start no
earlier than `now` and within `MAX_AHEAD`, and at most `MAX_LENGTH` long. Longer windows
are refused, not capped: a window silently shorter than asked would page in the middle of
the work, and an unbounded one is a forgotten mute. Overlaps are allowed: an incident is
held while any window covers it. `end` ends one now (one not started yet is cancelled).
`active` and `covering` are what the dispatcher, the escalation and the automatic
runbooks ask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from reliability.maintenance.models import MaintenanceWindow

State = Literal["upcoming", "active", "ended", "cancelled"]

MIN_LENGTH = timedelta(minutes=1)
MAX_LENGTH = timedelta(days=7)
MAX_AHEAD = timedelta(days=90)


class MaintenanceError(Exception):
    """Base of the maintenance errors a caller can report to the user."""


class WindowNotFound(MaintenanceError):
    def __init__(self, window_id: int) -> None:
        super().__init__(f"maintenance window {window_id} not found")


class WindowEnded(MaintenanceError):
    """The window has already ended (run out, ended or cancelled): nothing to end."""


def watches_the_watcher(labels: Mapping[str, str]) -> bool:
    """An incident about the suite itself: pages that cannot be delivered (`notifier`), a
    daemon, its leader or its database gone, a runbook that lost its database (`component:
    reliability`). No window holds these: maintenance on the fleet must not hide that
    nobody would be paged when it ends."""
    return "notifier" in labels or labels.get("component") == "reliability"


@dataclass(frozen=True)
class ActiveWindow:
    """A window in force, as incidents and runbook targets are checked against it."""

    id: int
    scope: str
    targets: Mapping[str, Sequence[str]]
    ends_at: datetime
    reason: str

    @classmethod
    def of(cls, window: MaintenanceWindow) -> ActiveWindow:
        return cls(window.id, window.scope, window.targets, window.until, window.reason)

    def covers(self, labels: Mapping[str, str]) -> bool:
        if watches_the_watcher(labels):
            return False
        if self.scope == "fleet":
            return True
        return any(labels.get(label) in values for label, values in self.targets.items())

    def describe(self) -> str:
        """For a skipped row, a note in a thread, a warning: which window, until when, why."""
        return f"maintenance window {self.id} until {self.ends_at:%Y-%m-%d %H:%M}Z ({self.reason})"


def create(
    session: Session,
    *,
    scope: str,
    name: str | None,
    targets: Mapping[str, Sequence[str]],
    starts_at: datetime,
    ends_at: datetime,
    reason: str,
    by: str,
    now: datetime,
) -> MaintenanceWindow:
    """Record a window over `[starts_at, ends_at)` covering `targets` (see the model);
    ValueError, saying what to change, for a window that cannot be."""
    if not reason.strip():
        raise ValueError("say why with --reason: whoever is paged afterwards reads it")
    if not by.strip():
        raise ValueError("by must be a non-empty string")
    if ends_at <= starts_at:
        raise ValueError(
            f"the window ends ({ends_at:%Y-%m-%d %H:%M:%S}Z) before it starts "
            f"({starts_at:%Y-%m-%d %H:%M:%S}Z); give a later end or an earlier start"
        )
    if starts_at < now:
        raise ValueError("a window cannot start in the past; leave out --at to start it now")
    if starts_at - now > MAX_AHEAD:
        raise ValueError("a window starts within 90 days; give an earlier --at")
    if ends_at - starts_at < MIN_LENGTH:
        raise ValueError("a window lasts at least 1 minute")
    if ends_at - starts_at > MAX_LENGTH:
        raise ValueError(
            "a window lasts at most 7 days (longer ones are refused, not shortened): for "
            "longer work take the nodes out (`reliability nodes out`), or start a new window "
            "when this one ends"
        )
    window = MaintenanceWindow(
        scope=scope,
        name=name,
        targets={label: sorted(values) for label, values in targets.items()},
        starts_at=starts_at,
        ends_at=ends_at,
        reason=reason.strip(),
        created_by=by,
        created_at=now,
    )
    session.add(window)
    session.flush()
    return window


def state(window: MaintenanceWindow, *, now: datetime) -> State:
    if window.ended_at is not None and window.ended_at < window.starts_at:
        return "cancelled"
    if window.until <= now:
        return "ended"
    return "active" if window.starts_at <= now else "upcoming"


def end(session: Session, *, window_id: int, by: str, now: datetime) -> MaintenanceWindow:
    """End a window now (one not started yet is cancelled: it never applies).
    WindowNotFound, or WindowEnded if it is over already."""
    window = session.get(MaintenanceWindow, window_id, with_for_update=True, populate_existing=True)
    if window is None:
        raise WindowNotFound(window_id)
    current = state(window, now=now)
    if current in ("ended", "cancelled"):
        raise WindowEnded(
            f"maintenance window {window_id} already {current} at {window.until:%Y-%m-%d %H:%M}Z"
        )
    window.ended_at, window.ended_by = now, by
    session.flush()
    return window


def listed(
    session: Session, *, now: datetime, include_ended: bool = False, limit: int = 100
) -> list[MaintenanceWindow]:
    """Windows in force or to come, soonest to start first; with `include_ended`, up to
    `limit` of all windows, newest first."""
    query = sa.select(MaintenanceWindow)
    if include_ended:
        return list(session.scalars(query.order_by(MaintenanceWindow.id.desc()).limit(limit)))
    query = query.where(_not_over(now)).order_by(MaintenanceWindow.starts_at, MaintenanceWindow.id)
    return list(session.scalars(query.limit(limit)))


def active(executor: Session | Connection, *, now: datetime) -> list[ActiveWindow]:
    """The windows in force at `now`."""
    rows = executor.execute(
        sa.select(
            MaintenanceWindow.id,
            MaintenanceWindow.scope,
            MaintenanceWindow.targets,
            MaintenanceWindow.ends_at,
            MaintenanceWindow.reason,
        ).where(_not_over(now), MaintenanceWindow.starts_at <= now)
    )
    return [ActiveWindow(r.id, r.scope, r.targets, r.ends_at, r.reason) for r in rows]


def covering(windows: Sequence[ActiveWindow], labels: Mapping[str, str]) -> ActiveWindow | None:
    """The window that covers an incident (or a target) with these labels, if any: the
    longest-lasting, since it is the one whose end releases it."""
    matching = [window for window in windows if window.covers(labels)]
    return max(matching, key=lambda window: window.ends_at, default=None)


def _not_over(now: datetime) -> sa.ColumnElement[bool]:
    return sa.and_(
        MaintenanceWindow.ends_at > now,
        sa.or_(MaintenanceWindow.ended_at.is_(None), MaintenanceWindow.ended_at > now),
    )
