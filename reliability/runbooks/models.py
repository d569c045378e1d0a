"""Runbook tables: every run, every unit of work it did, the per-service locks, and the
pool each service serves from now.

`runbook_steps` is the audit trail and the memory of a run at once: a row per step and
target, written before the first command goes out, holding the commands sent, their exit
status and output (redacted), and `undo`: the commands that reverse what the unit changed,
with the values read during the run (the upstream file as it was, the image a container
ran) already filled in. So a run left behind by a crash can be undone by another process
from the rows alone.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from reliability.db import JSON, Base, UTCDateTime, string_enum


class RunStatus(StrEnum):
    running = "running"
    succeeded = "succeeded"
    # A step failed; what the run changed was undone (`undo_failed` when that failed too).
    failed = "failed"
    # SIGINT/SIGTERM: the current step finished, then the run was undone.
    aborted = "aborted"
    # The process died mid-run; found by the next start. `resume` or `undo` ends it.
    interrupted = "interrupted"
    undone = "undone"
    undo_failed = "undo_failed"


FINISHED = (RunStatus.succeeded, RunStatus.failed, RunStatus.aborted, RunStatus.undone)


class UnitStatus(StrEnum):
    running = "running"
    ok = "ok"
    failed = "failed"
    skipped = "skipped"
    undone = "undone"
    undo_failed = "undo_failed"


class RunbookRun(Base):
    __tablename__ = "runbook_runs"
    __table_args__ = (sa.Index("ix_runbook_runs_status", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    runbook: Mapped[str] = mapped_column(sa.String(64))
    params: Mapped[dict[str, str]] = mapped_column(JSON)
    services: Mapped[list[str]] = mapped_column(JSON)
    status: Mapped[RunStatus] = mapped_column(string_enum(RunStatus, "run_status"))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    # The step the run was at (its id), for `status` and after a crash.
    step: Mapped[str | None] = mapped_column(sa.String(64))
    started_by: Mapped[str] = mapped_column(sa.String(255))
    incident_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("incidents.id", ondelete="SET NULL"), index=True
    )
    # Who runs it: a run whose process is gone (same host, no such pid) or whose heartbeat
    # stopped is interrupted.
    host: Mapped[str] = mapped_column(sa.String(255))
    pid: Mapped[int]
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"<RunbookRun {self.id} {self.runbook} {self.status}>"


class RunbookStep(Base):
    """One step on one target (or the step's single unit), or one undo of such a unit."""

    __tablename__ = "runbook_steps"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(
        sa.ForeignKey("runbook_runs.id", ondelete="CASCADE"), index=True
    )
    step: Mapped[str] = mapped_column(sa.String(64))
    step_index: Mapped[int]
    action: Mapped[str] = mapped_column(sa.String(32))
    target: Mapped[str] = mapped_column(sa.String(255))
    status: Mapped[UnitStatus] = mapped_column(string_enum(UnitStatus, "unit_status"))
    attempts: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Each operation as sent: {"where", "kind", "detail", "exit_status", "output", "seconds"}.
    log: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(sa.Text)
    # Set once something changed: {"ops": the operations that put it back, values filled in,
    # "values": what its operations read for later steps, "timeout": seconds for the undo}.
    undo: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    def __repr__(self) -> str:
        return f"<RunbookStep {self.id} run={self.run_id} {self.step}@{self.target}>"


class RunbookLock(Base):
    """At most one run per service at a time, across processes and hosts. The row stays
    when the lock is free (`run_id` NULL) so that `epoch` only grows: every acquisition,
    take-over included, increments it, and a run acts only while the epoch it got still
    holds the lock (fencing: a run taken for dead whose lock went to another run, or to a
    resume of itself elsewhere, stops before its next change)."""

    __tablename__ = "runbook_locks"

    service: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    run_id: Mapped[int | None] = mapped_column(sa.ForeignKey("runbook_runs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ServicePool(Base):
    """The pool a service serves from, as the last run that switched it left it. The config's
    `active_pool` holds until a run changes it."""

    __tablename__ = "service_pools"

    service: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    pool: Mapped[str] = mapped_column(sa.String(64))
    run_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("runbook_runs.id", ondelete="SET NULL")
    )
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RunbookApproval(Base):
    """A confirm step's question asked in the incident's Slack thread (`approval: slack`):
    decided once, by the first allowed Approve or Reject, or by the step's timeout (then
    `decided_by` is NULL and `approved` false: it fails closed)."""

    __tablename__ = "runbook_approvals"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runbook_runs.id", ondelete="CASCADE"))
    step: Mapped[str] = mapped_column(sa.String(64))
    incident_id: Mapped[int] = mapped_column()
    prompt: Mapped[str] = mapped_column(sa.Text)
    asked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decided_by: Mapped[str | None] = mapped_column(sa.String(255))
    approved: Mapped[bool | None] = mapped_column()
