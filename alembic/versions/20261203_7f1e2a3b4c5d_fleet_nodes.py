"""fleet_nodes: each node's live state

Revision ID: 7f1e2a3b4c5d
Revises: 5e7a13c4b9d2
Create Date: 2026-12-03 13:00:00.000000

The table starts empty; the first reader seeds it from the config (fleet/service.py).
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "7f1e2a3b4c5d"
down_revision: str | Sequence[str] | None = "5e7a13c4b9d2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATES = ("serving", "standby", "warm-standby", "out", "repair")


def upgrade() -> None:
    op.create_table(
        "fleet_nodes",
        sa.Column("node", sa.String(length=64), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                *STATES, name="node_state", native_enum=False, create_constraint=True, length=16
            ),
            nullable=False,
        ),
        sa.Column("service", sa.String(length=64), nullable=True),
        sa.Column("pool", sa.String(length=64), nullable=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("by", sa.String(length=255), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runbook_runs.id"],
            name=op.f("fk_fleet_nodes_run_id_runbook_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("node", name=op.f("pk_fleet_nodes")),
    )


def downgrade() -> None:
    op.drop_table("fleet_nodes")
