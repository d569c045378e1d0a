"""The daemon's detection thread: evaluate the rules over the snapshot, record the
transitions as incidents.

Every tick (half a second), at once when woken (`wake()`: the liveness probe saw a port
change state), and at the moment a pending group's `for` runs out, the evaluator reads
what the collectors last published: the tick is not the floor of the latency. Its
firing and resolved transitions are recorded in one transaction by `detect/flows.py`
(dedupe, reopen window, timeline, and the outbox rows of their notifications).

Given the daemon's `BatchWriter` (`writer.py`), a tick's transitions are written by its
thread, in a transaction shared with the webhooks that arrive meanwhile (on SQLite, one
writer in the process instead of two waiting on each other's lock); the tick still waits
for its commit. Nothing is lost while the database is down: transitions that could not be
recorded are kept, in order, and recorded first at the next tick that reaches the database. Rule
incidents open before a restart are handed to the evaluator (`restore`) before its first
evaluation, so they resolve when their condition clears instead of staying open forever.

With several daemons (cluster/), `rebalance(keep)` hands the groups of targets that moved
away to their new owner (forgotten here, never resolved) and restores what is open again,
so a target that moved here keeps its open incident; while `gate` names a problem (the
member is fenced) nothing is evaluated or recorded. Groups pending their `for` are in the
shared database too (`pending_alerts`, written with the transitions, only when a group
starts pending, fires or clears): the member that takes a target over resumes its timer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

import sqlalchemy as sa
from sqlalchemy.orm import Session

from reliability import db
from reliability.collect.snapshot import Snapshot
from reliability.detect import service as pending_service
from reliability.detect.evaluator import Evaluator, PendingGroup, Transition
from reliability.detect.flows import open_rule_fingerprints, record_transitions
from reliability.incidents import service
from reliability.writer import BatchWriter, WriterBusy, WriterClosed

log = logging.getLogger("reliability.detect")

TICK = 0.5
DUE_SLACK = 0.002  # past a pending group's due time, so its step sees it run out
# Transitions kept while the database is down. A flapping fleet during a long outage must
# not grow memory without bound: beyond this the oldest are dropped, and the log says so.
MAX_UNRECORDED = 10_000
# A pending entry older than every rule's `for` by this much is dropped at a restore: its
# rule or target left the config (an entry of a live group fires or clears long before).
STALE_PENDING = 3600.0


class DetectionLoop:
    """Evaluate and record on a thread; `step()` does one tick (tests call it directly)."""

    def __init__(
        self,
        evaluator: Evaluator,
        snapshot: Snapshot,
        database: db.LazyEngine,
        *,
        reopen_window: float,
        on_recorded: Callable[[], object] | None = None,
        on_firing: Callable[[Transition], object] | None = None,
        clock: Callable[[], float] = time.time,
        writer: BatchWriter | None = None,
        gate: Callable[[], str | None] | None = None,
        member: str | None = None,
    ) -> None:
        self._evaluator = evaluator
        self._gate = gate
        self._member = member
        self._rebalanced: Callable[[Mapping[str, str]], bool] | None = None
        self._owns: Callable[[Mapping[str, str]], bool] = lambda _labels: True
        self._keep_lock = threading.Lock()
        self._snapshot = snapshot
        self._database = database
        self._reopen_window = reopen_window
        self._on_recorded = on_recorded
        self._on_firing = on_firing
        self._clock = clock
        self._writer = writer
        self._restored = False
        self._unrecorded: list[Transition] = []
        self._pending_writes: dict[str, PendingGroup | None] = {}  # kept like `_unrecorded`
        self._db_problem: str | None = None  # logged once when it starts, not every tick
        self._generation: int | None = None  # of the snapshot last evaluated
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def unrecorded(self) -> int:
        """Transitions waiting for the database."""
        return len(self._unrecorded)

    def rebalance(self, keep: Callable[[Mapping[str, str]], bool]) -> None:
        """The member's share changed: at the next tick, forget the groups `keep` refuses
        and restore the open incidents again (any thread may call this)."""
        with self._keep_lock:
            self._rebalanced = keep

    def _apply_rebalance(self) -> None:
        with self._keep_lock:
            keep, self._rebalanced = self._rebalanced, None
        if keep is None:
            return
        self._owns = keep
        dropped = self._evaluator.release(keep)
        if dropped:
            log.info("%d rule group(s) left to the daemons that now watch their targets", dropped)
        self._unrecorded = [t for t in self._unrecorded if keep(t.labels)]
        self._restored = False

    def step(self) -> list[Transition]:
        """One tick: restore (once, and after a rebalance), evaluate, record. Returns this
        tick's transitions."""
        if self._gate is not None and self._gate() is not None:
            return []
        self._apply_rebalance()
        try:
            if not self._restored:
                with self._database.session() as session, session.begin():
                    opened = open_rule_fingerprints(session)
                    # Far past every `for`: a rule or target removed from the config.
                    stale = self._evaluator.longest_for + STALE_PENDING
                    pending_service.prune(session, older_than=stale)
                    pending = pending_service.pending(session)
                now = self._clock()
                self._evaluator.restore(
                    opened, {p.fingerprint: now - p.age for p in pending if self._owns(p.labels)}
                )
                self._restored = True
                self._database_up()
        except (db.DatabaseError, sa.exc.SQLAlchemyError) as exc:
            self._database_down(f"rules not evaluated: database unavailable ({_short(exc)})")
            return []
        generation = self._snapshot.generation
        if generation == self._generation and self._evaluator.idle():
            new = []  # the healthy steady state between collections: nothing to read
        else:
            self._generation = generation
            new = self._evaluator.evaluate(self._snapshot.by_metric(), self._clock())
            self._pending_writes.update(self._evaluator.pending_changes())
        self._keep(new)
        if self._unrecorded or self._pending_writes:
            self._flush()
        return new

    def _keep(self, new: list[Transition]) -> None:
        self._unrecorded.extend(new)
        dropped = len(self._unrecorded) - MAX_UNRECORDED
        if dropped > 0:
            del self._unrecorded[:dropped]
            log.error("database down too long: dropped the %d oldest rule transitions", dropped)

    def _flush(self) -> None:
        pending = list(self._unrecorded)
        writes, self._pending_writes = self._pending_writes, {}
        try:
            self._record(pending, writes)
        except (WriterBusy, WriterClosed) as exc:
            self._pending_writes = {**writes, **self._pending_writes}
            self._database_down(f"rule transitions kept until the writer takes them ({exc})")
            return
        except (db.DatabaseError, sa.exc.SQLAlchemyError) as exc:
            self._pending_writes = {**writes, **self._pending_writes}
            self._database_down(
                f"rule transitions kept until the database is back: unavailable ({_short(exc)})"
            )
            return
        except service.IncidentError as exc:
            # Not the database being away: retrying the same batch would fail forever.
            log.error("%d rule transition(s) not recorded: %s", len(pending), exc)
            del self._unrecorded[: len(pending)]
            return
        del self._unrecorded[: len(pending)]
        self._database_up()
        if not pending:
            return
        for t in pending:
            log.info("%s %s: %s", t.kind, t.fingerprint, t.title)
        if self._on_recorded is not None:
            self._on_recorded()
        if self._on_firing is not None:
            for t in pending:
                if t.kind == "firing" and t.runbook_request is not None:
                    self._on_firing(t)

    def _record(self, pending: list[Transition], writes: Mapping[str, PendingGroup | None]) -> None:
        now = self._clock()
        started = [
            pending_service.Pending(g.fingerprint, g.rule, g.labels, max(0.0, now - g.since))
            for g in writes.values()
            if g is not None
        ]
        ended = [fp for fp, g in writes.items() if g is None]

        def work(session: Session) -> None:
            record_transitions(session, transitions=pending, reopen_window=self._reopen_window)
            pending_service.save(session, started=started, ended=ended, member_id=self._member)

        if self._writer is not None:
            self._writer.submit(work).result()
            return
        with self._database.session() as session, session.begin():
            work(session)

    def _database_down(self, problem: str) -> None:
        if problem != self._db_problem:
            log.warning(problem)
            self._db_problem = problem

    def _database_up(self) -> None:
        if self._db_problem is not None:
            log.warning("database back: rule transitions recorded again")
            self._db_problem = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="detect", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Evaluate now rather than at the next tick (any thread may call it)."""
        self._wake.set()

    def _run(self) -> None:
        while True:
            # A group held past its `for` (stale data) has a due time behind us: tick then.
            due, now = self._evaluator.next_due(), self._clock()
            wait = TICK if due is None or due <= now else min(TICK, due - now + DUE_SLACK)
            self._wake.wait(wait)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.step()
            except Exception:
                log.exception("rule evaluation failed; trying again next tick")

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200]
