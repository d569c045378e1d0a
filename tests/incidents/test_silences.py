"""Silences: what they match, how they are created, listed and expired, and what is released
when they end. Slack itself is in tests/notify/test_silences_and_ack_timeout.py.

Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from reliability.incidents import flows, silences
from reliability.incidents.silences import Matcher, parse_matcher
from reliability.notify import service as outbox_service
from reliability.notify.models import OutboxRow

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def make(session, *matchers: str, at=T0, duration=HOUR):
    created = silences.create(
        session,
        matchers=[parse_matcher(text) for text in matchers],
        duration=duration,
        by="alice",
        now=at,
    )
    session.commit()
    return created


# Matchers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node=gpu-3", Matcher("node", "=", "gpu-3")),
        ("node=~gpu-[0-9]+", Matcher("node", "=~", "gpu-[0-9]+")),
        ("summary=a=b", Matcher("summary", "=", "a=b")),
        ("node=", Matcher("node", "=", "")),
    ],
)
def test_a_matcher_is_label_equals_value_or_label_tilde_regex(text, expected):
    assert parse_matcher(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("node", "write LABEL=VALUE or LABEL=~REGEX"),
        ("=gpu-3", "write LABEL=VALUE or LABEL=~REGEX"),
        ("no de=gpu-3", "write LABEL=VALUE or LABEL=~REGEX"),
        ("node=~gpu-[", "not a valid regular expression"),
    ],
)
def test_a_malformed_matcher_is_refused_with_the_input_named(text, problem):
    with pytest.raises(ValueError, match=problem) as raised:
        parse_matcher(text)
    assert repr(text) in str(raised.value)


def test_a_regex_must_match_the_whole_value_and_a_missing_label_reads_as_empty():
    gpus = parse_matcher("node=~gpu-[12]")
    assert gpus.matches({"node": "gpu-1"})
    assert not gpus.matches({"node": "gpu-10"})
    assert not gpus.matches({})
    assert parse_matcher("pool=").matches({"node": "gpu-1"})


def test_the_longest_lasting_covering_silence_is_the_one_reported(session):
    short = make(session, "node=gpu-3")
    long = make(session, "pool=green", duration=2 * HOUR)
    in_force = silences.active(session, now=T0 + timedelta(minutes=1))

    assert silences.covering(in_force, {"node": "gpu-3", "pool": "green"}).id == long.id
    assert silences.covering(in_force, {"node": "gpu-3", "pool": "blue"}).id == short.id
    assert silences.covering(in_force, {"node": "gpu-1", "pool": "blue"}) is None


# Creating, listing, expiring


@pytest.mark.parametrize(
    ("matchers", "duration", "problem"),
    [
        ((), HOUR, "at least one matcher"),
        (("node=gpu-3",), timedelta(0), "longer than zero"),
        (("node=~.*",), HOUR, "also matches incidents without these labels"),
        (("node=", "pool=~(green)?"), HOUR, "also matches incidents without these labels"),
    ],
)
def test_a_silence_that_could_mute_everything_or_nothing_is_refused(
    session, matchers, duration, problem
):
    with pytest.raises(ValueError, match=problem):
        make(session, *matchers, duration=duration)


def test_a_silence_is_active_until_it_ends_or_is_expired(session):
    runs_out = make(session, "node=gpu-1")
    expired = make(session, "node=gpu-2")
    silences.expire(session, silence_id=expired.id, now=T0 + timedelta(minutes=5))
    session.commit()

    at = T0 + timedelta(minutes=10)
    assert [s.id for s in silences.list_silences(session, now=at)] == [runs_out.id]
    assert silences.state(expired, now=at) == "expired"
    assert silences.state(runs_out, now=T0 + HOUR) == "ended"
    assert silences.list_silences(session, now=T0 + HOUR) == []
    everything = silences.list_silences(session, now=T0 + HOUR, include_ended=True)
    assert [s.id for s in everything] == [expired.id, runs_out.id]


def test_expiring_an_ended_or_unknown_silence_is_an_error(session):
    ended = make(session, "node=gpu-1")
    with pytest.raises(silences.SilenceEnded, match=f"silence {ended.id} already ended"):
        silences.expire(session, silence_id=ended.id, now=T0 + 2 * HOUR)
    silences.expire(session, silence_id=ended.id, now=T0)
    with pytest.raises(silences.SilenceEnded, match="already expired"):
        silences.expire(session, silence_id=ended.id, now=T0)
    with pytest.raises(silences.SilenceNotFound, match="silence 4242 not found"):
        silences.expire(session, silence_id=4242, now=T0)


# Releasing what a silence held back


def held_back(session, fingerprint: str, silence_id: int, **labels: str) -> int:
    """An incident whose outbox rows the dispatcher skipped for this silence; its id."""
    upsert = flows.open_or_update(
        session,
        fingerprint=fingerprint,
        title=fingerprint,
        severity="warning",
        source="rule",
        labels=labels,
        at=T0,
    )
    connection = session.connection()
    queued = session.scalars(
        sa.select(OutboxRow.id).where(OutboxRow.incident_id == upsert.incident.id)
    )
    for row_id in queued.all():
        outbox_service.mark_skipped(
            connection, row_id=row_id, reason="silenced", now=T0, silence_id=silence_id
        )
    session.commit()
    return upsert.incident.id


def test_when_a_silence_runs_out_each_unresolved_incident_it_held_back_is_released_once(session):
    muted = make(session, "node=gpu-3")
    still_open = held_back(session, "hot", muted.id, node="gpu-3")
    resolved = held_back(session, "xid", muted.id, node="gpu-3")
    flows.resolve(session, incident_id=resolved, by="rule", at=T0)
    session.commit()

    assert flows.release_ended_holds(session, now=T0 + timedelta(minutes=59)) == []
    [event] = flows.release_ended_holds(session, now=T0 + HOUR)
    assert (event.incident_id, event.kind, event.data) == (
        still_open,
        "silence_ended",
        {"silence_id": muted.id},
    )
    assert flows.release_ended_holds(session, now=T0 + HOUR) == []


def test_an_incident_another_silence_still_covers_is_not_released(session):
    first = make(session, "node=gpu-3")
    make(session, "pool=green", duration=2 * HOUR)
    held_back(session, "hot", first.id, node="gpu-3", pool="green")

    assert flows.release_ended_holds(session, now=T0 + HOUR) == []
    assert len(flows.release_ended_holds(session, now=T0 + 2 * HOUR)) == 1
