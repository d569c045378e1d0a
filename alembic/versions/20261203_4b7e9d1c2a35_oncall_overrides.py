"""oncall_overrides: who covers a rotation, and when

Revision ID: 4b7e9d1c2a35
Revises: 8c2d4e6f7a81
Create Date: 2026-12-03 16:00:00.000000

The rotations themselves live in the config (`oncall.rotations`); only overrides are rows.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "4b7e9d1c2a35"
down_revision: str | Sequence[str] | None = "8c2d4e6f7a81"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "oncall_overrides",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rotation", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancelled_by", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oncall_overrides")),
    )
    op.create_index(
        "ix_oncall_overrides_rotation_ends_at", "oncall_overrides", ["rotation", "ends_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_oncall_overrides_rotation_ends_at", table_name="oncall_overrides")
    op.drop_table("oncall_overrides")
