"""outbox rows per notifier; each notifier's root messages in one table

Revision ID: 5e7a13c4b9d2
Revises: 2d9799a2deee
Create Date: 2026-11-30 09:00:00.000000

`outbox.notifier` names the notifier a row is for; the rows written before it were all for
Slack, hence the server default. `slack_messages` becomes `notification_roots`, keyed by
incident and notifier, with Slack's channel and ts as the generic destination and ref.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "5e7a13c4b9d2"
down_revision: str | Sequence[str] | None = "2d9799a2deee"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN with a constant default: SQLite adds it without rebuilding outbox.
    op.add_column(
        "outbox",
        sa.Column("notifier", sa.String(length=32), server_default="slack", nullable=False),
    )
    op.create_table(
        "notification_roots",
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("notifier", sa.String(length=32), nullable=False),
        sa.Column("destination", sa.String(length=64), nullable=False),
        sa.Column("ref", sa.String(length=64), nullable=False),
        sa.Column("posted_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["incidents.id"],
            name=op.f("fk_notification_roots_incident_id_incidents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("incident_id", "notifier", name=op.f("pk_notification_roots")),
    )
    op.execute(
        "INSERT INTO notification_roots (incident_id, notifier, destination, ref, posted_at) "
        "SELECT incident_id, 'slack', channel, ts, posted_at FROM slack_messages"
    )
    op.drop_table("slack_messages")


def downgrade() -> None:
    op.create_table(
        "slack_messages",
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("ts", sa.String(length=32), nullable=False),
        sa.Column("posted_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["incidents.id"],
            name=op.f("fk_slack_messages_incident_id_incidents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("incident_id", name=op.f("pk_slack_messages")),
    )
    op.execute(
        "INSERT INTO slack_messages (incident_id, channel, ts, posted_at) "
        "SELECT incident_id, destination, ref, posted_at FROM notification_roots "
        "WHERE notifier = 'slack'"
    )
    op.drop_table("notification_roots")
    # Rows of other notifiers would read as Slack's: only Slack's survive the downgrade.
    op.execute("DELETE FROM outbox WHERE notifier != 'slack'")
    op.drop_column("outbox", "notifier")
