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
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import uvicorn
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from reliability import catalog, db
from reliability.cluster.membership import Membership, default_member_id
from reliability.cluster.service import DuplicateMember
from reliability.cluster.shards import Shards
from reliability.collect.base import LIVENESS
from reliability.collect.liveness import LivenessProbe
from reliability.collect.runner import Outcome, TargetRunner
from reliability.collect.snapshot import Snapshot
from reliability.config import Config
from reliability.incidents.models import IncidentRead
from reliability.intake import build_routes as intake_routes
from reliability.notify.dispatcher import Dispatcher
from reliability.sdnotify import Heartbeat, SystemdNotify
from reliability.web import Readiness, build_app, problems_of, read_routes
from reliability.writer import BatchWriter

if TYPE_CHECKING:
    from starlette.routing import Route

    from reliability.runbooks.flows import AutoRunner

if TYPE_CHECKING:
    from reliability.detect.loop import DetectionLoop

log = logging.getLogger("reliability.daemon")

# A runner's deadline is the collector's own timeout plus this margin, so the collector's
# own, more precise error (e.g. "host unreachable") arrives before the runner gives up.
DEADLINE_MARGIN = 2.0
STOP_GRACE = 3.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
TIMERS_INTERVAL = 15.0
PRUNE_BATCHES = 20
# Incidents and runbook runs are read back from the database this often (collect/records.py).
RECORDS_INTERVAL = 15.0
RECORDS_TIMEOUT = 10.0
# systemd's watchdog pings without WatchdogSec: they extend the start timeout until ready.
SYSTEMD_PING_INTERVAL = 5.0


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
    liveness: LivenessProbe | None = None  # started with detection, which it wakes

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
    specs = schedule.liveness(config)
    if specs:
        cc = config.collect
        daemon.liveness = LivenessProbe(
            specs, snapshot, interval=cc.liveness_interval, timeout=cc.liveness_timeout
        )
        daemon.closers.append(daemon.liveness.stop)
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
        db.LazyEngine(
            config.database_url(),
            config.database.limits(),
            sqlite_synchronous=config.database.sqlite_synchronous,
        ),
        member_id=cluster.member_id or default_member_id(),
        http=config.http.listen,
        heartbeat=cluster.heartbeat,
        lease=cluster.lease,
        keys=Shards(config).keys,
        forget_after=cluster.forget_after,
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
    (`incidents.ack_timeout`) and a silence that ended re-notify on-call, an incident
    nobody acknowledges escalates (`slack.escalation`); a runbook run
    whose process died is marked interrupted (its locks freed); a digest that served its
    service's soak time without an incident becomes known-good; the fleet table knows every
    fleet node of the config (seeded on the first tick, nodes added later on the next);
    Slack clicks older than a day are forgotten (`handled_interactions`).
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
        from reliability.oncall.flows import escalate
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
                if self._config.slack is not None:
                    changed += escalate(
                        session, slack=self._config.slack, oncall=self._config.oncall, now=now
                    )
                for run in recover_interrupted(session, now=now):
                    log.warning(
                        "runbook run %d (%s) interrupted: %s", run.run_id, run.runbook, run.reason
                    )
                for good in promote_soaked(session, config=self._config, now=now):
                    log.info("%s: %s is known-good after its soak", good.service, good.image)
                seed(session, config=self._config, now=now)
            self._prune_interactions(now)
        except (db.DatabaseError, sa.exc.SQLAlchemyError) as exc:
            log.warning(
                "ack timeouts, silences, runbook runs, soaks and the fleet not checked: %s", exc
            )
            return
        if changed and self._dispatcher is not None:
            self._dispatcher.wake()

    def _prune_interactions(self, now: datetime) -> None:
        """Forget the Slack clicks older than their retention, a small batch per transaction
        (at most PRUNE_BATCHES a tick: a backlog goes over the next ticks)."""
        from reliability.notify.service import (
            INTERACTION_RETENTION,
            PRUNE_BATCH,
            prune_interactions,
        )

        for _ in range(PRUNE_BATCHES):
            with self._database.get().begin() as connection:
                deleted = prune_interactions(connection, before=now - INTERACTION_RETENTION)
            if deleted < PRUNE_BATCH:
                return


def _slack_routes(
    config: Config,
    database: db.LazyEngine,
    dispatcher: Dispatcher | None,
    runbooks: AutoRunner,
    closers: list[Callable[[], object]],
) -> list[Route]:
    """Clicks on the incident buttons, where the config asks for them: over Socket Mode
    (oncall/socket.py) with an app token, at the HTTP route (oncall/route.py) with a
    signing secret; the routes to mount."""
    if config.slack is None or not config.slack.interactive:
        return []
    from reliability.notify.slack import SlackClient
    from reliability.oncall.flows import SlackActions
    from reliability.oncall.route import interactions_route
    from reliability.oncall.socket import SocketTransport

    client = SlackClient(config.slack_token(), base_url=str(config.slack.base_url))
    actions = SlackActions(
        config.slack,
        database.session,
        client,
        wake=dispatcher.wake if dispatcher is not None else lambda: None,
        runbooks=runbooks,
    )
    closers.append(actions.close)
    app_token = config.slack_app_token()
    if app_token is not None:
        socket = SocketTransport(actions, app_token=app_token, base_url=str(config.slack.base_url))
        socket.start()  # connects on its own thread, retrying until Slack answers
        closers.insert(0, socket.stop)
    secret = config.slack_signing_secret()
    return [interactions_route(actions, secret=secret)] if secret is not None else []


def _read_routes(daemon: Daemon, database: db.LazyEngine, membership: Membership) -> list[Route]:
    """The reading commands' API: `incidents list` on the daemon's pool, and `status`
    with this daemon's own share read from its snapshot and the other members' scraped."""
    from reliability.exposition import Exposition
    from reliability.incidents.listing import listing
    from reliability.status.gather import StatusReader, document

    config = daemon.config
    reader = StatusReader(
        config,
        database_url=database.url,
        database=database,
        local=lambda: Exposition.parse(daemon.snapshot.exposition()),
        local_member=membership.member_id,
    )

    def incidents(status: str, limit: int) -> list[dict[str, Any]]:
        with database.session() as session, session.begin():
            return listing(session, status=status, limit=limit, now=datetime.now(UTC))

    return read_routes(
        incidents=incidents,
        status=lambda: document(reader.read()),
        database_url=database.url,
        listen=config.http.listen,
        token=config.api_token(),
    )


def _start_incident_flow(
    daemon: Daemon,
    scheduler: BackgroundScheduler,
    database: db.LazyEngine,
    dispatcher: Dispatcher | None,
    runbooks: AutoRunner,
    membership: Membership,
    writer: BatchWriter | None = None,
) -> None:
    """Rules into incidents (detect/loop.py, through `writer`), incidents into Slack
    (notify/dispatcher.py); both stop with the daemon."""
    from reliability.detect.evaluator import Evaluator
    from reliability.detect.loop import DetectionLoop

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
    runbooks.start()
    detection = DetectionLoop(
        Evaluator(config),
        daemon.snapshot,
        database,
        reopen_window=config.incidents.reopen_window,
        on_recorded=dispatcher.wake if dispatcher is not None else None,
        on_firing=runbooks.submit,
        writer=writer,
        gate=membership.problem,
        member=None if membership.solo else membership.member_id,
    )
    _share_out(daemon, scheduler, membership, detection)
    detection.start()
    if daemon.liveness is not None:
        # A port changing state is evaluated at once, not at the next tick.
        daemon.liveness.start(on_change=detection.wake)
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


def _notify_systemd(
    scheduler: BackgroundScheduler,
    server: uvicorn.Server,
    readiness: list[Readiness],
    *,
    ready_status: str,
) -> Heartbeat | None:
    """systemd's notify protocol when it started the daemon (sdnotify.py): pings as a job
    of the scheduler (a stuck scheduler stops them), readiness as /readyz sees it, checked
    every second until ready, then every 15 s for `systemctl status`."""
    systemd = SystemdNotify.from_environ()
    if systemd is None:
        return None

    def problems() -> dict[str, str]:
        found = problems_of(readiness)
        return found if server.started else {"http": "not serving yet", **found}

    heartbeat = Heartbeat(
        systemd,
        problems,
        interval=systemd.watchdog_interval or SYSTEMD_PING_INTERVAL,
        ready_status=ready_status,
    )

    def check() -> None:
        was_ready = heartbeat.ready
        heartbeat.check()
        if heartbeat.ready and not was_ready:
            scheduler.reschedule_job("systemd-status", trigger="interval", seconds=TIMERS_INTERVAL)

    # misfire_grace_time None: a late run still runs (a loaded host delays, it is not stuck).
    for job, seconds, name in (
        (heartbeat.ping, heartbeat.interval, "systemd-watchdog"),
        (check, 1.0, "systemd-status"),
    ):
        scheduler.add_job(
            job,
            "interval",
            seconds=seconds,
            id=name,
            next_run_time=datetime.now(UTC),
            misfire_grace_time=None,
        )
    return heartbeat


def serve(daemon: Daemon) -> int:
    """Run the scheduler and the HTTP surface until SIGTERM/SIGINT; 0 on a clean stop."""
    scheduler = BackgroundScheduler(
        # The collector jobs, the incident timers, the outbox metrics, the records, the
        # running images and systemd's two: none waits.
        executors={"default": {"type": "threadpool", "max_workers": len(daemon.jobs) + 6}},
        job_defaults={"max_instances": 1, "coalesce": True},
        timezone="UTC",
    )

    from reliability.runbooks.flows import AutoRunner
    from reliability.ssh import SshPool

    def scheduler_check() -> str | None:
        return None if scheduler.running else "scheduler is stopped"

    # One engine (one connection pool) for everything the daemon does in the database.
    database = db.LazyEngine(
        daemon.config.database_url(),
        daemon.config.database.limits(),
        sqlite_synchronous=daemon.config.database.sqlite_synchronous,
    )
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
    if daemon.liveness is not None:
        daemon.liveness.owns = lambda node: membership.owns(shards.of_target(LIVENESS, node))
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
    # Webhooks and rule transitions that arrive together: one transaction (writer.py).
    writer = BatchWriter(database.session, name="incident writer")
    dispatcher = _dispatcher(daemon.config, database, membership)
    runbooks = AutoRunner(daemon.config, database, SshPool(), gate=membership.problem)
    slack_closers: list[Callable[[], object]] = []
    readiness = [
        Readiness("database", _database_check(database)),
        Readiness("scheduler", scheduler_check),
        Readiness("cluster", membership.problem),
    ]
    app = build_app(
        daemon.snapshot,
        readiness=readiness,
        # Pages held back by a refused token or channel: critical, but the daemon still
        # records incidents and takes webhooks, so it stays ready.
        critical=[Readiness("notify", dispatcher.health.condition)] if dispatcher else [],
        routes=[
            *_read_routes(daemon, database, membership),
            *intake_routes(daemon.config, writer),
            *_slack_routes(daemon.config, database, dispatcher, runbooks, slack_closers),
        ],
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
    _start_incident_flow(daemon, scheduler, database, dispatcher, runbooks, membership, writer)
    scheduler.add_job(
        lambda: daemon.snapshot.publish(
            "cluster", membership.member_id, ok=True, duration=0.0, samples=membership.samples()
        ),
        "interval",
        seconds=min(5.0, daemon.config.cluster.heartbeat),
        id="cluster",
        next_run_time=datetime.now(UTC),
    )
    daemon.closers[:0] = slack_closers  # first: no click acts while the rest stops
    # Leaving (the others take the share at once) after the work that may still write;
    # last the writer (it writes what it accepted) and the engine.
    daemon.closers += [membership.stop, writer.close, database.dispose]
    up = f"{len(daemon.jobs)} job(s), serving http://{http.host}:{http.port}/metrics"
    heartbeat = _notify_systemd(scheduler, server, readiness, ready_status=f"ready: {up}")
    log.info("daemon up: %s", up)
    try:
        server.run()  # returns on SIGTERM/SIGINT (uvicorn's handlers)
    finally:
        log.info("stopping")
        if heartbeat is not None:
            heartbeat.stopping()
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
