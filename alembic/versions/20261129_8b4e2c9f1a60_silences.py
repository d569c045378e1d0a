"""silences, and the silence that muted an outbox row

Revision ID: 8b4e2c9f1a60
Revises: 3c1f0a7d52e4
Create Date: 2026-11-29 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "8b4e2c9f1a60"
down_revision: str | Sequence[str] | None = "3c1f0a7d52e4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of the model type: a migration must not change when the models do.
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "silences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("matchers", JSON, nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("expired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_silences")),
    )
    op.create_index("ix_silences_ends_at", "silences", ["ends_at"])
    # A plain column, no foreign key: SQLite's ALTER TABLE adds it without rebuilding outbox.
    op.add_column("outbox", sa.Column("silence_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    # SQLite 3.35+ drops a column in place; a rebuild would have to recreate outbox's
    # partial index and CHECK by hand.
    op.drop_column("outbox", "silence_id")
    op.drop_table("silences")
