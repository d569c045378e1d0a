"""Members, the leader lease and the fence, on a real PostgreSQL: liveness is the
database's judgement, a paused leader steps down, one id is one daemon."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from reliability import db
from reliability.cluster import service
from reliability.cluster.membership import Membership
from reliability.cluster.service import DuplicateMember

pytestmark = pytest.mark.postgres

LEASE = 2.0  # long enough that a loaded machine does not lose it between two steps
KEYS = [f"node:gpu-{i}" for i in range(30)]


@pytest.fixture
def member(pg_databases: Callable[[], str]) -> Iterator[Callable[..., Membership]]:
    url = pg_databases()
    db.upgrade(url)
    made: list[Membership] = []

    def make(
        member_id: str,
        *,
        lease: float = LEASE,
        forget_after: float = 86400.0,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> Membership:
        m = Membership(
            db.LazyEngine(url),
            member_id=member_id,
            http="127.0.0.1:9464",
            heartbeat=lease / 4,
            lease=lease,
            keys=KEYS,
            forget_after=forget_after,
            wall=wall,
        )
        made.append(m)
        return m

    yield make
    for m in made:
        m.stop()


def test_members_split_the_keys_and_exactly_one_leads(member):
    a, b = member("a"), member("b")
    for m in (a, b, a, b):
        m.register()
        m.step()
    assert sorted(a.owned | b.owned) == sorted(KEYS)
    assert not a.owned & b.owned
    assert a.owned and b.owned
    assert [a.is_leader(), b.is_leader()] == [True, False]  # the first to ask
    assert a.problem() is None and b.problem() is None
    assert {s.metric.name: s.value for s in b.samples()} == {
        "reliability_cluster_members": 2.0,
        "reliability_cluster_leader": 0.0,
        "reliability_database_up": 1.0,
    }


def test_a_leader_silent_past_its_lease_is_fenced_and_steps_down_when_it_wakes(member):
    a, b = member("a"), member("b")
    for m in (a, b):
        m.register()
        m.step()
    assert a.is_leader() and a.epoch == 1
    time.sleep(LEASE + 0.2)  # a is paused: no heartbeat; b goes on
    assert a.problem() is not None and "no heartbeat within the lease" in a.problem()
    assert not a.is_leader()  # on its own clock, before asking the database
    b.step()
    assert b.is_leader() and b.epoch == 2
    assert b.owned == frozenset(KEYS)  # a's share taken over

    a.step()  # wakes
    assert a.problem() is None
    assert not a.is_leader()
    with a._database.session() as session, session.begin():
        assert not service.holds_lease(session, member_id="a", epoch=1)
    b.step()
    assert sorted(a.owned | b.owned) == sorted(KEYS) and not a.owned & b.owned


def test_a_leader_paused_inside_a_transaction_on_the_lease_fences_no_one_else(member):
    """SIGSTOP can fall while the leader's timers hold the lease row (FOR SHARE): the others
    go on beating and take its share, without waiting on that row; they lead once the
    server ends the paused session."""
    a, b = member("a"), member("b")
    for m in (a, b, a, b):
        m.register()
        m.step()
    assert a.is_leader() and a.epoch == 1
    with a._database.session() as paused, paused.begin():
        assert a.holds_lease(paused)
        time.sleep(LEASE + 0.2)  # a is stopped, its transaction open
        started = time.monotonic()
        b.step()
        assert time.monotonic() - started < LEASE / 2  # no wait on the row
        assert b.problem() is None and b.owned == frozenset(KEYS)
        assert not b.is_leader()
    b.step()  # the session ended: the lease is free
    assert b.is_leader() and b.epoch == 2


def test_a_second_daemon_with_a_live_members_id_is_refused(member):
    first = member("gpu-host")
    first.register()
    first.step()
    with pytest.raises(DuplicateMember, match="member id 'gpu-host' is already live: pid"):
        member("gpu-host").register()
    time.sleep(LEASE + 0.2)  # the first died: its id is free again
    member("gpu-host").register()
    first.step()  # the first wakes: its id is another daemon's now
    assert "already live" in (first.problem() or "")
    assert not first.is_leader()


def test_a_clean_stop_hands_the_lease_and_the_share_over_at_once(member):
    a, b = member("a", lease=30.0), member("b", lease=30.0)
    for m in (a, b, a, b):
        m.register()
        m.step()
    assert a.is_leader()
    a.stop()
    b.step()
    assert b.is_leader() and b.owned == frozenset(KEYS)
    with b._database.session() as session:
        lease = service.lease(session)
    assert lease is not None and lease.members == ("b",) and lease.holder == "b"


def test_a_member_gone_longer_than_forget_after_is_listed_as_gone_then_forgotten(member):
    forget_after = 3 * LEASE
    a, b = member("a", forget_after=forget_after), member("b")
    for m in (a, b, a, b):
        m.register()
        m.step()
    assert a.is_leader()

    def listed() -> dict[str, float]:
        with a._database.session() as session:
            return {m.member_id: m.age for m in service.members(session)}

    time.sleep(LEASE + 0.2)  # b was killed: no heartbeat, no leave
    a.step()
    assert a.owned == frozenset(KEYS) and [m.member_id for m in a.members()] == ["a"]
    assert listed()["b"] >= LEASE  # gone, still shown (`cluster status`)
    deadline = time.monotonic() + forget_after + 10
    while "b" in listed() and time.monotonic() < deadline:
        time.sleep(LEASE / 4)
        a.step()
    assert list(listed()) == ["a"]
    assert listed()["a"] < LEASE


def test_a_member_whose_clock_is_an_hour_off_stays_out_until_its_clock_is_fixed(member):
    """Its timestamps (outbox leases, incident times) would be wrong: it holds no share and
    no lease, so the others take its work at once, and joins again when the clock agrees."""
    off = timedelta()
    a, b = member("a", wall=lambda: datetime.now(UTC) + off), member("b")
    for m in (a, b, a, b):
        m.register()
        m.step()
    assert a.is_leader() and a.owned and b.owned

    off = timedelta(hours=1)  # a's time sync fails
    a.step()
    assert "this host's clock is +3600s off the database's" in (a.problem() or "")
    assert not a.owned and not a.is_leader()
    b.step()  # at once, not a lease later: a stepped aside and freed the lease
    assert b.is_leader() and b.owned == frozenset(KEYS)
    with b._database.session() as session:
        listed = {m.member_id: m.age for m in service.members(session)}
    assert listed["a"] >= LEASE  # listed, as gone
    a.step()  # still off: stays out, without joining again
    b.step()
    assert not a.owned and b.owned == frozenset(KEYS)

    off = timedelta()  # fixed
    a.step()
    b.step()
    assert a.problem() is None and a.owned and not a.owned & b.owned
    assert sorted(a.owned | b.owned) == sorted(KEYS)
    assert b.is_leader() and not a.is_leader()


def test_a_member_started_with_its_clock_off_never_joins(member):
    a = member("a", wall=lambda: datetime.now(UTC) - timedelta(hours=1))
    a.register()
    a.step()
    assert "clock is -3600s off" in (a.problem() or "") and not a.owned
    with a._database.session() as session:
        assert service.members(session) == []
        assert service.lease(session) is None


def test_sqlite_is_one_daemon_always_leading(tmp_path):
    solo = Membership(
        db.LazyEngine(f"sqlite:///{tmp_path / 'r.db'}"),
        member_id="x",
        http="127.0.0.1:9464",
        heartbeat=1,
        lease=3,
        keys=KEYS,
    )
    solo.register()
    solo.step()
    assert solo.solo and solo.is_leader() and solo.problem() is None
    assert solo.owned == frozenset(KEYS)
    assert [s.value for s in solo.samples()] == [1.0, 1.0, 1.0]
