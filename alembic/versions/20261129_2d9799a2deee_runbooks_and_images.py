"""runbook runs, their steps, service locks and pools; the image registry

Revision ID: 2d9799a2deee
Revises: 8b4e2c9f1a60
Create Date: 2026-11-29 02:32:13.467016
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "2d9799a2deee"
down_revision: str | Sequence[str] | None = "8b4e2c9f1a60"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: a migration must not change when the models do.
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TIME = sa.DateTime(timezone=True)
RUN_STATUS = (
    "running",
    "succeeded",
    "failed",
    "aborted",
    "interrupted",
    "undone",
    "undo_failed",
)
UNIT_STATUS = ("running", "ok", "failed", "skipped", "undone", "undo_failed")


def _status(name: str, values: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def _run_fk(table: str, ondelete: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["run_id"],
        ["runbook_runs.id"],
        name=op.f(f"fk_{table}_run_id_runbook_runs"),
        ondelete=ondelete,
    )


def upgrade() -> None:
    op.create_table(
        "runbook_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("runbook", sa.String(length=64), nullable=False),
        sa.Column("params", JSON, nullable=False),
        sa.Column("services", JSON, nullable=False),
        sa.Column("status", _status("run_status", RUN_STATUS), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("step", sa.String(length=64), nullable=True),
        sa.Column("started_by", sa.String(length=255), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=True),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("heartbeat_at", TIME, nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("ended_at", TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["incidents.id"],
            name=op.f("fk_runbook_runs_incident_id_incidents"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runbook_runs")),
    )
    op.create_index(op.f("ix_runbook_runs_incident_id"), "runbook_runs", ["incident_id"])
    op.create_index("ix_runbook_runs_status", "runbook_runs", ["status"])
    op.create_table(
        "runbook_steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=255), nullable=False),
        sa.Column("status", _status("unit_status", UNIT_STATUS), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("ended_at", TIME, nullable=True),
        sa.Column("log", JSON, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("undo", JSON, nullable=True),
        _run_fk("runbook_steps", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runbook_steps")),
    )
    op.create_index(op.f("ix_runbook_steps_run_id"), "runbook_steps", ["run_id"])
    op.create_table(
        "runbook_locks",
        sa.Column("service", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("acquired_at", TIME, nullable=False),
        _run_fk("runbook_locks", "CASCADE"),
        sa.PrimaryKeyConstraint("service", name=op.f("pk_runbook_locks")),
    )
    op.create_table(
        "service_pools",
        sa.Column("service", sa.String(length=64), nullable=False),
        sa.Column("pool", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("changed_at", TIME, nullable=False),
        _run_fk("service_pools", "SET NULL"),
        sa.PrimaryKeyConstraint("service", name=op.f("pk_service_pools")),
    )
    op.create_table(
        "image_deploys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("service", sa.String(length=64), nullable=False),
        sa.Column("node", sa.String(length=64), nullable=False),
        sa.Column("image", sa.Text(), nullable=False),
        sa.Column("digest", sa.String(length=80), nullable=False),
        sa.Column("deployed_at", TIME, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        _run_fk("image_deploys", "SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image_deploys")),
    )
    op.create_index("ix_image_deploys_service_at", "image_deploys", ["service", "deployed_at"])
    op.create_table(
        "known_good_images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("service", sa.String(length=64), nullable=False),
        sa.Column("image", sa.Text(), nullable=False),
        sa.Column("digest", sa.String(length=80), nullable=False),
        sa.Column("since", TIME, nullable=False),
        sa.Column("by", sa.String(length=255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_known_good_images")),
        sa.UniqueConstraint("service", "digest", name=op.f("uq_known_good_images_service")),
    )


def downgrade() -> None:
    op.drop_table("known_good_images")
    op.drop_table("image_deploys")
    op.drop_table("service_pools")
    op.drop_table("runbook_locks")
    op.drop_table("runbook_steps")
    op.drop_table("runbook_runs")
