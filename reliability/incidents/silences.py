"""Silences: mute notifications for the incidents that match, for a while, without muting
the record.

A silence never stops an incident being opened, refired, acknowledged or resolved, nor its
timeline. The dispatcher holds back what would ping while a silence covers an incident (a new
message, a thread reply): it marks those outbox rows `skipped` with the silence's id. Edits of
a message posted before the silence still go through, marked with the silence too: an edit
notifies nobody, and it keeps the channel from showing as open an incident resolved meanwhile.

When the silence ends (runs out, or is expired), any later change is posted as usual, and
`incidents.flows.release_ended_holds` gives every still-unresolved incident whose latest
notification a silence held back a `silence_ended` event: its first message, if it opened
during the silence, else a thread reply. Database work only, as in `service`: the caller
owns the transaction.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from reliability.incidents.models import Silence

Op = Literal["=", "=~"]
State = Literal["active", "expired", "ended"]

_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(=~|=)(.*)", re.DOTALL)


class SilenceError(Exception):
    """Base of the silence errors a caller can report to the user."""


class SilenceNotFound(SilenceError):
    def __init__(self, silence_id: int) -> None:
        self.silence_id = silence_id
        super().__init__(f"silence {silence_id} not found")


class SilenceEnded(SilenceError):
    """The silence has already ended (run out or expired): there is nothing to expire."""


@dataclass(frozen=True)
class Matcher:
    """One condition on an incident's labels; a label the incident lacks reads as empty."""

    label: str
    op: Op
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.label, "")
        if self.op == "=":
            return actual == self.value
        # Anchored, as in Alertmanager: `node=~gpu-1` does not silence gpu-10.
        return re.fullmatch(self.value, actual) is not None

    def as_json(self) -> dict[str, str]:
        return {"label": self.label, "op": self.op, "value": self.value}

    @classmethod
    def from_json(cls, data: Mapping[str, str]) -> Matcher:
        return cls(data["label"], cast(Op, data["op"]), data["value"])

    def __str__(self) -> str:
        return f"{self.label}{self.op}{self.value}"


def parse_matcher(text: str) -> Matcher:
    """`LABEL=VALUE` (equal) or `LABEL=~REGEX` (the regex matches the whole value).

    ValueError, naming the input, for anything else or an invalid regex.
    """
    found = _MATCHER.fullmatch(text)
    if found is None:
        raise ValueError(
            f"{text!r}: write LABEL=VALUE or LABEL=~REGEX (a label is letters, digits and _)"
        )
    label, op, value = found.groups()
    if op == "=~":
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{text!r}: not a valid regular expression ({exc})") from None
    return Matcher(label, cast(Op, op), value)


@dataclass(frozen=True)
class ActiveSilence:
    """A silence in force, as the dispatcher checks incidents against it."""

    id: int
    matchers: tuple[Matcher, ...]
    ends_at: datetime

    def covers(self, labels: Mapping[str, str]) -> bool:
        return all(matcher.matches(labels) for matcher in self.matchers)


def matchers_of(silence: Silence) -> list[Matcher]:
    return [Matcher.from_json(data) for data in silence.matchers]


def state(silence: Silence, *, now: datetime) -> State:
    if silence.expired_at is not None:
        return "expired"
    return "ended" if silence.ends_at <= now else "active"


def create(
    session: Session,
    *,
    matchers: Sequence[Matcher],
    duration: timedelta,
    by: str,
    now: datetime,
    comment: str | None = None,
) -> Silence:
    """Silence the incidents whose labels satisfy every matcher, from `now` for `duration`.

    ValueError without matchers, for a duration that is not positive, or when an incident
    without labels would match: such a silence mutes everything lacking the label, one typo
    away from muting the whole fleet (Alertmanager refuses it too).
    """
    if not matchers:
        raise ValueError("a silence needs at least one matcher")
    if duration <= timedelta(0):
        raise ValueError("a silence must last longer than zero")
    if all(matcher.matches({}) for matcher in matchers):
        shown = " ".join(str(matcher) for matcher in matchers)
        raise ValueError(
            f"{shown} also matches incidents without these labels; "
            "add a matcher that needs a non-empty value"
        )
    if not by.strip():
        raise ValueError("by must be a non-empty string")
    silence = Silence(
        matchers=[matcher.as_json() for matcher in matchers],
        starts_at=now,
        ends_at=now + duration,
        created_by=by,
        comment=comment or None,
    )
    session.add(silence)
    session.flush()
    return silence


def list_silences(
    session: Session, *, now: datetime, include_ended: bool = False, limit: int = 100
) -> list[Silence]:
    """The active silences, soonest to end first; with `include_ended`, up to `limit` of all
    silences, newest first."""
    statement = sa.select(Silence)
    if include_ended:
        statement = statement.order_by(Silence.id.desc())
    else:
        statement = statement.where(_in_force(now)).order_by(Silence.ends_at, Silence.id)
    return list(session.scalars(statement.limit(limit)))


def expire(session: Session, *, silence_id: int, now: datetime) -> Silence:
    """End an active silence now. SilenceNotFound, or SilenceEnded if it is not active."""
    silence = session.get(Silence, silence_id, with_for_update=True, populate_existing=True)
    if silence is None:
        raise SilenceNotFound(silence_id)
    current = state(silence, now=now)
    if current != "active":
        ended = silence.expired_at or silence.ends_at
        raise SilenceEnded(f"silence {silence_id} already {current} at {ended:%Y-%m-%d %H:%M:%SZ}")
    silence.expired_at = now
    return silence


def active(executor: Session | Connection, *, now: datetime) -> list[ActiveSilence]:
    """The silences in force at `now`, for checking incidents against."""
    rows = executor.execute(
        sa.select(Silence.id, Silence.matchers, Silence.ends_at).where(_in_force(now))
    )
    return [
        ActiveSilence(row.id, tuple(Matcher.from_json(m) for m in row.matchers), row.ends_at)
        for row in rows
    ]


def covering(silences: Sequence[ActiveSilence], labels: Mapping[str, str]) -> ActiveSilence | None:
    """The silence that covers an incident with these labels, if any (the longest-lasting)."""
    matching = [silence for silence in silences if silence.covers(labels)]
    return max(matching, key=lambda silence: silence.ends_at, default=None)


def _in_force(now: datetime) -> sa.ColumnElement[bool]:
    return sa.and_(Silence.expired_at.is_(None), Silence.starts_at <= now, Silence.ends_at > now)
