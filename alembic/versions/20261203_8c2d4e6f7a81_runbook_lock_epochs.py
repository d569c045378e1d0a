"""runbook locks carry a fencing epoch and stay as rows when free

Revision ID: 8c2d4e6f7a81
Revises: 5e7a13c4b9d2
Create Date: 2026-12-03 12:00:00.000000

`runbook_locks.epoch` grows with every acquisition of a service's lock; a free lock keeps
its row with `run_id` NULL, so the epoch never starts over. Locks held when this runs keep
their run and start at epoch 1.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "8c2d4e6f7a81"
down_revision: str | Sequence[str] | None = "7f1e2a3b4c5d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runbook_locks") as batch:
        batch.add_column(sa.Column("epoch", sa.Integer(), server_default="0", nullable=False))
        batch.alter_column("run_id", existing_type=sa.Integer(), nullable=True)
    op.execute("UPDATE runbook_locks SET epoch = 1")


def downgrade() -> None:
    # A free lock is no row in the old schema.
    op.execute("DELETE FROM runbook_locks WHERE run_id IS NULL")
    with op.batch_alter_table("runbook_locks") as batch:
        batch.alter_column("run_id", existing_type=sa.Integer(), nullable=False)
        batch.drop_column("epoch")
