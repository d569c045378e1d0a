"""Runbook work that spans domains: what a run writes to the incident, the images registry
and the fleet, planning with the registry's known-good image and the fleet's live state,
and the runbooks the daemon runs on its own when an incident opens. The executor, the
service, the plan and the actions know none of these domains; they reach them through
`executor.Hooks`, wired here.

    executor(config, db, ...)   an Executor whose runs note progress on their incident
                                 (incident_flows.add_note), record deploys (images) and
                                 change nodes' states (fleet)
    plan_now(...)               the plan a run would perform now (live pools and nodes,
                                 known-good)
    in_maintenance(...)         the maintenance window over what a plan touches, if any
    AutoRunner                  the automatic runs (below)

A firing rule's runbook runs on its own when the rule says `auto: true` or the service it
would touch lists the runbook in `auto_runbooks`; at most one automatic run of a runbook
on one target (its parameters: node=gpu-2) per `auto_cooldown`, so gpu-1 then gpu-2 failing
are both failed over, the same node twice is not. Runs go on threads, so detection never
waits on a runbook: one lane per service and runbook, taking its runs in the order their
incidents opened, so a node failover is never queued behind an upstream failover waiting
hours for the hosted API (that run lets go of the service's lock while it waits, see
executor.py). A run that finds the lock held waits for it up to its first step's timeout.
The incident's Slack thread hears the start, each failed step, what the run does with its
locks and the end (as timeline notes, through the outbox); a run that cannot start says
why there too. Without `auto`, nothing runs: the Slack message shows the command to paste.
No automatic run starts while a maintenance window covers its incident, a node it would
touch or a service it locks (it says so on the incident, with the command to run it by
hand); a person's run from Slack goes ahead with a warning in the thread.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from reliability import db
from reliability.capacity import service as capacity
from reliability.capacity.models import CapacityTest
from reliability.config import Config, ConfigError, ServiceConfig
from reliability.detect.evaluator import Transition
from reliability.detect.render import RunbookRequest
from reliability.fleet import service as fleet
from reliability.images import service as images
from reliability.incidents import flows as incident_flows
from reliability.incidents import service as incidents
from reliability.maintenance import service as maintenance
from reliability.maintenance.service import ActiveWindow
from reliability.runbooks import params as params_mod
from reliability.runbooks import service as runs
from reliability.runbooks.actions.node_state import SetNodeState
from reliability.runbooks.errors import ParamError, RunbookError
from reliability.runbooks.executor import Executor, Hooks, Progress, RunResult, plan_live
from reliability.runbooks.load import load_runbooks, named
from reliability.runbooks.models import RunbookRun
from reliability.runbooks.ops import LOCAL
from reliability.runbooks.perform import Redactor
from reliability.runbooks.plan import LiveNode, Plan, PlannedStep, first_picture
from reliability.runbooks.spec import Runbook
from reliability.ssh import SshPool

log = logging.getLogger(__name__)
ACTOR = "daemon"
QUEUE_LIMIT = 64


class DomainHooks(Hooks):
    """A run's notes go on its incident's timeline, its deploys into the images registry,
    `known-good` is the registry's, and nodes are chosen from, and changed in, the fleet
    table (seeded from the config by the first change)."""

    def add_note(self, session: Session, *, incident_id: int, by: str, text: str) -> bool:
        incident_flows.add_note(session, incident_id=incident_id, by=by, text=text)
        return True

    def record_deploy(
        self, session: Session, *, service: str, node: str, image: str, at: datetime, run_id: int
    ) -> bool:
        images.record_deploy(session, service=service, node=node, image=image, at=at, run_id=run_id)
        return True

    def known_good(self, session: Session, *, service: ServiceConfig) -> str:
        try:
            return images.known_good(session, service=service)
        except images.NoKnownGood as exc:
            raise ParamError([str(exc)]) from None

    def fleet(self, session: Session, *, config: Config) -> dict[str, LiveNode]:
        # Read only (a plan writes nothing): nodes the table does not know yet are as the
        # config has them; the first change seeds them.
        known = {
            r.node: LiveNode(r.node, r.state.value, r.pool, r.service, r.reason)
            for r in fleet.nodes(session, config=config)
        }
        return {**first_picture(config), **known}

    def set_node_state(
        self, session: Session, *, config: Config, change: SetNodeState, run_id: int, at: datetime
    ) -> tuple[bool, str]:
        expect = fleet.Seen(change.expect_state, change.expect_pool)
        fleet.seed(session, config=config, now=at)
        try:
            row = fleet.set_state(
                session,
                node=change.node,
                state=change.state,
                service=change.service,
                pool=change.pool,
                reason=change.reason,
                by=f"run {run_id}",
                at=at,
                run_id=run_id,
                expect=expect,
            )
        except fleet.UnknownNode:
            return False, f"{change.node} is not in the fleet table"
        except fleet.StateChanged as exc:
            # An undo finding the node changed by someone else since leaves it to them.
            return change.undo, f"left as it is: {exc}" if change.undo else str(exc)
        where = f" {row.pool}" if row.pool and row.state == "serving" else ""
        return True, f"{row.node} is {row.state.value}{where} in the fleet"

    def capacity_baseline(
        self, session: Session, *, service: str, pool: str
    ) -> CapacityTest | None:
        return capacity.baseline(session, service=service, pool=pool)

    def record_capacity(self, session: Session, *, test: CapacityTest) -> None:
        capacity.record(session, test=test)

    def ask_approval(
        self, session: Session, *, run_id: int, step: str, incident_id: int, prompt: str
    ) -> int | None:
        asked = runs.ask_approval(
            session,
            run_id=run_id,
            step=step,
            incident_id=incident_id,
            prompt=prompt,
            now=datetime.now(UTC),
        )
        incident_flows.ask_approval(
            session,
            incident_id=incident_id,
            by=f"run {run_id}",
            prompt=prompt,
            approval_id=asked.id,
        )
        return asked.id

    def database_failed(
        self, session: Session, *, run_id: int, runbook: str, incident_id: int | None, text: str
    ) -> bool:
        incident_flows.open_or_update(
            session,
            fingerprint=f"runbook-run-{run_id}-database-failed",
            title=f"Runbook run {run_id} ({runbook}) lost its database mid-run",
            severity="critical",
            source="runbook",
            labels={"runbook": runbook, "component": "reliability"},
            summary=f"{text} Check `reliability runbook status {run_id}` and the database.",
        )
        if incident_id is not None:
            incident_flows.add_note(
                session, incident_id=incident_id, by=f"runbook {runbook} (run {run_id})", text=text
            )
        return True


HOOKS = DomainHooks()


def executor(config: Config, database: sa.Engine, **options: Any) -> Executor:
    """An Executor (options as its own) whose runs reach the incident and the images
    registry: what the CLI, the daemon and the rig tests run runbooks with."""
    return Executor(config, database, hooks=HOOKS, **options)


def in_maintenance(
    session: Session, plan: Plan, *, labels: Mapping[str, str] | None = None, now: datetime
) -> tuple[str, ActiveWindow] | None:
    """What of a run is under a maintenance window in force, and the window: the incident
    it answers (`labels`), a target of a step, or a service it locks; None when nothing."""
    windows = maintenance.active(session, now=now)
    if not windows:
        return None
    touched = [("its incident", dict(labels))] if labels is not None else []
    touched += [
        (u.target, {"node": u.target})
        for step in plan.steps
        for u in step.units
        if u.target != LOCAL  # the reliability host itself, not the fleet's
    ]
    touched += [(f"service {name}", {"service": name}) for name in plan.locks]
    for what, of in touched:
        window = maintenance.covering(windows, of)
        if window is not None:
            return what, window
    return None


def plan_now(
    config: Config, sessions: sessionmaker[Session], runbook: Runbook, values: dict[str, Any]
) -> Plan:
    """The plan a run would perform now: live pools, the registry's known-good image. Reads
    the database only; ParamError when a service has no known-good image to deploy."""
    with sessions.begin() as s:
        return plan_live(s, config, runbook, values, HOOKS)


# --- automatic runs ---------------------------------------------------------------------------
class _SlackThread(Progress):
    """Progress as notes on the incident's timeline: Slack posts them in its thread."""

    def __init__(
        self, runner: AutoRunner, incident_id: int | None, name: str, actor: str = ACTOR
    ) -> None:
        self.runner, self.incident_id, self.name, self.actor = runner, incident_id, name, actor

    def started(self, run_id: int, plan: Plan) -> None:
        given = " ".join(f"{k}={v}" for k, v in plan.params.items())
        how = "on its own" if self.actor == ACTOR else f"for {self.actor}"
        self.runner.note(
            self.incident_id,
            f"Running runbook {self.name} {given} {how} (run {run_id}); "
            f"`reliability runbook status {run_id}` shows every command.",
        )

    def unit(self, step: PlannedStep, target: str, ok: bool, text: str) -> None:
        if not ok:
            self.runner.note(self.incident_id, f"Step {step.id} failed on {target}: {text}")

    def locks(self, text: str) -> None:
        self.runner.note(self.incident_id, text[0].upper() + text[1:] + ".")

    def finished(self, result: RunResult) -> None:
        tail = f": {result.reason}" if result.reason else "."
        self.runner.note(self.incident_id, f"Runbook run {result.run_id} {result.status}{tail}")


@dataclass(frozen=True, slots=True)
class _Job:
    """An allowed automatic run, ready to go when its lane gets to it. `params`: the
    resolved parameters as a run records them, its target for the cooldown."""

    request: RunbookRequest
    book: Runbook
    values: dict[str, Any]
    params: dict[str, str]
    incident_id: int | None
    services: list[ServiceConfig]
    plan: Plan  # as decided: what it touches, checked against maintenance windows
    labels: Mapping[str, str]  # of the incident it answers
    actor: str = ACTOR  # a person who asked for it (from Slack), else the daemon

    @property
    def lane(self) -> tuple[str, ...]:
        """The services it locks, then the runbook: runs of one lane go one at a time."""
        return (*sorted(s.name for s in self.services), self.book.name)


class AutoRunner:
    """Takes firing transitions (`submit`). One thread decides, in the order incidents
    opened, which runbooks may run; each runbook on each service (set of services a run
    locks) has a lane that runs its jobs one after another, in that order, while other
    lanes go on: runs of two lanes on one service meet at its lock, which a run waits for
    (bounded) and a waiting run lets go."""

    def __init__(
        self,
        config: Config,
        database: db.LazyEngine,
        ssh: SshPool,
        *,
        gate: Callable[[], str | None] | None = None,
    ) -> None:
        self.config, self.database, self.ssh = config, database, ssh
        # A daemon fenced in its cluster starts no run, and its runs change nothing more.
        self.gate = gate
        self.redact = Redactor(config.secret_values())
        self._queue: queue.Queue[Transition | None] = queue.Queue(QUEUE_LIMIT)
        self._stop = threading.Event()
        self._lanes: dict[tuple[str, ...], queue.Queue[_Job | None]] = {}
        self._threads = [threading.Thread(target=self._decide, name="runbooks", daemon=True)]

    def start(self) -> None:
        self._report_runbooks()
        self._threads[0].start()

    def _report_runbooks(self) -> None:
        """Validate `runbooks_dir` at start: a bad file is logged and left out; the others
        run (a firing that asks for the bad one says why on its incident)."""
        try:
            books = load_runbooks(self.config)
        except ConfigError as exc:
            log.warning("no automatic runbooks: %s", exc)
            return
        for name, lines in books.broken.items():
            log.error("runbook %s is left out until its file is fixed:\n%s", name, "\n".join(lines))
        log.info("runbooks: %s", ", ".join(books) or "none")

    def stop(self, timeout: float = 30.0) -> None:
        """Running runs finish their step and undo themselves (they end `aborted`)."""
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)  # wakes the deciding thread
        for lane in list(self._lanes.values()):
            lane.put(None)  # lanes are unbounded
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        self.ssh.close()

    def submit(self, transition: Transition) -> None:
        try:
            self._queue.put_nowait(transition)
        except queue.Full:
            log.error("runbook queue full: %s not considered", transition.fingerprint)

    def note(self, incident_id: int | None, text: str) -> None:
        """Post `text` (redacted) on the incident's timeline; Slack posts it in the thread."""
        text = self.redact(text)
        if incident_id is None:
            log.info("runbook: %s", text)
            return
        try:
            with self.database.session() as s, s.begin():
                incident_flows.add_note(
                    s, incident_id=incident_id, by="reliability runbooks", text=text
                )
        except (db.DatabaseError, sa.exc.SQLAlchemyError) as exc:
            log.warning("runbook note not recorded on incident %d: %s", incident_id, exc)

    def plan(self, request: RunbookRequest) -> tuple[Runbook, dict[str, Any], Plan]:
        """The runbook, its resolved parameters and the plan a run of `request` would perform
        now; ConfigError or RunbookError when it cannot run."""
        book = named(load_runbooks(self.config), request.name, self.config)
        values = params_mod.resolve(book, request.params, self.config)
        sessions = db.session_factory(self.database.get())
        return book, values, plan_now(self.config, sessions, book, values)

    def run_for(self, actor: str, incident_id: int, request: RunbookRequest) -> None:
        """A person's run of the incident's suggested runbook (confirmed in Slack): planned
        now and queued on its lane like an automatic run, with no cooldown; its progress
        goes to the incident's thread, and one that cannot start says why there."""
        try:
            book, values, plan = self.plan(request)
        except (ConfigError, RunbookError) as exc:
            self._not_started(incident_id, f"Runbook {request.name} not run: {exc}")
            return
        services = [s for s in self.config.services if s.name in plan.locks]
        with self.database.session() as s:
            labels = incidents.get(s, incident_id=incident_id).labels
        job = _Job(request, book, values, plan.params, incident_id, services, plan, labels, actor)
        self._lane(job.lane).put(job)

    def _not_started(self, incident_id: int | None, text: str) -> None:
        """An automatic run that does not start: why, in the log and on its incident."""
        log.warning("%s", self.redact(text))
        if incident_id is not None:
            self.note(incident_id, text)

    # --- deciding, in the order incidents opened --------------------------------------------
    def _decide(self) -> None:
        while not self._stop.is_set():
            transition = self._queue.get()
            if transition is None or self._stop.is_set():
                return
            try:
                job = self._job(transition)
            except Exception:
                log.exception("automatic runbook for %s failed", transition.fingerprint)
                continue
            if job is not None:
                self._lane(job.lane).put(job)

    def _job(self, t: Transition) -> _Job | None:
        """The run this firing asks for, if it may run on its own; None otherwise (a run
        that cannot start says why on the incident)."""
        request = t.runbook_request
        assert request is not None
        with self.database.session() as s:
            found = incidents.get_open_by_fingerprint(s, fingerprint=t.fingerprint)
            incident_id = found.id if found is not None else None
        try:
            book, values, plan = self.plan(request)
        except (ConfigError, RunbookError) as exc:
            # Which services it locks is unknown without a plan: any that lists it counts.
            if request.auto or any(request.name in s.auto_runbooks for s in self.config.services):
                self._not_started(
                    incident_id, f"Runbook {request.name} cannot run on its own: {exc}"
                )
            return None
        services = [s for s in self.config.services if s.name in plan.locks]
        if not (request.auto or any(request.name in s.auto_runbooks for s in services)):
            return None  # the Slack message shows the command; a person decides
        return _Job(request, book, values, plan.params, incident_id, services, plan, t.labels)

    def _lane(self, key: tuple[str, ...]) -> queue.Queue[_Job | None]:
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = queue.Queue()
            name = "runbooks-" + "+".join(key)
            thread = threading.Thread(target=self._drive, args=(lane,), name=name, daemon=True)
            self._threads.append(thread)
            thread.start()
        return lane

    # --- running, one job of a lane at a time -------------------------------------------------
    def _drive(self, lane: queue.Queue[_Job | None]) -> None:
        while not self._stop.is_set():
            job = lane.get()
            if job is None or self._stop.is_set():
                return
            try:
                self._run(job)
            except Exception:
                log.exception("automatic runbook %s failed", job.request.name)

    def _run(self, job: _Job) -> None:
        request = job.request
        if self.gate is not None and (problem := self.gate()):
            self._not_started(job.incident_id, f"Runbook {request.name} not started: {problem}")
            return
        recent = self._recent_auto_run(job) if job.actor == ACTOR else None
        if recent is not None:
            given = " ".join(f"{k}={v}" for k, v in job.params.items()) or "no parameters"
            self._not_started(
                job.incident_id,
                f"Runbook {request.name} not run on its own: run {recent.id} "
                f"({recent.runbook} {given}, {recent.status}) started at "
                f"{recent.started_at:%H:%M:%SZ}, within the service's auto_cooldown for "
                f"the same target. Run it by hand if it is still needed: `{request.command}`",
            )
            return
        if self._held_by_maintenance(job):
            return
        progress = _SlackThread(self, job.incident_id, request.name, job.actor)
        runner = executor(
            self.config,
            self.database.get(),
            ssh=self.ssh,
            stop=self._stop,
            progress=progress,
            wait_for_locks=True,
            approver=job.actor,
            member_fence=self.gate,
        )
        try:
            # Planned again now: a run before this one may have moved the pool.
            runner.run(job.book, job.values, actor=job.actor, incident_id=job.incident_id)
        except RunbookError as exc:
            how = "on its own" if job.actor == ACTOR else f"for {job.actor}"
            self._not_started(job.incident_id, f"Runbook {request.name} not run {how}: {exc}")
        finally:
            runner.close()

    def _held_by_maintenance(self, job: _Job) -> bool:
        """Whether a maintenance window stops the job: an automatic one does not start (the
        incident says why); a person's goes ahead, warned in the thread."""
        with self.database.session() as s:
            covered = in_maintenance(s, job.plan, labels=job.labels, now=datetime.now(UTC))
        if covered is None:
            return False
        what, window = covered
        name = job.request.name
        if job.actor == ACTOR:
            self._not_started(
                job.incident_id,
                f"Runbook {name} not run on its own: {what} is in {window.describe()}. "
                f"Run it by hand if it is needed now: `{job.request.command}`",
            )
            return True
        self.note(
            job.incident_id,
            f"Warning: {what} is in {window.describe()}; running {name} for {job.actor} as asked.",
        )
        return False

    def _recent_auto_run(self, job: _Job) -> RunbookRun | None:
        """An automatic run of the same runbook on the same target (parameters) within
        the `auto_cooldown` of a service it locks."""
        now = datetime.now(UTC)
        with self.database.session() as s:
            for service in job.services:
                since = now - timedelta(seconds=service.auto_cooldown)
                for run in runs.history(s, service=service.name, limit=50):
                    if run.started_at < since:
                        break  # newest first: the rest are older still
                    if (
                        run.started_by == ACTOR
                        and run.runbook == job.book.name
                        and run.params == job.params
                    ):
                        return run
        return None
