"""The runbook engine: performs a plan, step by step and target by target, under a lock per
service, recording every operation; on a failed step, or when told to stop, it undoes what
the run changed, newest first.

    plan (plan.py) ──▶ Executor.run ──▶ per step: batches of units in parallel
                                        unit: its operations in order (perform.py),
                                        retried with backoff within the step's timeout
                          failure/stop ─▶ undo: the units' recorded undo operations,
                                        newest first, values read during the run filled in

Every unit's row is written before its first change goes out, with the operations that
reverse it, so `undo RUN_ID` works from the rows alone after a crash. The run keeps the same
undo in memory (its journal): when the database fails mid-run, the run stops, puts back
what it changed from the journal, and records that (with a critical incident) once the
database answers again; if it does not within `database_wait`, it says so in the log, loudly.

Locks are fenced: each acquisition gets the lock's next epoch, and before every operation
that changes something the run checks that its epoch still holds the lock. A run whose
lock was taken over (it was taken for dead) stops there and undoes nothing: what it changed
is no longer its to put back. A step with `release_locks` (one that only waits or
observes) runs without the locks; the run takes them back, with new epochs, before its
next step, waiting for a run that holds one meanwhile up to that step's timeout.

What a run asks of other domains (a note on its incident, a deploy into the images
registry, the known-good image, the fleet's live state) goes through `Hooks`; flows.py
passes the real ones.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from reliability.config import Config, NodeConfig, ServiceConfig
from reliability.runbooks import params as params_mod
from reliability.runbooks import service as runs
from reliability.runbooks.actions import REGISTRY
from reliability.runbooks.actions.node_state import SetNodeState
from reliability.runbooks.checks import OpOutcome, seconds
from reliability.runbooks.errors import Locked, ParamError, WrongRunState
from reliability.runbooks.models import RunbookApproval, RunbookStep, RunStatus, UnitStatus
from reliability.runbooks.ops import LOCAL, Op
from reliability.runbooks.perform import Performer, Redactor, resolved
from reliability.runbooks.plan import LiveNode, Plan, PlannedStep, Unit, first_picture, make_plan
from reliability.runbooks.spec import Runbook
from reliability.ssh import SshPool, target_for

if TYPE_CHECKING:
    from reliability.capacity.models import CapacityTest

log = logging.getLogger(__name__)
HEARTBEAT = 5.0
UNDO_LOCK_WAIT = 60.0  # seconds a failed run waits to take back a lock it let go, to undo
LOCK_POLL = 1.0  # seconds between tries of a lock another run holds
APPROVAL_POLL = 0.5  # seconds between reads of a question asked in Slack
DATABASE_WAIT = 60.0  # how long a run that lost its database waits for it to record its end
DATABASE_RETRY = 2.0


@dataclass(frozen=True, slots=True)
class RunResult:
    run_id: int
    status: RunStatus
    reason: str | None


class Progress:
    """What a run tells whoever watches it; the CLI prints it, the daemon posts the start,
    a failure and the end to the incident's Slack thread. Every method may be left as is."""

    def started(self, run_id: int, plan: Plan) -> None: ...

    def step(self, index: int, step: PlannedStep) -> None: ...

    def op(self, target: str, op: Op, outcome: OpOutcome) -> None: ...

    def unit(self, step: PlannedStep, target: str, ok: bool, text: str) -> None: ...

    def undoing(self, reason: str) -> None: ...

    def locks(self, text: str) -> None:
        """What the run does with its locks: waits for one, lets them go while a step
        waits, takes them back, or stops because another run took them over."""

    def finished(self, result: RunResult) -> None: ...


class _Redacted(Progress):
    """`progress` with the run's redactor over every text it is told: a command line, its
    output, an error, a reason. What a progress shows (a terminal, an incident's Slack
    thread) is outside the engine, like the database."""

    def __init__(self, progress: Progress, redact: Callable[[str], str]) -> None:
        self.inner, self.redact = progress, redact

    def started(self, run_id: int, plan: Plan) -> None:
        self.inner.started(run_id, plan)

    def step(self, index: int, step: PlannedStep) -> None:
        self.inner.step(index, step)

    def op(self, target: str, op: Op, outcome: OpOutcome) -> None:
        shown = dataclasses.replace(
            outcome, text=self.redact(outcome.text), output=self.redact(outcome.output)
        )
        self.inner.op(target, dataclasses.replace(op, detail=self.redact(op.detail)), shown)

    def unit(self, step: PlannedStep, target: str, ok: bool, text: str) -> None:
        self.inner.unit(step, target, ok, self.redact(text))

    def undoing(self, reason: str) -> None:
        self.inner.undoing(self.redact(reason))

    def locks(self, text: str) -> None:
        self.inner.locks(self.redact(text))

    def finished(self, result: RunResult) -> None:
        reason = result.reason and self.redact(result.reason)
        self.inner.finished(dataclasses.replace(result, reason=reason))


@dataclass(slots=True)
class _Undo:
    """One unit's undo as its row holds it, kept in memory too (the run's journal): what
    puts the unit back even when the database is gone. `status` is set once it was tried;
    `recorded` says whether its row says so yet."""

    unit_id: int
    step: str
    target: str
    record: dict[str, Any]
    log: list[dict[str, Any]]
    status: UnitStatus | None = None
    recorded: bool = False


class Hooks:
    """What a run asks of other domains, each in the executor's session; flows.py passes
    the real ones (the incident's timeline, the images registry, the fleet). These defaults
    reach no other domain: a note goes nowhere, a deploy is not recorded (the record_deploy
    step fails), there is no known-good image to plan with (ParamError), the fleet is as
    the config draws it and its state cannot change (the node_state step fails)."""

    def add_note(self, session: Session, *, incident_id: int, by: str, text: str) -> bool:
        """Put `text` on the incident's timeline; False when there is nowhere to put it."""
        return False

    def record_deploy(
        self, session: Session, *, service: str, node: str, image: str, at: datetime, run_id: int
    ) -> bool:
        """Record that `node` runs `image` for `service`; False when there is no registry."""
        return False

    def known_good(self, session: Session, *, service: ServiceConfig) -> str:
        """The image `known-good` means for `service`; ParamError when there is none."""
        raise ParamError([f"no images registry to read the known-good image of {service.name}"])

    def fleet(self, session: Session, *, config: Config) -> dict[str, LiveNode]:
        """Each fleet node's live state, by name."""
        return first_picture(config)

    def set_node_state(
        self, session: Session, *, config: Config, change: SetNodeState, run_id: int, at: datetime
    ) -> tuple[bool, str]:
        """Change a node's state as `change` says (only if it is still as expected; nodes of
        `config` the fleet does not know yet as the config has them): whether that went as
        asked, and what happened, in a line. Here no fleet: nothing changes, so
        an undo has nothing to put back."""
        return change.undo, "no fleet to change the state of a node in"

    def capacity_baseline(
        self, session: Session, *, service: str, pool: str
    ) -> CapacityTest | None:
        """The pool's capacity baseline; None here: no capacity records to read."""
        return None

    def record_capacity(self, session: Session, *, test: CapacityTest) -> None:
        """Keep a capacity test's record; here nowhere."""

    def ask_approval(
        self, session: Session, *, run_id: int, step: str, incident_id: int, prompt: str
    ) -> int | None:
        """Ask `prompt` in the incident's thread for a confirm step (`approval: slack`); the
        question's id, or None when there is no thread to ask in."""
        return None

    def database_failed(
        self, session: Session, *, run_id: int, runbook: str, incident_id: int | None, text: str
    ) -> bool:
        """Tell on-call that run `run_id` stopped because its database failed (`text`: what
        was put back), once the database answers again; False when there is no one to tell."""
        return False


def _now() -> datetime:
    return datetime.now(UTC)


def live_config(config: Config, session: Session, fleet: dict[str, LiveNode]) -> Config:
    """The config as the fleet is now: each service's `active_pool` as the last run that
    switched it left it, and each node's `pool` the one it serves (a standby that took
    over serves the failed node's pool): what `{service.active_pool}` and `{node.pool}`
    mean now."""
    pools = runs.active_pools(session)
    services = [
        s.model_copy(update={"active_pool": pools[s.name]})
        if s.name in pools and pools[s.name] in s.pools
        else s
        for s in config.services
    ]
    nodes = [
        n.model_copy(update={"pool": fleet[n.name].pool})
        if n.name in fleet and fleet[n.name].state == "serving"
        else n
        for n in config.nodes
    ]
    return config.model_copy(update={"services": services, "nodes": nodes})


def plan_live(
    session: Session,
    config: Config,
    runbook: Runbook,
    values: dict[str, Any],
    hooks: Hooks,
    *,
    resumed: int | None = None,
) -> Plan:
    """The plan a run would perform now: the fleet's live state and pools, the known-good
    image `hooks` reads. Reads the database only; ParamError when a service has no
    known-good image to deploy. `resumed`: a run being resumed, planned with the fleet as
    that run found it (its node_state changes rewound), so its steps plan as they did."""
    fleet = hooks.fleet(session, config=config)
    if resumed is not None:
        fleet = _rewound(fleet, runs.to_undo(session, run_id=resumed))
    live = live_config(config, session, fleet)
    values = {k: _live_value(live, v) for k, v in values.items()}
    return make_plan(
        runbook,
        values,
        live,
        known_good=lambda service: hooks.known_good(session, service=service),
        fleet=fleet,
    )


def _rewound(fleet: dict[str, LiveNode], units: list[RunbookStep]) -> dict[str, LiveNode]:
    """`fleet` with the node states the units' recorded undo puts back (newest first, so
    the oldest state wins): the fleet as the run found it."""
    fleet = dict(fleet)
    for unit in units:
        for op in (unit.undo or {}).get("ops", []):
            check = op.get("check") or {}
            if check.get("type") == SetNodeState.__name__:
                fleet[check["node"]] = LiveNode(
                    check["node"], check["state"], check["pool"], check["service"], check["reason"]
                )
    return fleet


def _live_value(live: Config, value: Any) -> Any:
    """A node or service parameter as the live config has it."""
    if isinstance(value, NodeConfig):
        return live.node(value.name)
    if isinstance(value, ServiceConfig):
        return next(s for s in live.services if s.name == value.name)
    return value


class Executor:
    """Runs runbooks against `config`'s nodes, recording into the database of `db`.
    `hooks` reach other domains (flows.executor passes the real ones); `confirm` asks a
    person at a terminal (none: no one to ask); `approver` names who runs it when the run
    may go on its own ("daemon", "--yes"): it approves confirm steps marked
    `approval: auto`; `ssh` is shared when given (closed by its owner); `stop` ends a run
    after its current step, undone; `wait_for_locks`: a run that finds a service locked
    waits for it up to its first step's timeout (the daemon's runs) instead of refusing
    at once (a person's)."""

    def __init__(
        self,
        config: Config,
        db: sa.Engine,
        *,
        progress: Progress | None = None,
        hooks: Hooks | None = None,
        confirm: Callable[[str], bool] | None = None,
        approver: str | None = None,
        ssh: SshPool | None = None,
        stop: threading.Event | None = None,
        wait_for_locks: bool = False,
        database_wait: float = DATABASE_WAIT,
        member_fence: Callable[[], str | None] | None = None,
    ) -> None:
        self.config = config
        # The daemon's own standing in its cluster: fenced, it changes nothing more.
        self.member_fence = member_fence
        self.wait_for_locks = wait_for_locks
        self.sessions = sessionmaker(db, expire_on_commit=False)
        self.hooks = hooks or Hooks()
        self.stop = stop or threading.Event()
        self._own_ssh = ssh is None
        self.ssh = ssh or SshPool()
        self.redact = Redactor(config.secret_values())
        self.progress = _Redacted(progress or Progress(), self.redact)
        self._ask, self._approver = confirm, approver
        self.database_wait = database_wait
        self._journal: dict[int, _Undo] = {}
        self._run_id = 0
        # The unit each thread performs (units of a batch run on threads of their own).
        self._unit_at = threading.local()
        self._incident_id: int | None = None
        self._runbook = ""
        # The locks the run holds, by service, at the epoch it got; none while a
        # `release_locks` step runs (`_released`: the epochs it let go at); why it lost
        # them (`_fenced`).
        self._epochs: dict[str, int] = {}
        self._released: dict[str, int] = {}
        self._fenced: runs.Fenced | None = None
        self._fence_lock = threading.Lock()
        self.performer = Performer(
            self.ssh,
            {n.name: target_for(config, n) for n in config.nodes},
            redact=self.redact,
            confirm=self._confirm,
            note=self._note,
            record_deploy=self._record_deploy,
            set_node_state=self._set_node_state,
            capacity_baseline=self._capacity_baseline,
            record_capacity=self._record_capacity,
            stop=self.stop,
        )

    def close(self) -> None:
        self.performer.close()
        if self._own_ssh:
            self.ssh.close()

    def recover(self) -> list[runs.Interrupted]:
        """Find runs a dead process left `running`; mark them interrupted, free their locks."""
        with self.sessions.begin() as s:
            found = runs.recover_interrupted(s, now=_now())
        for run in found:
            log.warning(
                "runbook run %d (%s) was interrupted: %s", run.run_id, run.runbook, run.reason
            )
        return found

    # --- entry points ----------------------------------------------------------------------
    def plan(self, runbook: Runbook, values: dict[str, Any]) -> Plan:
        """The plan a run would perform now (see plan_live)."""
        with self.sessions.begin() as s:
            return plan_live(s, self.config, runbook, values, self.hooks)

    def run(
        self,
        runbook: Runbook,
        values: dict[str, Any],
        *,
        actor: str,
        incident_id: int | None = None,
        plan: Plan | None = None,
    ) -> RunResult:
        """Lock, perform, record; Locked if a service is held by another live run."""
        self.recover()
        plan = plan or self.plan(runbook, values)
        with self.sessions.begin() as s:
            run = runs.create_run(
                s,
                runbook=runbook.name,
                params=plan.params,
                services=plan.locks,
                started_by=actor,
                incident_id=incident_id,
                now=_now(),
            )
            run_id = run.id
        first = next((s.timeout for s in plan.steps if not s.skipped), 0.0)
        self._journal = {}
        self._lock(run_id, plan.locks, within=first if self.wait_for_locks else 0.0)
        return self._perform(run_id, runbook.name, incident_id, plan, 0, {})

    def resume(self, runbook: Runbook, run_id: int) -> RunResult:
        """Complete an interrupted run: from the step it reached, with what it had read."""
        self.recover()
        with self.sessions.begin() as s:
            run = runs.get_run(s, run_id=run_id)
            if run.status != RunStatus.interrupted:
                raise WrongRunState(
                    f"run {run_id} is {run.status}; only an interrupted run resumes"
                )
            values = params_mod.resolve(runbook, run.params, self.config)
            reached, incident_id, services = run.step, run.incident_id, list(run.services)
            saved = runs.saved_values(s, run_id=run_id)
            self._journal = _journal(s, run_id)
        with self.sessions.begin() as s:
            plan = plan_live(s, self.config, runbook, values, self.hooks, resumed=run_id)
        self._lock(run_id, services, take_over=True)
        start = next((i for i, st in enumerate(plan.steps) if st.id == reached), 0)
        return self._perform(run_id, runbook.name, incident_id, plan, start, saved)

    def undo(self, run_id: int) -> RunResult:
        """Reverse what an interrupted run (or one whose undo failed) changed."""
        self.recover()
        with self.sessions.begin() as s:
            run = runs.get_run(s, run_id=run_id)
            if run.status not in (RunStatus.interrupted, RunStatus.undo_failed):
                raise WrongRunState(
                    f"run {run_id} is {run.status}; only an interrupted run, or one whose "
                    "undo failed, is undone this way"
                )
            services, self._incident_id, self._runbook = (
                list(run.services),
                run.incident_id,
                run.runbook,
            )
            self._journal = _journal(s, run_id)
        self._run_id = run_id
        self._lock(run_id, services, take_over=True)
        errors = self._undo_all()
        if self._fenced is not None:
            return self._stop_fenced(run_id, "undo stopped")
        status = RunStatus.undo_failed if errors else RunStatus.undone
        return self._finish(run_id, status, "; ".join(errors) or "undone on request")

    # --- the run ----------------------------------------------------------------------------
    def _lock(
        self, run_id: int, services: list[str], *, take_over: bool = False, within: float = 0.0
    ) -> None:
        self._fenced = None
        try:
            self._acquire(run_id, services, take_over=take_over, within=within)
        except Locked as exc:
            with self.sessions.begin() as s:
                status = RunStatus.interrupted if take_over else RunStatus.failed
                runs.finish_run(
                    s, run_id=run_id, status=status, reason=f"not started: {exc}", now=_now()
                )
            raise

    def _acquire(
        self, run_id: int, services: list[str], *, take_over: bool = False, within: float = 0.0
    ) -> None:
        """Take the locks of `services` at new epochs; while a live run holds one, try
        again for up to `within` seconds (saying so once), then raise Locked."""
        deadline, said = time.monotonic() + within, False
        while True:
            try:
                with self.sessions.begin() as s:
                    run = runs.get_run(s, run_id=run_id)
                    if take_over:
                        runs.take_over(s, run=run, now=_now())
                    self._epochs = runs.acquire_locks(s, run=run, services=services, now=_now())
                    runs.heartbeat(s, run_id=run_id, now=_now())  # waiting is not dead
                self._released = {}
                return
            except Locked as exc:
                why = str(exc)
            except sa.exc.IntegrityError:
                why = "a lock was taken meanwhile"
            left = deadline - time.monotonic()
            if left <= 0 or self.stop.is_set():
                raise Locked(why)
            if not said:
                said = True
                text = f"run {run_id} waits up to {seconds(left)} for its lock: {why}"
                log.info("%s", text)
                self.progress.locks(text)
            self.stop.wait(min(LOCK_POLL, left))

    def _perform(
        self,
        run_id: int,
        name: str,
        incident_id: int | None,
        plan: Plan,
        start: int,
        values: dict[str, str],
    ) -> RunResult:
        self._run_id, self._incident_id, self._runbook = run_id, incident_id, name
        beat = threading.Event()
        beater = threading.Thread(target=self._beat, args=(run_id, beat), daemon=True)
        beater.start()
        lost = False
        try:
            self.progress.started(run_id, plan)
            try:
                status, reason = self._steps(run_id, plan, start, values)
                if status == RunStatus.succeeded:
                    return self._succeed(run_id, plan, values)
            except sa.exc.SQLAlchemyError as exc:
                # Its record cannot follow what it does: stop, and put back from memory.
                lost, status = True, RunStatus.failed
                reason = f"the database failed mid-run ({_first_line(exc)})"
                log.error("run %d (%s): %s; undoing it from memory", run_id, name, reason)
            if not lost and self._fenced is None and self._released:
                try:  # a run undoes only under its locks
                    self._acquire(run_id, sorted(self._released), within=UNDO_LOCK_WAIT)
                except Locked as exc:
                    return self._finish(
                        run_id,
                        RunStatus.interrupted,
                        f"{reason}; not undone, its lock is held: {exc}; "
                        f"`reliability runbook undo {run_id}` reverses it once that run ended",
                    )
            if self._fenced is not None:
                return self._stop_fenced(run_id, reason)
            self.progress.undoing(reason)
            errors = self._undo_all()
            if self._fenced is not None:
                return self._stop_fenced(run_id, f"{reason}; its undo stopped")
            if errors:
                reason += "; undo failed: " + "; ".join(errors)
                status = RunStatus.undo_failed
            else:
                reason += "; everything it changed was put back"
            return self._finish(run_id, status, reason, database_failed=lost)
        finally:
            beat.set()
            beater.join()

    def _beat(self, run_id: int, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT):
            try:
                with self.sessions.begin() as s:
                    runs.heartbeat(s, run_id=run_id, now=_now())
            except sa.exc.SQLAlchemyError as exc:
                log.warning("run %d: heartbeat not recorded: %s", run_id, exc)

    def _steps(
        self, run_id: int, plan: Plan, start: int, values: dict[str, str]
    ) -> tuple[RunStatus, str]:
        for index in range(start, len(plan.steps)):
            step = plan.steps[index]
            if self.stop.is_set():
                return RunStatus.aborted, f"stopped before step {step.id}"
            if self._released and not (step.release_locks or step.skipped):
                try:
                    self._retake(run_id, step)
                except Locked as exc:
                    return RunStatus.failed, f"step {step.id} not started: {exc}"
            with self.sessions.begin() as s:
                runs.heartbeat(s, run_id=run_id, now=_now(), step=step.id)
            self.progress.step(index, step)
            if step.release_locks and not step.skipped and self._epochs:
                self._release(run_id, step)
            if step.skipped:
                unit_id = self._start_unit(run_id, index, step, LOCAL)
                with self.sessions.begin() as s:
                    runs.update_unit(
                        s,
                        unit_id=unit_id,
                        status=UnitStatus.skipped,
                        error=step.skipped,
                        ended_at=_now(),
                    )
                continue
            failure = self._step(run_id, index, step, values)
            if failure and self._fenced is not None:
                return RunStatus.failed, f"stopped in step {step.id}"
            if failure and self.stop.is_set():
                return RunStatus.aborted, f"stopped during step {step.id} ({failure})"
            if failure:
                return RunStatus.failed, f"step {step.id} failed: {failure}"
            if self.stop.is_set():
                return RunStatus.aborted, f"stopped during step {step.id} (it completed)"
        return RunStatus.succeeded, ""

    def _release(self, run_id: int, step: PlannedStep) -> None:
        """Let the locks go for a step that only waits or observes."""
        with self.sessions.begin() as s:
            runs.release_locks(s, run_id=run_id, epochs=self._epochs)
        self._released, self._epochs = self._epochs, {}
        text = (
            f"run {run_id} lets go of the lock of {', '.join(self._released)} while step "
            f"{step.id} waits; other runs may act meanwhile"
        )
        log.info("%s", text)
        self.progress.locks(text)

    def _retake(self, run_id: int, step: PlannedStep) -> None:
        """Take the locks back before `step` acts, waiting up to its timeout; say whether
        other runs held them meanwhile (what they changed is theirs)."""
        released = self._released
        self._acquire(run_id, sorted(released), within=step.timeout)
        shown = ", ".join(f"{s} (epoch {e})" for s, e in sorted(self._epochs.items()))
        others = sorted(s for s, e in self._epochs.items() if e > released[s] + 1)
        meanwhile = f"; other runs held {', '.join(others)} meanwhile" if others else ""
        text = f"run {run_id} holds the lock of {shown} again for step {step.id}{meanwhile}"
        log.info("%s", text)
        self.progress.locks(text)

    def _fence(self) -> str:
        """'' while the run's epochs still hold its locks; else why not (said once, however
        many of a step's units ask at once). A daemon fenced in its cluster changes nothing
        either: another daemon may hold its work by now."""
        if self.member_fence is not None and (problem := self.member_fence()):
            return f"fenced: {problem}"
        with self._fence_lock:
            if self._fenced is None and self._epochs:
                with self.sessions.begin() as s:
                    fenced = runs.fenced(s, run_id=self._run_id, epochs=self._epochs)
                if fenced is not None:
                    self._fenced = fenced
                    text = f"run {self._run_id} fenced: {fenced.reason}; it stops here"
                    log.warning("%s", text)
                    self.progress.locks(text)
        return f"fenced: {self._fenced.reason}" if self._fenced is not None else ""

    def _step(self, run_id: int, index: int, step: PlannedStep, values: dict[str, str]) -> str:
        """'' when the step succeeded, else why it failed."""
        by_target = {u.target: u for u in step.units}
        batches = step.batches or [[u.target for u in step.units]]
        total, errors = len(step.units), []
        for batch in batches:
            units = [by_target[t] for t in batch]
            if len(units) == 1:
                results = [self._unit(run_id, index, step, units[0], values)]
            else:
                with ThreadPoolExecutor(len(units), thread_name_prefix="runbook") as pool:
                    results = list(
                        pool.map(lambda u: self._unit(run_id, index, step, u, values), units)
                    )
            errors += [f"{u.target}: {e}" for u, e in zip(units, results, strict=True) if e]
            if len(errors) * 100 > step.max_fail_percent * total:
                shown = "; ".join(errors[:3]) + (
                    f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
                )
                return f"{len(errors)} of {total} targets failed: {shown}" if total > 1 else shown
            if self.stop.is_set():
                break
        return ""

    def _unit(
        self, run_id: int, index: int, step: PlannedStep, unit: Unit, values: dict[str, str]
    ) -> str:
        """Perform one unit with retries; '' on success, else the last error."""
        unit_id = self._start_unit(run_id, index, step, unit.target)
        self._unit_at.id, self._unit_at.step = unit_id, step.id
        entries: list[dict[str, Any]] = []
        changed, error, attempt = False, "", 0
        for attempt in range(1, step.retries + 2):
            deadline = time.monotonic() + step.timeout
            error = ""
            for op in unit.ops:
                if op.needs is not None and op.needs not in values:
                    continue
                fenced = self._fence() if op.changes else ""
                if fenced:
                    error = fenced
                    break
                if op.changes and not changed:
                    self._save_undo(unit_id, step, unit, values, entries)
                    changed = True
                outcome = self.performer.perform(op, values, deadline)
                if changed and op.saves is not None and outcome.ok:
                    # What the undo needs may have just been read (a new container's id).
                    self._save_undo(unit_id, step, unit, values, entries)
                entries.append(self._entry(op, values, outcome, attempt))
                self.progress.op(unit.target, op, outcome)
                with self.sessions.begin() as s:
                    runs.update_unit(s, unit_id=unit_id, log=list(entries), attempts=attempt)
                if not outcome.ok:
                    error = outcome.text
                    break
                if time.monotonic() > deadline:
                    error = f"timed out after {seconds(step.timeout)}"
                    break
            if not error or attempt > step.retries or self.stop.is_set() or self._fenced:
                break
            if self.stop.wait(step.backoff * 2 ** (attempt - 1)):
                break
        if changed:
            self._save_undo(unit_id, step, unit, values, entries)
        with self.sessions.begin() as s:
            runs.update_unit(
                s,
                unit_id=unit_id,
                status=UnitStatus.failed if error else UnitStatus.ok,
                error=self.redact(error) or None,
                ended_at=_now(),
                attempts=attempt,
            )
        last = entries[-1]["result"] if entries else "nothing to do"
        self.progress.unit(step, unit.target, not error, error or last)
        return error

    def _start_unit(self, run_id: int, index: int, step: PlannedStep, target: str) -> int:
        with self.sessions.begin() as s:
            return runs.start_unit(
                s,
                run_id=run_id,
                index=index,
                step=step.id,
                action=step.action,
                target=target,
                now=_now(),
            )

    def _entry(
        self, op: Op, values: MutableMapping[str, str], outcome: OpOutcome, attempt: int
    ) -> dict[str, Any]:
        sent = resolved(op, values)
        return {
            "at": _now().isoformat(),
            "where": op.where,
            "kind": op.kind,
            "detail": self.redact(sent.detail if sent else op.detail),
            "attempt": attempt,
            "ok": outcome.ok,
            "exit_status": outcome.exit_status,
            "result": self.redact(outcome.text),
            "output": outcome.output,
            "seconds": round(outcome.seconds, 3),
        }

    def _save_undo(
        self,
        unit_id: int,
        step: PlannedStep,
        unit: Unit,
        values: MutableMapping[str, str],
        entries: list[dict[str, Any]],
    ) -> None:
        """Record what reverses the unit, with the values read so far filled in, in its row
        and the journal: the journal first once a change may be out, after the row before
        (no change goes out unless the row holds its undo)."""
        undo_ops = [op for op in (resolved(o, values) for o in unit.undo) if op is not None]
        mine = {op.saves: values[op.saves] for op in unit.ops if op.saves and op.saves in values}
        record = {
            "ops": [_dump(op) for op in undo_ops],
            "values": mine,
            "timeout": step.timeout,
        }
        known = self._journal.get(unit_id)
        if known is not None:
            known.record = record
        with self.sessions.begin() as s:
            runs.update_unit(s, unit_id=unit_id, undo=record)
        if known is None:
            self._journal[unit_id] = _Undo(unit_id, step.id, unit.target, record, entries)

    # --- undo --------------------------------------------------------------------------------
    def _undo_all(self) -> list[str]:
        """Undo every unit of the journal that changed something, newest first; the
        errors, if any. Each row is updated as its unit is put back, unless the database
        failed: then the rows wait for `_finish`. A run fenced meanwhile stops there."""
        errors, database_up = [], True
        for undo in reversed(self._journal.values()):
            self._unit_at.id = undo.unit_id
            deadline = time.monotonic() + float(undo.record.get("timeout", 60.0))
            error = ""
            for op in (_load(d) for d in undo.record.get("ops", [])):
                # Without the database the epoch cannot be read: the undo goes on from memory.
                try:
                    fenced = self._fence() if database_up else ""
                except sa.exc.SQLAlchemyError:
                    database_up, fenced = False, ""
                if fenced:
                    return [*errors, fenced]
                outcome = self.performer.perform(op, {}, deadline)
                undo.log.append({**self._entry(op, {}, outcome, 0), "undo": True})
                self.progress.op(undo.target, op, outcome)
                if not outcome.ok:
                    error = outcome.text
                    break
            undo.status = UnitStatus.undo_failed if error else UnitStatus.undone
            if database_up:
                try:
                    with self.sessions.begin() as s:
                        _record_undo(s, undo)
                    undo.recorded = True
                except sa.exc.SQLAlchemyError as exc:
                    database_up = False  # each try would wait its timeout: record at the end
                    log.error(
                        "run %d: undo of %s not recorded: %s",
                        self._run_id,
                        undo.step,
                        _first_line(exc),  # not the statement: its parameters hold commands
                    )
            self.progress.unit(
                PlannedStep(undo.step, "undo", "", 0, 0, 0),
                undo.target,
                not error,
                error or "put back",
            )
            if error:
                errors.append(f"undo of {undo.step} on {undo.target}: {error}")
        return errors

    # --- endings ----------------------------------------------------------------------------
    def _succeed(self, run_id: int, plan: Plan, values: dict[str, str]) -> RunResult:
        # One transaction with the end: a database failing here leaves no switch recorded
        # for a run that is then undone. The cleanup (a replaced container removed) only
        # after it: until then an undo may still need what it removes.
        with self.sessions.begin() as s:
            for service, pool in plan.switches.items():
                runs.set_pool(s, service=service, pool=pool, run_id=run_id, now=_now())
            runs.finish_run(
                s,
                run_id=run_id,
                status=RunStatus.succeeded,
                reason=None,
                now=_now(),
                epochs=self._epochs,
            )
        self._clean_up(plan, values)
        result = RunResult(run_id, RunStatus.succeeded, None)
        self.progress.finished(result)
        return result

    def _clean_up(self, plan: Plan, values: dict[str, str]) -> None:
        """The units' cleanup now that nothing will be undone (e.g. a replaced container
        removed). A failure leaves something behind, not a broken service: logged only."""
        for step in plan.steps:
            for unit in step.units:
                for op in unit.cleanup:
                    if op.needs is not None and op.needs not in values:
                        continue
                    deadline = time.monotonic() + step.timeout
                    outcome = self.performer.perform(op, values, deadline)
                    self.progress.op(unit.target, op, outcome)
                    if not outcome.ok:
                        log.warning(
                            "run %d: cleanup on %s failed: %s",
                            self._run_id,
                            op.where,
                            self.redact(outcome.text),
                        )

    def _finish(
        self,
        run_id: int,
        status: RunStatus,
        reason: str | None,
        *,
        database_failed: bool = False,
    ) -> RunResult:
        """Record the end (and what undo did that is not recorded yet). A database that
        fails is waited for up to `database_wait`; when it failed mid-run, the hooks tell
        on-call once it answers. If it does not, the log says what happened, loudly."""
        reason = reason and self.redact(reason)
        give_up = time.monotonic() + self.database_wait
        while True:
            pending = [u for u in self._journal.values() if u.status and not u.recorded]
            try:
                with self.sessions.begin() as s:
                    for undo in pending:
                        _record_undo(s, undo)
                    runs.finish_run(
                        s,
                        run_id=run_id,
                        status=status,
                        reason=reason,
                        now=_now(),
                        epochs=self._epochs,
                    )
                    if database_failed:
                        self._tell_database_failed(s, reason or "")
                for undo in pending:
                    undo.recorded = True
                break
            except sa.exc.SQLAlchemyError as exc:
                if time.monotonic() >= give_up:
                    self._unrecorded(run_id, status, reason, exc)
                    reason = f"{reason}; not recorded: the database is still failing"
                    break
                time.sleep(DATABASE_RETRY)  # not self.stop.wait: a stopped run records too
        result = RunResult(run_id, status, reason)
        self.progress.finished(result)
        return result

    def _stop_fenced(self, run_id: int, reason: str) -> RunResult:
        """End a run whose lock was taken over, touching nothing more: what it changed is
        left as it is, for the lock's holder. The run's row is ended `failed` when another
        run holds the lock; a resume of it elsewhere (or the recovery that found it dead)
        owns the row, which is left to them."""
        assert self._fenced is not None
        why = (
            f"fenced: {self._fenced.reason}; {reason}; nothing more undone: what the run "
            "changed is no longer its to put back (`reliability runbook status "
            f"{run_id}` lists it)"
        )
        if self._fenced.by not in (None, run_id):
            return self._finish(run_id, RunStatus.failed, why)
        with self.sessions.begin() as s:
            runs.release_locks(s, run_id=run_id, epochs=self._epochs)
        result = RunResult(run_id, RunStatus.failed, why)
        self.progress.finished(result)
        return result

    def _tell_database_failed(self, session: Session, reason: str) -> None:
        told = self.hooks.database_failed(
            session,
            run_id=self._run_id,
            runbook=self._runbook,
            incident_id=self._incident_id,
            text=f"Runbook run {self._run_id} ({self._runbook}) stopped: {reason}.",
        )
        if not told:
            log.critical("run %d (%s) stopped: %s", self._run_id, self._runbook, reason)

    def _unrecorded(
        self, run_id: int, status: RunStatus, reason: str | None, exc: Exception
    ) -> None:
        """The end of a run that the database would not take: in the log, whole."""
        log.critical(
            "run %d (%s) ended %s but the database does not record it (%s): %s. Its record "
            "still says `running`: the next start marks it interrupted. What it changed is "
            "as this line says; check with `reliability runbook status %d` before any "
            "`runbook undo`.",
            run_id,
            self._runbook,
            status,
            _first_line(exc),
            reason,
            run_id,
        )

    # --- what checks ask of the run (perform.RunContext) ---------------------------------
    def _confirm(self, prompt: str, approval: str, deadline: float) -> OpOutcome:
        if approval == "slack":
            return self._confirm_in_slack(prompt, deadline)
        if approval == "auto" and self._approver is not None:
            return OpOutcome(True, f"approved automatically by {self._approver}")
        if self._ask is None:
            log.warning("confirm step refused, no person to ask: %s", self.redact(prompt))
            return OpOutcome(False, f"not approved: no person to ask (approval: {approval})")
        if self._ask(prompt):
            return OpOutcome(True, "approved at the terminal")
        return OpOutcome(False, "not approved")

    def _confirm_in_slack(self, prompt: str, deadline: float) -> OpOutcome:
        """Ask in the incident's thread and wait, polling, for Approve or Reject up to the
        step's deadline; no answer by then fails closed. Only this run's thread waits."""
        if self._incident_id is None:
            return OpOutcome(False, "not approved: no incident thread to ask in (approval: slack)")
        step = getattr(self._unit_at, "step", "confirm")
        with self.sessions.begin() as s:
            approval_id = self.hooks.ask_approval(
                s,
                run_id=self._run_id,
                step=step,
                incident_id=self._incident_id,
                prompt=self.redact(prompt),
            )
        if approval_id is None:
            return OpOutcome(False, "not approved: nowhere to ask (approval: slack)")
        while time.monotonic() < deadline and not self.stop.is_set():
            with self.sessions() as s:
                decided = _decision(runs.get_approval(s, approval_id=approval_id))
            if decided is not None:
                return decided
            self.stop.wait(min(APPROVAL_POLL, max(0.0, deadline - time.monotonic())))
        with self.sessions.begin() as s:
            now = datetime.now(UTC)
            runs.decide_approval(s, approval_id=approval_id, approved=False, by=None, now=now)
            decided = _decision(runs.get_approval(s, approval_id=approval_id))
        if decided is not None and decided.ok:  # decided just before the timeout
            return decided
        return OpOutcome(False, "not approved: nobody answered in Slack in time")

    def _note(self, text: str) -> OpOutcome:
        text = self.redact(text)
        if self._incident_id is None:
            return OpOutcome(True, f"no incident to post to: {text}")
        with self.sessions.begin() as s:
            posted = self.hooks.add_note(
                s,
                incident_id=self._incident_id,
                by=f"runbook {self._runbook} (run {self._run_id})",
                text=text,
            )
        if not posted:
            return OpOutcome(True, f"no incident timeline to post to: {text}")
        return OpOutcome(True, f"posted to incident {self._incident_id}: {text}")

    def _record_deploy(self, *, service: str, node: str, image: str) -> OpOutcome:
        with self.sessions.begin() as s:
            recorded = self.hooks.record_deploy(
                s, service=service, node=node, image=image, at=_now(), run_id=self._run_id
            )
        if not recorded:
            return OpOutcome(False, f"no images registry to record {image} on {node} in")
        return OpOutcome(True, f"recorded {image} on {node}")

    def _capacity_baseline(self, *, service: str, pool: str) -> CapacityTest | None:
        with self.sessions.begin() as s:
            found = self.hooks.capacity_baseline(s, service=service, pool=pool)
            if found is not None:
                s.expunge(found)
        return found

    def _record_capacity(self, test: CapacityTest) -> None:
        with self.sessions.begin() as s:
            self.hooks.record_capacity(s, test=test)

    def _set_node_state(self, change: SetNodeState) -> OpOutcome:
        """The node's new state and its unit's status go in one transaction: after a crash
        the record says whether the change was made."""
        with self.sessions.begin() as s:
            ok, text = self.hooks.set_node_state(
                s, config=self.config, change=change, run_id=self._run_id, at=_now()
            )
            if ok:
                done = UnitStatus.undone if change.undo else UnitStatus.ok
                runs.update_unit(s, unit_id=self._unit_at.id, status=done)
        return OpOutcome(ok, text)


def _journal(session: Session, run_id: int) -> dict[int, _Undo]:
    """The journal of a run from its rows (to resume or undo it), oldest first."""
    return {
        u.id: _Undo(u.id, u.step, u.target, u.undo or {}, list(u.log))
        for u in reversed(runs.to_undo(session, run_id=run_id))
    }


def _record_undo(session: Session, undo: _Undo) -> None:
    runs.update_unit(
        session, unit_id=undo.unit_id, status=undo.status, log=list(undo.log), undo=undo.record
    )


def _decision(asked: RunbookApproval | None) -> OpOutcome | None:
    """What a decided question means for its confirm step; None while undecided."""
    if asked is None or asked.decided_at is None or asked.decided_by is None:
        return None
    if asked.approved:
        return OpOutcome(True, f"approved in Slack by {asked.decided_by}")
    return OpOutcome(False, f"not approved: rejected in Slack by {asked.decided_by}")


def _first_line(exc: Exception) -> str:
    """An exception in a line: drivers' messages run on with SQL and links."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[0]}" if text else type(cause).__name__


def _dump(op: Op) -> dict[str, Any]:
    check = op.check
    return {
        "where": op.where,
        "kind": op.kind,
        "detail": op.detail,
        "stdin": op.stdin if isinstance(op.stdin, str) else None,
        "note": op.note,
        "check": None
        if check is None
        else {"type": type(check).__name__, **dataclasses.asdict(check)},
    }


def _load(data: dict[str, Any]) -> Op:
    check = data.get("check")
    if check is not None:
        fields = dict(check)
        check = REGISTRY.check(fields.pop("type"))(**fields)
    return Op(
        data["where"],
        data["kind"],
        data["detail"],
        stdin=data.get("stdin"),
        note=data.get("note", ""),
        check=check,
    )
