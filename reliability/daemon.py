"""Wiring only: build the collectors from the config, schedule them, serve HTTP.

`reliability daemon` runs `serve()`; `reliability daemon --once` runs `run_once()`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa
import uvicorn
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from reliability import catalog, db
from reliability.cluster.membership import Membership, default_member_id
from reliability.cluster.service import DuplicateMember
from reliability.cluster.shards import Shards
from reliability.collect.runner import Outcome, TargetRunner
from reliability.collect.snapshot import Snapshot
from reliability.config import Config
from reliability.incidents.models import IncidentRead
from reliability.intake import build_routes as intake_routes
from reliability.notify.dispatcher import Dispatcher
from reliability.web import Readiness, build_app

if TYPE_CHECKING:
    from reliability.detect.loop import DetectionLoop

log = logging.getLogger("reliability.daemon")

# A runner's deadline is the collector's own timeout plus this margin, so the collector's
# own, more precise error (e.g. "host unreachable") arrives before the runner gives up.
DEADLINE_MARGIN = 2.0
STOP_GRACE = 3.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
TIMERS_INTERVAL = 15.0
# Incidents and runbook runs are read back from the database this often (collect/records.py).
RECORDS_INTERVAL = 15.0
RECORDS_TIMEOUT = 10.0


@dataclass
class Job:
    runner: TargetRunner
    interval: float


@dataclass
class Daemon:
    config: Config
    snapshot: Snapshot
    jobs: list[Job]  # each with a worker pool of its own (job.runner.executor)
    closers: list[Callable[[], object]] = field(default_factory=list)

    def close(self) -> bool:
        """Release connections and workers; True if every collection finished in time."""
        # Cancel queued collections first: started after the closers, each would fail.
        for job in self.jobs:
            job.runner.stop()
        executors = [job.runner.executor for job in self.jobs]
        for executor in executors:
            executor.shutdown(wait=False, cancel_futures=True)
        for close in self.closers:
            try:
                close()
            except Exception:
                log.exception("error while closing")
        deadline = time.monotonic() + STOP_GRACE
        threads = [t for e in executors for t in getattr(e, "_threads", ())]
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t for t in threads if t.is_alive()]
        if stuck:
            log.warning(
                "%d collection(s) still stuck after %gs; abandoning them", len(stuck), STOP_GRACE
            )
        return not stuck


def build(config: Config, snapshot: Snapshot | None = None) -> Daemon:
    """Every collector the config asks for (collect/schedule.py), each wrapped in a runner
    with its interval."""
    from reliability.collect import schedule
    from reliability.collect.inventory import COLLECTOR, TARGET, inventory_samples
    from reliability.detect.builtin import ratio_windows

    snapshot = snapshot or Snapshot()
    daemon = Daemon(config, snapshot, [])
    # The pools and roles of the config, for dashboards to join on; they change with it only.
    snapshot.publish(COLLECTOR, TARGET, ok=True, duration=0.0, samples=inventory_samples(config))
    pool = schedule.ssh_pool(config)
    if pool is not None:
        daemon.closers.append(pool.close)
    closed: set[int] = set()
    windows = ratio_windows(config.rules)
    for job in schedule.scheduled(config, pool, ratio_windows=windows):
        # A pool per job: in one shared pool the 100 SSH calls of a node + GPU cycle queued
        # the 200 API probes due at the same moment (a 0.2 s cycle took 3 s); slower nodes
        # would push them past their deadline, where they count as endpoint timeouts.
        executor = ThreadPoolExecutor(
            max_workers=config.collect.workers,
            thread_name_prefix=f"collect-{job.collector.name}",
        )
        runner = TargetRunner(
            job.collector,
            snapshot,
            executor=executor,
            deadline=job.timeout + DEADLINE_MARGIN,
            targets=job.targets,
        )
        if runner.targets:
            daemon.jobs.append(Job(runner, job.interval))
        close = getattr(job.collector, "close", None)
        if close is not None and id(job.collector) not in closed:  # one collector, many jobs
            closed.add(id(job.collector))
            daemon.closers.append(close)
    return daemon


def run_once(daemon: Daemon) -> list[Outcome]:
    """Run every job's cycle once, all at the same time, and return every outcome."""
    with ThreadPoolExecutor(max_workers=max(1, len(daemon.jobs))) as pool:
        futures = [pool.submit(job.runner.run_cycle) for job in daemon.jobs]
        wait(futures)
    return [o for f in futures for o in f.result()]


def _database_check(database: db.LazyEngine) -> Callable[[], str | None]:
    def check() -> str | None:
        try:
            db.check_schema(database.get())
        except db.DatabaseError as exc:
            return str(exc)
        return None

    return check


class _Server(uvicorn.Server):
    """uvicorn re-raises a captured SIGTERM after serving, killing the process before the
    daemon could close its connections; this one only stops serving."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _membership(config: Config) -> Membership:
    """This daemon among those of its database; its own connection, so a busy pool never
    delays a heartbeat past the lease."""
    cluster = config.cluster
    return Membership(
        db.LazyEngine(config.database_url()),
        member_id=cluster.member_id or default_member_id(),
        http=config.http.listen,
        heartbeat=cluster.heartbeat,
        lease=cluster.lease,
        keys=Shards(config).keys,
    )


def _dispatcher(
    config: Config, database: db.LazyEngine, membership: Membership
) -> Dispatcher | None:
    """The outbox dispatcher of the notifiers the config sets up (notify/registry.py), each
    root message linking to the Grafana dashboard of its incident when Grafana is known."""
    from reliability.dashboards import links
    from reliability.notify import registry

    notifiers = registry.configured(config)
    if not notifiers:
        log.info("no notifier configured (slack section): incidents are recorded, nobody is paged")
        return None
    try:
        engine = database.get()
    except db.DatabaseError as exc:
        log.error("notifications are off: %s", exc)
        return None
    grafana = config.dashboards.grafana_url
    link_for = None
    if grafana:

        def link_for(incident: IncidentRead) -> str | None:
            return links.incident_url(
                str(grafana),
                labels=incident.labels,
                started_at=incident.started_at,
                resolved_at=incident.resolved_at,
            )

    return Dispatcher(engine, notifiers, link_for=link_for, gate=membership.problem)


class _IncidentTimers:
    """What happens with time alone: an acknowledgement that ran out
    (`incidents.ack_timeout`) and a silence that ended re-notify on-call; a runbook run
    whose process died is marked interrupted (its locks freed); a digest that served its
    service's soak time without an incident becomes known-good; the fleet table knows every
    fleet node of the config (seeded on the first tick, nodes added later on the next).
    Only the cluster's leader runs them, after checking its lease in the same transaction."""

    def __init__(
        self,
        config: Config,
        database: db.LazyEngine,
        dispatcher: Dispatcher | None,
        membership: Membership,
    ) -> None:
        self._config = config
        self._database = database
        self._timeout = timedelta(seconds=config.incidents.ack_timeout)
        self._dispatcher = dispatcher
        self._membership = membership

    def __call__(self) -> None:
        from reliability.fleet.service import seed
        from reliability.images.flows import promote_soaked
        from reliability.incidents import flows
        from reliability.runbooks.service import recover_interrupted

        if not self._membership.is_leader():
            return  # the leader of the cluster runs them
        now = datetime.now(UTC)
        try:
            with self._database.session() as session, session.begin():
                # Checked in this transaction: a leader paused past its lease acts on nothing.
                if not self._membership.holds_lease(session):
                    return
                changed = flows.tick(session, now=now, ack_timeout=self._timeout)
                for run in recover_interrupted(session, now=now):
                    log.warning(
                        "runbook run %d (%s) interrupted: %s", run.run_id, run.runbook, run.reason
                    )
                for good in promote_soaked(session, config=self._config, now=now):
                    log.info("%s: %s is known-good after its soak", good.service, good.image)
                seed(session, config=self._config, now=now)
        except (db.DatabaseError, sa.exc.SQLAlchemyError) as exc:
            log.warning(
                "ack timeouts, silences, runbook runs, soaks and the fleet not checked: %s", exc
            )
            return
        if changed and self._dispatcher is not None:
            self._dispatcher.wake()


def _start_incident_flow(
    daemon: Daemon,
    scheduler: BackgroundScheduler,
    database: db.LazyEngine,
    dispatcher: Dispatcher | None,
    membership: Membership,
) -> None:
    """Rules into incidents (detect/loop.py), incidents into Slack (notify/dispatcher.py);
    both stop with the daemon."""
    from reliability.detect.evaluator import Evaluator
    from reliability.detect.loop import DetectionLoop
    from reliability.runbooks.flows import AutoRunner
    from reliability.ssh import SshPool

    config = daemon.config
    if dispatcher is not None:
        dispatcher.start()
        daemon.closers.append(dispatcher.stop)

        def publish_outbox() -> None:
            daemon.snapshot.publish(
                "notify", "slack", ok=True, duration=0.0, samples=dispatcher.samples()
            )

        scheduler.add_job(
            publish_outbox, "interval", seconds=5, id="notify", next_run_time=datetime.now(UTC)
        )
    timers = _IncidentTimers(config, database, dispatcher, membership)
    scheduler.add_job(
        timers,
        "interval",
        seconds=TIMERS_INTERVAL,
        id="incident-timers",
        next_run_time=datetime.now(UTC),
    )
    runbooks = AutoRunner(config, database, SshPool(), gate=membership.problem)
    runbooks.start()
    detection = DetectionLoop(
        Evaluator(config),
        daemon.snapshot,
        database,
        reopen_window=config.incidents.reopen_window,
        on_recorded=dispatcher.wake if dispatcher is not None else None,
        on_firing=runbooks.submit,
        gate=membership.problem,
    )
    _share_out(daemon, scheduler, membership, detection)
    detection.start()
    _schedule_records(daemon, scheduler, database, membership)
    scheduler.add_job(
        RunningImages(config, daemon.snapshot, database),
        "interval",
        seconds=config.collect.node_interval,
        id="running-images",
        next_run_time=datetime.now(UTC),
    )
    # Detection first (no new runs), then the running runbook ends its step and undoes.
    daemon.closers[:0] = [detection.stop, runbooks.stop]


def _share_out(
    daemon: Daemon,
    scheduler: BackgroundScheduler,
    membership: Membership,
    detection: DetectionLoop,
) -> None:
    """Each collector job collects this member's share of its targets (`runner.owns`, set
    before the first cycle); when the share changes, what moved away is forgotten (its
    samples and rule groups: the new owner reports and resolves it) and every job runs at
    once, so a share taken over from a member that died is collected within seconds, not
    at the next interval."""
    shards = Shards(daemon.config)

    def rebalanced(owned: frozenset[str]) -> None:
        for i, job in enumerate(daemon.jobs):
            name = job.runner.collector.name
            for target in job.runner.targets:
                if not job.runner.owns(target):
                    daemon.snapshot.forget(name, target)
            with contextlib.suppress(JobLookupError):
                scheduler.modify_job(f"{name}-{i}", next_run_time=datetime.now(UTC))
        detection.rebalance(lambda labels: membership.owns(shards.of_labels(labels)))

    membership.on_rebalance(rebalanced)
    rebalanced(membership.owned)  # a change before the listener was there


def _schedule_records(
    daemon: Daemon,
    scheduler: BackgroundScheduler,
    database: db.LazyEngine,
    membership: Membership,
) -> None:
    """Incidents and runbook runs as metrics, read from the database every 15 s: they are
    written by other processes too (CLI, webhooks), so only the database knows them all.
    Only the cluster's leader publishes them (one series for dashboards to read)."""
    from reliability.collect.records import RecordsCollector

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collect-records")
    runner = TargetRunner(
        RecordsCollector(database.get, timeout=RECORDS_TIMEOUT),
        daemon.snapshot,
        executor=executor,
        deadline=RECORDS_TIMEOUT + DEADLINE_MARGIN,
        owns=lambda _target: membership.is_leader(),
    )

    def records() -> None:
        if not membership.is_leader():
            for target in runner.targets:
                daemon.snapshot.forget(runner.collector.name, target)
            return
        runner.run_cycle()

    daemon.closers.append(lambda: executor.shutdown(wait=False, cancel_futures=True))
    scheduler.add_job(
        records,
        "interval",
        seconds=RECORDS_INTERVAL,
        id="records",
        next_run_time=datetime.now(UTC),
    )


class RunningImages:
    """The image each node's serving container runs, as the node collector last saw it
    (its `node_container_image_info` samples), recorded as deployed where it changed
    (images/flows.py): a deploy by CI or by hand soaks and becomes known-good like a
    runbook's. The daemon calls it once per node interval."""

    def __init__(self, config: Config, snapshot: Snapshot, database: db.LazyEngine) -> None:
        self._config, self._snapshot, self._database = config, snapshot, database

    def __call__(self) -> None:
        from reliability.images.flows import record_running

        samples = self._snapshot.samples(catalog.NODE_CONTAINER_IMAGE)
        running = {s.labels[0]: s.labels[2] for s in samples}
        if not running:
            return
        try:
            with self._database.session() as session, session.begin():
                now = datetime.now(UTC)
                for d in record_running(session, config=self._config, running=running, now=now):
                    log.info("%s: %s runs %s, recorded as deployed", d.service, d.node, d.image)
        except (db.DatabaseError, sa.exc.SQLAlchemyError) as exc:
            log.warning("images running on the nodes not recorded: %s", exc)


def serve(daemon: Daemon) -> int:
    """Run the scheduler and the HTTP surface until SIGTERM/SIGINT; 0 on a clean stop."""
    scheduler = BackgroundScheduler(
        # The collector jobs, the incident timers, the outbox metrics, the records and the
        # running images: none waits.
        executors={"default": {"type": "threadpool", "max_workers": len(daemon.jobs) + 4}},
        job_defaults={"max_instances": 1, "coalesce": True},
        timezone="UTC",
    )

    def scheduler_check() -> str | None:
        return None if scheduler.running else "scheduler is stopped"

    # One engine (one connection pool) for everything the daemon does in the database.
    database = db.LazyEngine(daemon.config.database_url())
    membership = _membership(daemon.config)
    try:
        joined = membership.register()
    except DuplicateMember as exc:
        log.error("not starting: %s", exc)
        daemon.close()
        return 2
    if joined:
        membership.step()  # the first share before the first collection
    shards = Shards(daemon.config)
    for job in daemon.jobs:
        name = job.runner.collector.name
        job.runner.owns = lambda target, name=name: membership.owns(shards.of_target(name, target))
    membership.start()
    for i, job in enumerate(daemon.jobs):
        scheduler.add_job(
            job.runner.run_cycle,
            "interval",
            seconds=job.interval,
            id=f"{job.runner.collector.name}-{i}",
            misfire_grace_time=max(1, int(job.interval)),
            next_run_time=datetime.now(UTC),
        )
    dispatcher = _dispatcher(daemon.config, database, membership)
    app = build_app(
        daemon.snapshot,
        readiness=[
            Readiness("database", _database_check(database)),
            Readiness("scheduler", scheduler_check),
            Readiness("cluster", membership.problem),
        ],
        # Pages held back by a refused token or channel: critical, but the daemon still
        # records incidents and takes webhooks, so it stays ready.
        critical=[Readiness("notify", dispatcher.health.condition)] if dispatcher else [],
        routes=intake_routes(daemon.config, database),
    )
    http = daemon.config.http
    server = _Server(
        uvicorn.Config(
            app,
            host=http.host,
            port=http.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
    )
    scheduler.start()
    _start_incident_flow(daemon, scheduler, database, dispatcher, membership)
    scheduler.add_job(
        lambda: daemon.snapshot.publish(
            "cluster", membership.member_id, ok=True, duration=0.0, samples=membership.samples()
        ),
        "interval",
        seconds=min(5.0, daemon.config.cluster.heartbeat),
        id="cluster",
        next_run_time=datetime.now(UTC),
    )
    # Leaving (the others take the share at once) after the work that may still write.
    daemon.closers.append(membership.stop)
    daemon.closers.append(database.dispose)  # last: the closers before it may still write
    log.info(
        "daemon up: %d job(s), serving http://%s:%d/metrics", len(daemon.jobs), http.host, http.port
    )
    try:
        server.run()  # returns on SIGTERM/SIGINT (uvicorn's handlers)
    finally:
        log.info("stopping")
        scheduler.shutdown(wait=False)
        clean = daemon.close()
    code = 0 if server.started else 1
    if not clean:
        # A collection stuck in a driver or kernel call cannot be interrupted; leaving
        # now keeps the promise of stopping within seconds.
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    return code
