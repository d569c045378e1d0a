"""pending_alerts: rule groups pending their `for`, resumed by the member taking them over

Revision ID: c7e2f4a9b1d3
Revises: c7e2a9d4f1b6
Create Date: 2026-12-03 18:40:00.000000

Starts empty: a daemon writes an entry when a group starts pending.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from alembic import op

revision: str = "c7e2f4a9b1d3"
down_revision: str | Sequence[str] | None = "c7e2a9d4f1b6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "pending_alerts",
        sa.Column("fingerprint", sa.String(length=255), nullable=False),
        sa.Column("rule", sa.String(length=255), nullable=False),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("fingerprint", name=op.f("pk_pending_alerts")),
    )


def downgrade() -> None:
    op.drop_table("pending_alerts")
