"""maintenance windows, the window that held an outbox row; handled_interactions by age

Revision ID: c7e2a9d4f1b6
Revises: 9d3e5f7a8b92
Create Date: 2026-12-03 19:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "c7e2a9d4f1b6"
down_revision: str | Sequence[str] | None = "9d3e5f7a8b92"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of the model type: a migration must not change when the models do.
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "maintenance_windows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=True),
        sa.Column("targets", JSON, nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_by", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_maintenance_windows")),
    )
    op.create_index("ix_maintenance_windows_ends_at", "maintenance_windows", ["ends_at"])
    # A plain column, as silence_id: SQLite adds it without rebuilding outbox.
    op.add_column("outbox", sa.Column("maintenance_id", sa.Integer(), nullable=True))
    # The leader's timers delete the rows past their retention, oldest first.
    op.create_index("ix_handled_interactions_at", "handled_interactions", ["at"])


def downgrade() -> None:
    op.drop_index("ix_handled_interactions_at", table_name="handled_interactions")
    op.drop_column("outbox", "maintenance_id")
    op.drop_index("ix_maintenance_windows_ends_at", table_name="maintenance_windows")
    op.drop_table("maintenance_windows")
