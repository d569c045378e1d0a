"""Pending `for` timers in the shared database: the daemon that takes a rule group over
(its owner died, or the cluster's shares moved) fires it `for` after its condition started,
not `for` after the takeover; a pending group whose condition cleared meanwhile is dropped;
and the database hears of a pending group only when it starts, fires or clears; an entry of
a rule or target gone from the config does not stay forever."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from reliability import db
from reliability.collect.snapshot import ByMetric
from reliability.detect import service
from reliability.detect.loop import DetectionLoop

FOR = 2.0
HOT_FOR = {
    "name": "hot",
    "type": "threshold",
    "metric": "reliability_gpu_temperature_celsius",
    "value": 90,
    "for": f"{FOR:g}s",
    "group_by": ["node"],
    "title": "{node} hot",
}


class Changing:
    """The fleet as a snapshot that changes at every read (a collection per tick)."""

    def __init__(self, fleet) -> None:
        self.fleet, self.generation = fleet, 0

    def by_metric(self) -> ByMetric:
        self.generation += 1
        return ByMetric.of(self.fleet.samples())


@pytest.fixture
def daemon(fleet, clock_for, database_url):
    """daemon() -> a detection loop on the shared database, as a (re)started member runs it,
    on the real clock (pending ages are measured by the database's)."""
    made: list[DetectionLoop] = []

    def make() -> DetectionLoop:
        evaluator = clock_for(rules={"builtin": False, "custom": [HOT_FOR]}).evaluator
        loop = DetectionLoop(
            evaluator, Changing(fleet), db.LazyEngine(database_url), reopen_window=600.0
        )
        made.append(loop)
        return loop

    yield make
    for loop in made:
        loop.stop()


def pending(engine: sa.Engine) -> dict[str, float]:
    with db.session_factory(engine)() as session:
        return {p.labels["node"]: p.age for p in service.pending(session)}


def statements_on_pending(loop: DetectionLoop) -> list[str]:
    seen: list[str] = []

    def note(conn, cursor, statement, *args) -> None:
        if "pending_alerts" in statement:
            seen.append(statement.split()[0])

    sa.event.listen(loop._database.get(), "before_cursor_execute", note)
    return seen


def test_a_group_pending_when_its_daemon_died_fires_on_time_where_it_is_taken_over(
    fleet, daemon, engine
):
    first = daemon()
    fleet.nodes["gpu-2"].temperature["0"] = 95.0
    started = time.monotonic()
    written = statements_on_pending(first)
    assert first.step() == []
    assert set(pending(engine)) == {"gpu-2"}
    for _ in range(5):  # pending, evaluated again and again: nothing more written
        time.sleep(0.1)
        assert first.step() == []
    # At the start: stale entries pruned, the rest read; then one write, and no more.
    assert written == ["DELETE", "SELECT", "INSERT"]
    first.stop()  # died halfway through its `for`

    heir = daemon()
    deadline = started + FOR + 5
    fired = []
    while not fired and time.monotonic() < deadline:
        fired = [t for t in heir.step() if t.kind == "firing"]
        time.sleep(0.02)
    took = time.monotonic() - started
    assert [t.title for t in fired] == ["gpu-2 hot"]
    assert FOR - 0.1 <= took < FOR + 1.0  # from zero at the takeover: no sooner than 2.5 s
    assert pending(engine) == {}  # it fired: the entry is gone


def test_a_pending_group_that_cleared_while_no_one_watched_is_dropped(fleet, daemon, engine):
    first = daemon()
    fleet.nodes["gpu-2"].temperature["0"] = 95.0
    first.step()
    first.stop()
    assert set(pending(engine)) == {"gpu-2"}

    fleet.nodes["gpu-2"].temperature["0"] = 50.0  # cooled down before the takeover
    heir = daemon()
    assert heir.step() == []
    assert pending(engine) == {}
    time.sleep(FOR)
    fleet.nodes["gpu-2"].temperature["0"] = 95.0  # hot again: a new `for` from now
    assert heir.step() == []
    assert pending(engine)["gpu-2"] < FOR / 2


def test_an_entry_that_no_rule_will_fire_or_clear_is_dropped_after_an_hour(daemon, engine):
    with db.session_factory(engine)() as session, session.begin():
        service.save(
            session,
            started=[
                service.Pending('rule:gone{node="gpu-9"}', "gone", {"node": "gpu-9"}, 2 * 3600),
                service.Pending('rule:hot{node="gpu-7"}', "hot", {"node": "gpu-7"}, 60),
            ],
            ended=[],
            member_id="another",
        )
    daemon().step()
    assert set(pending(engine)) == {"gpu-7"}  # gone an hour past its `for`; one just pending
