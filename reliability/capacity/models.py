"""`capacity_tests`: every load test of a pool, and what it held within the service's
objectives. The newest `baseline` test of a pool is its baseline; `gate` tests (a short one
before a switch) are kept for the record but never become the baseline."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from reliability.db import JSON, Base, UTCDateTime, string_enum


class Purpose(StrEnum):
    baseline = "baseline"
    gate = "gate"


class CapacityTest(Base):
    __tablename__ = "capacity_tests"
    __table_args__ = (
        sa.Index("ix_capacity_tests_service_pool_at", "service", "pool", "finished_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    service: Mapped[str] = mapped_column(sa.String(64))
    pool: Mapped[str] = mapped_column(sa.String(64))
    purpose: Mapped[Purpose] = mapped_column(string_enum(Purpose, "capacity_purpose"))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)
    by: Mapped[str] = mapped_column(sa.String(255))
    nodes: Mapped[int] = mapped_column(sa.Integer)  # how many nodes took the load
    # The best step within the objectives (qps 0 and the rest None: no step held).
    held: Mapped[bool] = mapped_column(sa.Boolean)
    users: Mapped[int] = mapped_column(sa.Integer)
    qps: Mapped[float] = mapped_column(sa.Float)
    tokens_per_s: Mapped[float] = mapped_column(sa.Float)
    ttft_p50_s: Mapped[float | None] = mapped_column(sa.Float)
    ttft_p95_s: Mapped[float | None] = mapped_column(sa.Float)
    e2e_p95_s: Mapped[float | None] = mapped_column(sa.Float)
    error_ratio: Mapped[float] = mapped_column(sa.Float)
    prompt_tokens: Mapped[float] = mapped_column(sa.Float)  # per request, as billed
    completion_tokens: Mapped[float] = mapped_column(sa.Float)
    gpu_power_watts: Mapped[float | None] = mapped_column(sa.Float)  # the pool's, measured
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
