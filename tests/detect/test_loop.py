"""The detection thread's database side: transitions become incidents, nothing is lost
while the database is away, and a restart does not orphan open rule incidents."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from reliability import db
from reliability.collect.snapshot import ByMetric
from reliability.detect.loop import DetectionLoop
from reliability.incidents import service
from reliability.incidents.models import IncidentStatus
from reliability.writer import BatchWriter

RUNBOOK = "reliability runbook run node-failover --param node=gpu-2"


class Cycles:
    """The fleet as a snapshot, and the clock the loop reads, moved by hand."""

    def __init__(self, fleet, now: float) -> None:
        self.fleet, self.now = fleet, now

    def by_metric(self) -> ByMetric:
        return ByMetric.of(self.fleet.samples())

    @property
    def generation(self) -> float:
        return self.now  # every move of the clock stands for a new collection

    def clock(self) -> float:
        return self.now


@pytest.fixture(params=["own transaction", "batch writer"])
def new_loop(clock_for, request):
    """new_loop(url) -> a DetectionLoop over the `fleet` fixture, and its hand-moved clock;
    recording in a transaction of its own, or through a BatchWriter as in the daemon."""
    writers: list[BatchWriter] = []

    def make(url: str) -> tuple[DetectionLoop, Cycles]:
        fresh = clock_for()
        cycles = Cycles(fresh.fleet, fresh.now)
        database = db.LazyEngine(url)
        writer = None
        if request.param == "batch writer":
            writer = BatchWriter(database.session)
            writers.append(writer)
        loop = DetectionLoop(
            fresh.evaluator,
            cycles,
            database,
            reopen_window=600.0,
            clock=cycles.clock,
            writer=writer,
        )
        return loop, cycles

    yield make
    for writer in writers:
        assert writer.close()


def incidents(engine: sa.Engine):
    with db.session_factory(engine)() as session:
        return service.list_incidents(session)


def test_a_firing_becomes_an_incident_with_its_runbook_and_resolves(
    fleet, new_loop, database_url: str, engine: sa.Engine
):
    loop, cycles = new_loop(database_url)
    fleet.nodes["gpu-2"].lost = {"3"}
    assert [t.kind for t in loop.step()] == ["firing"]

    (incident,) = incidents(engine)
    assert (incident.title, incident.status, incident.source) == (
        "gpu-2: 1 of 8 GPUs lost",
        IncidentStatus.open,
        "rule",
    )
    with db.session_factory(engine)() as session:
        (opened,) = service.events(session, incident_id=incident.id)
    assert opened.data["runbook"] == RUNBOOK
    assert opened.data["value"] and opened.data["threshold"]

    fleet.nodes["gpu-2"].lost = set()
    for _ in range(30):  # the built-in's resolve_after, in 5 s cycles
        cycles.now += 5
        loop.step()
    (incident,) = incidents(engine)
    assert incident.status == IncidentStatus.resolved
    assert incident.resolved_by == "gpu-lost"
    loop.stop()


def test_after_a_restart_an_open_rule_incident_still_resolves(
    fleet, new_loop, database_url: str, engine: sa.Engine
):
    first, _ = new_loop(database_url)
    fleet.nodes["gpu-2"].lost = {"3"}
    first.step()
    first.stop()

    fleet.nodes["gpu-2"].lost = set()  # recovered while the daemon was down
    restarted, cycles = new_loop(database_url)
    for _ in range(30):
        restarted.step()
        cycles.now += 5
    (incident,) = incidents(engine)
    assert incident.status == IncidentStatus.resolved
    restarted.stop()


@pytest.mark.postgres
def test_transitions_wait_for_the_database_and_keep_their_order(
    fleet, new_loop, pg_databases, pg_server
):
    url = pg_databases()
    db.upgrade(url)
    name = make_url(url).database
    loop, cycles = new_loop(url)
    loop.step()  # connected, restored, nothing firing

    def allow(allowed: bool) -> None:
        with pg_server.connect() as c:
            c.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
            if not allowed:
                c.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    f" WHERE datname = '{name}'"
                )

    allow(False)
    try:
        fleet.nodes["gpu-2"].lost = {"3"}
        cycles.now += 5
        assert [t.kind for t in loop.step()] == ["firing"]
        fleet.nodes["gpu-2"].lost = set()
        for _ in range(30):
            cycles.now += 5
            loop.step()
        assert loop.unrecorded == 2  # the firing and its resolution, kept in order
    finally:
        allow(True)
    cycles.now += 5
    loop.step()
    assert loop.unrecorded == 0
    engine = db.make_engine(url)
    (incident,) = incidents(engine)
    assert incident.status == IncidentStatus.resolved
    engine.dispose()
    loop.stop()
