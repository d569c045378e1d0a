"""cluster_members and cluster_lease: several daemons on one database

Revision ID: 9d3e5f7a8b92
Revises: b5d1c3e7f902
Create Date: 2026-12-03 15:40:00.000000

Both start empty: a daemon registers itself, and the first to find the lease row missing
creates it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from alembic import op

revision: str = "9d3e5f7a8b92"
down_revision: str | Sequence[str] | None = "b5d1c3e7f902"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "cluster_members",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("incarnation", sa.String(length=32), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("http", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("targets", JSON, nullable=False),
        sa.PrimaryKeyConstraint("member_id", name=op.f("pk_cluster_members")),
    )
    op.create_table(
        "cluster_lease",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=True),
        sa.Column("epoch", sa.Integer(), server_default="0", nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("members", JSON, nullable=True),
        sa.Column("rebalanced_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_cluster_lease")),
    )


def downgrade() -> None:
    op.drop_table("cluster_lease")
    op.drop_table("cluster_members")
