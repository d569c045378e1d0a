"""capacity_tests: each load test of a pool and what it held

Revision ID: a4b7c9d1e2f3
Revises: 4b7e9d1c2a35
Create Date: 2026-12-03 15:40:00.000000

The newest held `baseline` test of a pool is its baseline (capacity/service.py).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from alembic import op

revision: str = "a4b7c9d1e2f3"
down_revision: str | Sequence[str] | None = "4b7e9d1c2a35"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "capacity_tests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("service", sa.String(length=64), nullable=False),
        sa.Column("pool", sa.String(length=64), nullable=False),
        sa.Column(
            "purpose",
            sa.Enum(
                "baseline",
                "gate",
                name="capacity_purpose",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("by", sa.String(length=255), nullable=False),
        sa.Column("nodes", sa.Integer(), nullable=False),
        sa.Column("held", sa.Boolean(), nullable=False),
        sa.Column("users", sa.Integer(), nullable=False),
        sa.Column("qps", sa.Float(), nullable=False),
        sa.Column("tokens_per_s", sa.Float(), nullable=False),
        sa.Column("ttft_p50_s", sa.Float(), nullable=True),
        sa.Column("ttft_p95_s", sa.Float(), nullable=True),
        sa.Column("e2e_p95_s", sa.Float(), nullable=True),
        sa.Column("error_ratio", sa.Float(), nullable=False),
        sa.Column("prompt_tokens", sa.Float(), nullable=False),
        sa.Column("completion_tokens", sa.Float(), nullable=False),
        sa.Column("gpu_power_watts", sa.Float(), nullable=True),
        sa.Column("steps", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_capacity_tests")),
    )
    op.create_index(
        "ix_capacity_tests_service_pool_at",
        "capacity_tests",
        ["service", "pool", "finished_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_capacity_tests_service_pool_at", table_name="capacity_tests")
    op.drop_table("capacity_tests")
