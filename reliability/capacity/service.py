"""Capacity tests (database only): record one, read a pool's baseline and history."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from reliability.capacity.models import CapacityTest, Purpose


def record(session: Session, *, test: CapacityTest) -> CapacityTest:
    session.add(test)
    session.flush()
    return test


def baseline(
    session: Session, *, service: str, pool: str, before: int | None = None
) -> CapacityTest | None:
    """The pool's newest baseline test that held a load (older than test `before`)."""
    query = sa.select(CapacityTest).where(
        CapacityTest.service == service,
        CapacityTest.pool == pool,
        CapacityTest.purpose == Purpose.baseline,
        CapacityTest.held.is_(True),
    )
    if before is not None:
        query = query.where(CapacityTest.id < before)
    return session.scalars(query.order_by(CapacityTest.id.desc()).limit(1)).first()


def baselines(session: Session, *, service: str | None = None) -> list[CapacityTest]:
    """Each pool's baseline (of `service`, or of every service), by service and pool."""
    newest = (
        sa.select(sa.func.max(CapacityTest.id))
        .where(CapacityTest.purpose == Purpose.baseline, CapacityTest.held.is_(True))
        .group_by(CapacityTest.service, CapacityTest.pool)
    )
    if service is not None:
        newest = newest.where(CapacityTest.service == service)
    query = sa.select(CapacityTest).where(CapacityTest.id.in_(newest))
    return list(session.scalars(query.order_by(CapacityTest.service, CapacityTest.pool)))


def history(session: Session, *, service: str, pool: str, limit: int = 20) -> list[CapacityTest]:
    query = (
        sa.select(CapacityTest)
        .where(CapacityTest.service == service, CapacityTest.pool == pool)
        .order_by(CapacityTest.id.desc())
        .limit(limit)
    )
    return list(session.scalars(query))
