"""Incidents and runbook runs as metrics, read back from the database every cycle.

Every test runs on SQLite and PostgreSQL (see tests/conftest.py). The incidents are written
through the incident service and the runs through the runbook service, as the daemon, the
CLI and webhooks write them.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from reliability import catalog, db
from reliability.collect.base import HistogramValue, Sample
from reliability.collect.records import RecordsCollector
from reliability.collect.runner import TargetRunner
from reliability.collect.snapshot import Snapshot
from reliability.incidents import service
from reliability.runbooks import service as runs
from reliability.runbooks.models import RunStatus
from reliability.testing.loopback import free_port
from reliability.testing.services import service_missing

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def fire(session, name: str, *, at: datetime = T0, severity: str = "critical") -> int:
    upsert = service.open_or_update(
        session,
        fingerprint=name,
        title=f"{name} fired",
        severity=severity,
        source="rule",
        labels={"node": "gpu-1"},
        at=at,
    )
    session.commit()
    return upsert.incident.id


def ack(session, incident_id: int, at: datetime) -> None:
    service.acknowledge(session, incident_id=incident_id, by="alice", at=at)
    session.commit()


def resolve(session, incident_id: int, at: datetime) -> None:
    service.resolve(session, incident_id=incident_id, by="alice", at=at)
    session.commit()


def collect(engine: sa.Engine) -> list[Sample]:
    return list(RecordsCollector(lambda: engine).collect("database"))


def values(samples: list[Sample], metric: catalog.Metric) -> dict[tuple[str, ...], object]:
    return {s.labels: s.value for s in samples if s.metric is metric}


def histogram(samples: list[Sample], metric: catalog.Metric, severity: str) -> HistogramValue:
    value = values(samples, metric)[(severity,)]
    assert isinstance(value, HistogramValue)
    return value


def within(value: HistogramValue, seconds: float) -> int:
    """How many observations the bucket `le=seconds` holds."""
    return dict(value.buckets)[seconds]


# --- unresolved incidents ------------------------------------------------------------------


def test_unresolved_incidents_are_counted_by_severity_and_status_with_zeros(session, engine):
    ack(session, fire(session, "a"), T0 + timedelta(minutes=1))
    fire(session, "b")
    fire(session, "c", severity="warning")
    resolve(session, fire(session, "d", severity="info"), T0 + timedelta(minutes=2))

    assert values(collect(engine), catalog.INCIDENTS_OPEN) == {
        ("critical", "open"): 1.0,
        ("critical", "acknowledged"): 1.0,
        ("warning", "open"): 1.0,
        ("warning", "acknowledged"): 0.0,
        ("info", "open"): 0.0,
        ("info", "acknowledged"): 0.0,
    }


# --- time to acknowledge and to resolve ----------------------------------------------------


def test_acknowledge_and_resolve_times_land_in_their_buckets(session, engine):
    incident = fire(session, "hot")
    ack(session, incident, T0 + timedelta(seconds=90))
    resolve(session, incident, T0 + timedelta(seconds=400))

    samples = collect(engine)
    acked = histogram(samples, catalog.INCIDENT_TIME_TO_ACKNOWLEDGE, "critical")
    resolved = histogram(samples, catalog.INCIDENT_TIME_TO_RESOLVE, "critical")
    assert (acked.count, round(acked.sum, 3)) == (1, 90.0)
    assert (within(acked, 60.0), within(acked, 120.0), within(acked, float("inf"))) == (0, 1, 1)
    assert (resolved.count, round(resolved.sum, 3)) == (1, 400.0)
    assert (within(resolved, 300.0), within(resolved, 600.0)) == (0, 1)
    empty = histogram(samples, catalog.INCIDENT_TIME_TO_ACKNOWLEDGE, "warning")
    assert (empty.count, empty.sum, {n for _, n in empty.buckets}) == (0, 0.0, {0})
    assert [le for le, _ in acked.buckets] == [*catalog.INCIDENT_DURATION_BUCKETS, float("inf")]


def test_a_reopen_or_an_expired_ack_adds_observations_and_removes_none(session, engine):
    """The incident row forgets its acknowledgement and resolve on reopen and on ack expiry;
    the histograms read the timeline, so they only grow, and each answer is measured from the
    page it answered."""
    incident = fire(session, "flappy")
    ack(session, incident, T0 + timedelta(seconds=20))
    resolve(session, incident, T0 + timedelta(seconds=100))
    before = collect(engine)

    # Fires again 5 minutes after the resolve: the same incident reopens.
    reopened_at = T0 + timedelta(seconds=400)
    assert fire(session, "flappy", at=reopened_at) == incident
    ack(session, incident, reopened_at + timedelta(seconds=40))
    expired_at = reopened_at + timedelta(hours=1)
    service.expire_acknowledgements(session, now=expired_at, timeout=timedelta(minutes=30))
    session.commit()
    ack(session, incident, expired_at + timedelta(seconds=200))
    resolve(session, incident, reopened_at + timedelta(hours=2))
    after = collect(engine)

    acked = histogram(after, catalog.INCIDENT_TIME_TO_ACKNOWLEDGE, "critical")
    resolved = histogram(after, catalog.INCIDENT_TIME_TO_RESOLVE, "critical")
    assert (acked.count, round(acked.sum, 3)) == (3, 20.0 + 40.0 + 200.0)
    assert (resolved.count, round(resolved.sum, 3)) == (2, 100.0 + 7200.0)
    for metric in (catalog.INCIDENT_TIME_TO_ACKNOWLEDGE, catalog.INCIDENT_TIME_TO_RESOLVE):
        old, new = histogram(before, metric, "critical"), histogram(after, metric, "critical")
        assert all(n >= o for (_, o), (_, n) in zip(old.buckets, new.buckets, strict=True))


def test_one_collector_sees_every_new_answer(session, engine):
    """The histograms are recomputed only when the timeline grew: it grows with each answer."""
    collector = RecordsCollector(lambda: engine)
    incident = fire(session, "hot")
    first = histogram(
        list(collector.collect("database")), catalog.INCIDENT_TIME_TO_RESOLVE, "critical"
    )
    resolve(session, incident, T0 + timedelta(seconds=10))
    second = histogram(
        list(collector.collect("database")), catalog.INCIDENT_TIME_TO_RESOLVE, "critical"
    )
    assert (first.count, second.count, round(second.sum, 3)) == (0, 1, 10.0)


def test_answers_keep_the_severity_their_episode_started_with(session, engine):
    """A refire may raise an incident's severity; what was answered before stays where it
    was counted, or the counters of the old severity would go down."""
    incident = fire(session, "warm", severity="warning")
    ack(session, incident, T0 + timedelta(seconds=45))
    fire(session, "warm", severity="critical", at=T0 + timedelta(seconds=60))
    assert service.get(session, incident_id=incident).severity == "critical"
    resolve(session, incident, T0 + timedelta(seconds=100))

    samples = collect(engine)
    assert histogram(samples, catalog.INCIDENT_TIME_TO_ACKNOWLEDGE, "warning").count == 1
    assert histogram(samples, catalog.INCIDENT_TIME_TO_RESOLVE, "warning").count == 1
    assert histogram(samples, catalog.INCIDENT_TIME_TO_ACKNOWLEDGE, "critical").count == 0
    assert values(samples, catalog.INCIDENTS_OPEN)[("critical", "open")] == 0


# --- runbook runs ----------------------------------------------------------------------------


def record_run(session, runbook: str, status: RunStatus) -> None:
    run = runs.create_run(
        session,
        runbook=runbook,
        params={},
        services=["chat"],
        started_by="alice",
        incident_id=None,
        now=T0,
    )
    if status != RunStatus.running:
        runs.finish_run(
            session, run_id=run.id, status=status, reason=None, now=T0 + timedelta(minutes=1)
        )
    session.commit()


def test_runbook_runs_count_final_outcomes_and_show_unfinished_ones_as_a_gauge(session, engine):
    for status in (RunStatus.succeeded, RunStatus.succeeded, RunStatus.failed):
        record_run(session, "blue-green", status)
    record_run(session, "node-failover", RunStatus.interrupted)

    samples = collect(engine)
    ended = values(samples, catalog.RUNBOOK_RUNS)
    unfinished = values(samples, catalog.RUNBOOK_RUNS_UNFINISHED)
    assert ended[("blue-green", "succeeded")] == 2.0
    assert ended[("blue-green", "failed")] == 1.0
    # Zero series for every final status of a runbook that ran at all: increase() sees the
    # first run of each outcome.
    assert ended[("blue-green", "aborted")] == ended[("node-failover", "succeeded")] == 0.0
    assert unfinished[("node-failover", "interrupted")] == 1.0
    assert unfinished[("blue-green", "running")] == 0.0
    assert {status for _, status in ended} == {"succeeded", "failed", "aborted", "undone"}
    assert {status for _, status in unfinished} == {"running", "interrupted", "undo_failed"}


def test_no_runbook_run_yet_publishes_no_run_series(session, engine):
    samples = collect(engine)
    assert not values(samples, catalog.RUNBOOK_RUNS)
    assert not values(samples, catalog.RUNBOOK_RUNS_UNFINISHED)


# --- a database that cannot be read --------------------------------------------------------


def run_twice(engine: sa.Engine) -> Snapshot:
    snapshot = Snapshot()
    with ThreadPoolExecutor(max_workers=1) as executor:
        runner = TargetRunner(
            RecordsCollector(lambda: engine, timeout=2.0), snapshot, executor=executor, deadline=8
        )
        runner.run_cycle()
        runner.run_cycle()
    return snapshot


def test_a_database_that_is_down_fails_the_target_once_in_the_log_and_publishes_nothing(caplog):
    engine = db.make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    with caplog.at_level(logging.WARNING, logger="reliability.collect"):
        snapshot = run_twice(engine)
    engine.dispose()

    [state] = snapshot.states()
    assert (state.collector, state.target, state.ok) == ("records", "database", False)
    assert "cannot connect to database" in (state.error or "")
    assert not state.samples
    assert 'reliability_target_up{collector="records",target="database"} 0' in (
        snapshot.exposition()
    )
    assert 'reason="unreachable"' in snapshot.exposition()
    assert len([r for r in caplog.records if "records database failed" in r.message]) == 1


def test_a_database_without_the_schema_fails_the_target(tmp_path: Path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    snapshot = run_twice(engine)
    engine.dispose()

    [state] = snapshot.states()
    assert not state.ok and "no such table" in (state.error or "")
    assert 'reason="query_failed"' in snapshot.exposition()


# --- what Prometheus reads -----------------------------------------------------------------


def test_the_exposition_passes_promtool(session, engine):
    promtool = shutil.which("promtool")
    if promtool is None:
        service_missing("promtool (Debian package prometheus) not installed")
    incident = fire(session, "hot")
    ack(session, incident, T0 + timedelta(seconds=30))
    record_run(session, "blue-green", RunStatus.succeeded)
    snapshot = Snapshot()
    snapshot.publish("records", "database", ok=True, duration=0.01, samples=collect(engine))

    body = snapshot.exposition()
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not (checked.stdout + checked.stderr).strip()
    assert (
        'reliability_incident_time_to_acknowledge_seconds_bucket{severity="critical",le="30.0"} 1'
        in body
    )
    assert 'reliability_runbook_runs_total{runbook="blue-green",status="succeeded"} 1.0' in body
