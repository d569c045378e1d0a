"""Database work of runbook runs: create and end runs, per-service locks with their fencing
epochs, the audit rows of each unit, heartbeats, and finding runs a dead process left
`running`.

Each function takes the caller's session, then keyword arguments only, and commits
nothing; the executor writes in short transactions of its own so a crash loses at most the
operation in flight. Errors are the domain's (`errors.py`): Locked, NoSuchRun.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from reliability.runbooks.errors import Locked, NoSuchRun
from reliability.runbooks.models import (
    FINISHED,
    RunbookApproval,
    RunbookLock,
    RunbookRun,
    RunbookStep,
    RunStatus,
    ServicePool,
    UnitStatus,
)

# A run whose heartbeat is older than this is taken for dead, wherever it ran.
STALE_AFTER = timedelta(seconds=60)
HOST = socket.gethostname()


@dataclass(frozen=True, slots=True)
class Interrupted:
    run_id: int
    runbook: str
    step: str | None
    reason: str


def create_run(
    session: Session,
    *,
    runbook: str,
    params: dict[str, str],
    services: Sequence[str],
    started_by: str,
    incident_id: int | None,
    now: datetime,
) -> RunbookRun:
    run = RunbookRun(
        runbook=runbook,
        params=params,
        services=list(services),
        status=RunStatus.running,
        started_by=started_by,
        incident_id=incident_id,
        host=HOST,
        pid=os.getpid(),
        heartbeat_at=now,
        started_at=now,
    )
    session.add(run)
    session.flush()
    return run


def take_over(session: Session, *, run: RunbookRun, now: datetime) -> None:
    """This process now runs `run` (resume, undo): its heartbeat is ours."""
    run.host, run.pid, run.heartbeat_at = HOST, os.getpid(), now
    run.status, run.ended_at = RunStatus.running, None


def acquire_locks(
    session: Session, *, run: RunbookRun, services: Sequence[str], now: datetime
) -> dict[str, int]:
    """Lock every service of the run, or raise Locked naming the run that holds one. A lock
    whose run ended or died is taken over. Each acquisition (a take-over by a resume of the
    same run too) gets the lock's next epoch; returns them by service, for `fenced`."""
    epochs = {}
    for service in sorted(set(services)):
        held = session.get(RunbookLock, service, with_for_update=True)
        if held is not None and held.run_id not in (None, run.id):
            holder = session.get(RunbookRun, held.run_id)
            if holder is not None and holder.status == RunStatus.running and not _dead(holder, now):
                raise Locked(
                    f"service {service} is locked by run {holder.id} ({holder.runbook}, "
                    f"started by {holder.started_by} at {holder.started_at:%H:%M:%SZ}, "
                    f"now at step {holder.step or 'start'})"
                )
        if held is None:
            held = RunbookLock(service=service, epoch=0)
            session.add(held)
        held.run_id, held.epoch, held.acquired_at = run.id, held.epoch + 1, now
        session.flush()
        epochs[service] = held.epoch
    return epochs


def release_locks(
    session: Session, *, run_id: int, epochs: Mapping[str, int] | None = None
) -> None:
    """Free the locks `run_id` holds; with `epochs`, only those it holds at those epochs
    (a run whose lock went to a resume of itself elsewhere frees nothing of it)."""
    statement = sa.update(RunbookLock).where(RunbookLock.run_id == run_id)
    if epochs is not None:
        held = [
            sa.and_(RunbookLock.service == service, RunbookLock.epoch == epoch)
            for service, epoch in epochs.items()
        ]
        statement = statement.where(sa.or_(sa.false(), *held))
    session.execute(statement.values(run_id=None))


@dataclass(frozen=True, slots=True)
class Fenced:
    """Why a run no longer holds its locks; `by`: the run that holds one now (the same
    run id when a resume elsewhere took it over), None when it is free."""

    reason: str
    by: int | None


def fenced(session: Session, *, run_id: int, epochs: Mapping[str, int]) -> Fenced | None:
    """None while `run_id` holds every lock in `epochs` at its epoch; else why not."""
    for service, epoch in sorted(epochs.items()):
        held = session.get(RunbookLock, service)
        if held is not None and held.run_id == run_id and held.epoch == epoch:
            continue
        if held is None or held.run_id is None:
            return Fenced(f"lock of {service} freed: the run was taken for dead", None)
        if held.run_id == run_id:
            return Fenced(
                f"lock of {service} taken over by run {run_id} resumed elsewhere "
                f"(epoch {held.epoch}, ours {epoch})",
                run_id,
            )
        return Fenced(f"lock of {service} taken over by run {held.run_id}", held.run_id)
    return None


def heartbeat(session: Session, *, run_id: int, now: datetime, step: str | None = None) -> None:
    values: dict[str, Any] = {"heartbeat_at": now}
    if step is not None:
        values["step"] = step
    session.execute(sa.update(RunbookRun).where(RunbookRun.id == run_id).values(**values))


def finish_run(
    session: Session,
    *,
    run_id: int,
    status: RunStatus,
    reason: str | None,
    now: datetime,
    epochs: Mapping[str, int] | None = None,
) -> None:
    """End the run and free its locks (with `epochs`: those it holds at those epochs)."""
    session.execute(
        sa.update(RunbookRun)
        .where(RunbookRun.id == run_id)
        .values(status=status, reason=reason, ended_at=now, heartbeat_at=now)
    )
    release_locks(session, run_id=run_id, epochs=epochs)


def start_unit(
    session: Session, *, run_id: int, index: int, step: str, action: str, target: str, now: datetime
) -> int:
    unit = RunbookStep(
        run_id=run_id,
        step=step,
        step_index=index,
        action=action,
        target=target,
        status=UnitStatus.running,
        started_at=now,
        log=[],
    )
    session.add(unit)
    session.flush()
    return unit.id


def update_unit(session: Session, *, unit_id: int, **values: Any) -> None:
    """Set `values` (columns of the unit's row)."""
    session.execute(sa.update(RunbookStep).where(RunbookStep.id == unit_id).values(**values))


def get_run(session: Session, *, run_id: int) -> RunbookRun:
    """The run `run_id`; NoSuchRun when there is none."""
    run = session.get(RunbookRun, run_id)
    if run is None:
        raise NoSuchRun(f"no runbook run {run_id}")
    return run


def units(session: Session, *, run_id: int) -> list[RunbookStep]:
    """The audit rows of a run, in the order they started."""
    return list(
        session.scalars(
            sa.select(RunbookStep).where(RunbookStep.run_id == run_id).order_by(RunbookStep.id)
        )
    )


def to_undo(session: Session, *, run_id: int) -> list[RunbookStep]:
    """The units of a run that changed something not yet put back, newest first."""
    return list(
        session.scalars(
            sa.select(RunbookStep)
            .where(
                RunbookStep.run_id == run_id,
                RunbookStep.undo.is_not(None),
                RunbookStep.status.not_in([UnitStatus.undone, UnitStatus.skipped]),
            )
            .order_by(RunbookStep.id.desc())
        )
    )


def saved_values(session: Session, *, run_id: int) -> dict[str, str]:
    """What the run's operations read for later steps (the upstream file before a switch)."""
    values: dict[str, str] = {}
    for unit in units(session, run_id=run_id):
        values.update((unit.undo or {}).get("values", {}))
    return values


def history(session: Session, *, service: str | None = None, limit: int = 20) -> list[RunbookRun]:
    """The newest runs, those that locked `service` when given. The service filter reads
    rows newest first and stops at `limit` (the services list is JSON on both backends)."""
    query = sa.select(RunbookRun).order_by(RunbookRun.id.desc())
    if service is None:
        return list(session.scalars(query.limit(limit)))
    picked: list[RunbookRun] = []
    for run in session.scalars(query.execution_options(yield_per=100)):
        if service in run.services:
            picked.append(run)
            if len(picked) >= limit:
                break
    return picked


def unended(session: Session) -> list[RunbookRun]:
    """Runs not ended, newest first: running, or interrupted and undo_failed (waiting for
    `runbook resume` or `runbook undo`), however old."""
    statement = sa.select(RunbookRun).where(RunbookRun.status.not_in(FINISHED))
    return list(session.scalars(statement.order_by(RunbookRun.id.desc())))


def active_pools(session: Session) -> dict[str, str]:
    """The pool each service serves from, where a run switched it."""
    rows = session.execute(sa.select(ServicePool.service, ServicePool.pool))
    return {service: pool for service, pool in rows}


def set_pool(session: Session, *, service: str, pool: str, run_id: int, now: datetime) -> None:
    """`service` serves from `pool` from now on, as run `run_id` left it."""
    row = session.get(ServicePool, service)
    if row is None:
        session.add(ServicePool(service=service, pool=pool, run_id=run_id, changed_at=now))
    else:
        row.pool, row.run_id, row.changed_at = pool, run_id, now


def recover_interrupted(session: Session, *, now: datetime) -> list[Interrupted]:
    """Mark runs left `running` by a process that is gone `interrupted`, release their
    locks, and say what each reached."""
    found = []
    running = session.scalars(sa.select(RunbookRun).where(RunbookRun.status == RunStatus.running))
    for run in running:
        if not _dead(run, now):
            continue
        reason = (
            f"the process running it (pid {run.pid} on {run.host}) stopped during step "
            f"{run.step or 'start'}; `reliability runbook resume {run.id}` completes it, "
            f"`reliability runbook undo {run.id}` reverses it"
        )
        run.status, run.reason, run.ended_at = RunStatus.interrupted, reason, now
        release_locks(session, run_id=run.id)
        found.append(Interrupted(run.id, run.runbook, run.step, reason))
    session.flush()
    return found


def _dead(run: RunbookRun, now: datetime) -> bool:
    if run.host == HOST and run.pid != os.getpid() and not _alive(run.pid):
        return True
    return now - run.heartbeat_at > STALE_AFTER


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _state(pid) != "Z"


def _state(pid: int) -> str:
    """A process's state letter (Z: a zombie, dead but not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def ask_approval(
    session: Session, *, run_id: int, step: str, incident_id: int, prompt: str, now: datetime
) -> RunbookApproval:
    """Record a confirm step's question, undecided."""
    approval = RunbookApproval(
        run_id=run_id, step=step, incident_id=incident_id, prompt=prompt, asked_at=now
    )
    session.add(approval)
    session.flush()
    return approval


def decide_approval(
    session: Session, *, approval_id: int, approved: bool, by: str | None, now: datetime
) -> bool:
    """Decide the question once: False when it was decided already (by someone, or by its
    timeout with `by` None). A compare-and-set, so two clicks at once decide it once."""
    decided = session.execute(
        sa.update(RunbookApproval)
        .where(RunbookApproval.id == approval_id, RunbookApproval.decided_at.is_(None))
        .values(decided_at=now, decided_by=by, approved=approved)
        .returning(RunbookApproval.id)
    ).scalar()
    return decided is not None


def get_approval(session: Session, *, approval_id: int) -> RunbookApproval | None:
    return session.get(RunbookApproval, approval_id, populate_existing=True)
