"""`fleet_nodes`: what each node of the fleet does now, and since when, by whom and why.

The config gives the first picture (a node's `role` and `pool`); from then on the table is
the truth: a failover marks the failed node `out` and its standby `serving` the failed
node's pool, in the run that does it, and the run's undo puts both back. Nodes outside the
fleet (the balancer's, `other`) have no row.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from reliability.db import Base, UTCDateTime, string_enum


class State(StrEnum):
    """config.NodeState as the table stores it."""

    serving = "serving"
    standby = "standby"
    warm_standby = "warm-standby"
    out = "out"
    repair = "repair"


FREE = (State.warm_standby, State.standby)  # a failover takes the first free one, warm first


class FleetNode(Base):
    __tablename__ = "fleet_nodes"

    node: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    state: Mapped[State] = mapped_column(string_enum(State, "node_state"))
    # The service and pool it serves (serving); the last ones it served (out, repair); none
    # for a standby.
    service: Mapped[str | None] = mapped_column(sa.String(64))
    pool: Mapped[str | None] = mapped_column(sa.String(64))
    since: Mapped[datetime] = mapped_column(UTCDateTime)
    # "config" (seeded), a runbook run ("run 12"), or the operator who changed it.
    by: Mapped[str] = mapped_column(sa.String(255))
    run_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("runbook_runs.id", ondelete="SET NULL")
    )
    reason: Mapped[str | None] = mapped_column(sa.Text)

    def __repr__(self) -> str:
        return f"<FleetNode {self.node} {self.state} {self.pool}>"
