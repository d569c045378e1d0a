"""Members, the leader lease and the fence, on a real PostgreSQL: liveness is the
database's judgement, a paused leader steps down, one id is one daemon."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from reliability import db
from reliability.cluster import service
from reliability.cluster.membership import Membership
from reliability.cluster.service import DuplicateMember

pytestmark = pytest.mark.postgres

LEASE = 1.0
KEYS = [f"node:gpu-{i}" for i in range(30)]


@pytest.fixture
def member(pg_databases: Callable[[], str]) -> Iterator[Callable[..., Membership]]:
    url = pg_databases()
    db.upgrade(url)
    made: list[Membership] = []

    def make(member_id: str, *, lease: float = LEASE) -> Membership:
        m = Membership(
            db.LazyEngine(url),
            member_id=member_id,
            http="127.0.0.1:9464",
            heartbeat=lease / 4,
            lease=lease,
            keys=KEYS,
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
