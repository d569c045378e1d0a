"""Runbooks the daemon runs on its own when an incident opens.

A firing rule's runbook runs when the rule says `auto: true` or the service it would touch
lists the runbook in `auto_runbooks`; at most one automatic run per service per
`auto_cooldown`. Runs go on worker threads (a few at once: a failover waiting hours for a
hosted API to recover must not hold back another service's), so detection never waits on
a runbook; automatic runs on one service take turns. The incident's
Slack thread hears the start, each failed step and the end (as timeline notes, through the
outbox); a run that cannot start says why there too. Without `auto`, nothing runs: the
Slack message shows the command to paste.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from reliability import db
from reliability.config import Config, ServiceConfig
from reliability.config_load import ConfigError
from reliability.detect.engine import Transition
from reliability.detect.render import RunbookRequest
from reliability.incidents import service as incidents
from reliability.runbooks import params as params_mod
from reliability.runbooks import service as runs
from reliability.runbooks.engine import Engine, Progress, RunResult
from reliability.runbooks.load import load_runbooks
from reliability.runbooks.models import RunbookRun
from reliability.runbooks.plan import Plan, PlanError, PlannedStep
from reliability.ssh import SshPool

log = logging.getLogger(__name__)
ACTOR = "daemon"
QUEUE_LIMIT = 64
WORKERS = 4


class _SlackThread(Progress):
    """Progress as notes on the incident's timeline: Slack posts them in its thread."""

    def __init__(self, runner: AutoRunner, incident_id: int | None, name: str) -> None:
        self.runner, self.incident_id, self.name = runner, incident_id, name

    def started(self, run_id: int, plan: Plan) -> None:
        given = " ".join(f"{k}={v}" for k, v in plan.params.items())
        self.runner.note(
            self.incident_id,
            f"Running runbook {self.name} {given} on its own (run {run_id}); "
            f"`reliability runbook status {run_id}` shows every command.",
        )

    def unit(self, step: PlannedStep, target: str, ok: bool, text: str) -> None:
        if not ok:
            self.runner.note(self.incident_id, f"Step {step.id} failed on {target}: {text}")

    def finished(self, result: RunResult) -> None:
        tail = f": {result.reason}" if result.reason else "."
        self.runner.note(self.incident_id, f"Runbook run {result.run_id} {result.status}{tail}")


class AutoRunner:
    """Takes firing transitions (`submit`), runs the allowed ones one at a time."""

    def __init__(self, config: Config, database: db.LazyEngine, ssh: SshPool) -> None:
        self.config, self.database, self.ssh = config, database, ssh
        self._queue: queue.Queue[Transition | None] = queue.Queue(QUEUE_LIMIT)
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._service_locks: dict[str, threading.Lock] = {}
        self._threads = [
            threading.Thread(target=self._work, name=f"runbooks-{i}", daemon=True)
            for i in range(WORKERS)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Running runs finish their step and undo themselves (they end `aborted`)."""
        self._stop.set()
        for _ in self._threads:  # wakes the workers waiting for work
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.ssh.close()

    def submit(self, transition: Transition) -> None:
        try:
            self._queue.put_nowait(transition)
        except queue.Full:
            log.error("runbook queue full: %s not considered", transition.fingerprint)

    def note(self, incident_id: int | None, text: str) -> None:
        if incident_id is None:
            log.info("runbook: %s", text)
            return
        try:
            with self.database.session() as s, s.begin():
                incidents.add_note(s, incident_id=incident_id, by="reliability runbooks", text=text)
        except (db.DatabaseError, sa.exc.SQLAlchemyError) as exc:
            log.warning("runbook note not recorded on incident %d: %s", incident_id, exc)

    def _work(self) -> None:
        while not self._stop.is_set():
            transition = self._queue.get()
            if transition is None or self._stop.is_set():
                return
            try:
                self._consider(transition)
            except Exception:
                log.exception("automatic runbook for %s failed", transition.fingerprint)

    def _consider(self, t: Transition) -> None:
        request = t.runbook_request
        assert request is not None
        with self.database.session() as s:
            found = incidents.get_open_by_fingerprint(s, fingerprint=t.fingerprint)
            incident_id = found.id if found is not None else None
        engine = Engine(self.config, self.database.get(), ssh=self.ssh, stop=self._stop)
        try:
            self._maybe_run(engine, request, incident_id)
        finally:
            engine.close()

    def _maybe_run(self, engine: Engine, request: RunbookRequest, incident_id: int | None) -> None:
        try:
            book = load_runbooks(self.config).get(request.name)
            if book is None:
                raise PlanError(f"no runbook {request.name!r} in {self.config.runbooks_dir}")
            values = params_mod.resolve(book, request.params, self.config)
            plan = engine.plan(book, values)
        except (ConfigError, params_mod.ParamError, PlanError) as exc:
            if request.auto:
                self.note(incident_id, f"Runbook {request.name} cannot run on its own: {exc}")
            return
        services = [s for s in self.config.services if s.name in plan.locks]
        if not (request.auto or any(request.name in s.auto_runbooks for s in services)):
            return  # the Slack message shows the command; a person decides
        with self._serialized(plan.locks) as turn:
            if not turn:
                return  # stopping
            recent = self._recent_auto_run(services)
            if recent is not None:
                self.note(
                    incident_id,
                    f"Runbook {request.name} not run on its own: run {recent.id} "
                    f"({recent.runbook}, {recent.status}) started at "
                    f"{recent.started_at:%H:%M:%SZ}, within the service's auto_cooldown. "
                    f"Run it by hand if it is still needed: `{request.command}`",
                )
                return
            engine.progress = _SlackThread(self, incident_id, request.name)
            try:
                # Planned again: an automatic run before this one may have moved the pool.
                engine.run(book, values, actor=ACTOR, incident_id=incident_id)
            except (runs.Locked, params_mod.ParamError, PlanError) as exc:
                self.note(incident_id, f"Runbook {request.name} not run on its own: {exc}")

    @contextlib.contextmanager
    def _serialized(self, services: list[str]) -> Iterator[bool]:
        """Automatic runs on one service take turns (runs on other services go on); yields
        False when the daemon stops while this one waits."""
        with self._mutex:
            locks = [self._service_locks.setdefault(s, threading.Lock()) for s in sorted(services)]
        held: list[threading.Lock] = []
        try:
            for lock in locks:
                while not lock.acquire(timeout=1.0):
                    if self._stop.is_set():
                        yield False
                        return
                held.append(lock)
            yield not self._stop.is_set()
        finally:
            for lock in reversed(held):
                lock.release()

    def _recent_auto_run(self, services: list[ServiceConfig]) -> RunbookRun | None:
        now = datetime.now(UTC)
        with self.database.session() as s:
            for service in services:
                since = now - timedelta(seconds=service.auto_cooldown)
                for run in runs.history(s, service=service.name, limit=50):
                    if run.started_by == ACTOR and run.started_at >= since:
                        return run
        return None
