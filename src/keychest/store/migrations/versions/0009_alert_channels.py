"""alert channels: channels, the events sent to them, outbox rows for channels (issue 12)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 16:32:00

The outbox gains a plain ``channel_id`` column (like its ``account_id``, no foreign key): SQLite
could add the constraint only by rebuilding the table, which would drop 0008's state triggers.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "channels",
        sa.Column("id", BigId, nullable=False),
        sa.Column("ref", sa.String(length=100), nullable=False),
        sa.Column("account_id", BigId, nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("sealed", sa.Text(), nullable=True),
        sa.Column("min_severity", sa.String(length=16), nullable=False),
        sa.Column("event_types", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("paused_until", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("ref"),
    )
    op.create_index("ix_channels_account_id", "channels", ["account_id"])
    op.create_table(
        "channel_events",
        sa.Column("id", BigId, nullable=False),
        sa.Column("channel_id", BigId, nullable=False),
        sa.Column("event_key", sa.String(length=300), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("endpoint_id", sa.BigInteger(), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("opened_at", sa.DateTime(), nullable=False),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.Column("last_sent_at", sa.DateTime(), nullable=True),
        sa.Column("ack_hash", sa.String(length=64), nullable=True),
        sa.Column("acked_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["channel_id"], ["channels.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("channel_id", "event_key", name="uq_channel_events_channel_key"),
        sa.UniqueConstraint("ack_hash"),
    )
    op.create_table(
        "notify_holds",
        sa.Column("id", BigId, nullable=False),
        sa.Column("endpoint_id", BigId, nullable=False),
        sa.Column("account_id", BigId, nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("starts_at", sa.DateTime(), nullable=False),
        sa.Column("ends_at", sa.DateTime(), nullable=False),
        sa.Column("weekly", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["endpoint_id"], ["endpoints.id"]),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_notify_holds_endpoint_id", "notify_holds", ["endpoint_id"])
    op.add_column("outbox", sa.Column("channel_id", sa.BigInteger(), nullable=True))
    op.create_index("ix_outbox_channel_state_next", "outbox", ["channel_id", "state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_channel_state_next", table_name="outbox")
    op.drop_column("outbox", "channel_id")
    op.drop_index("ix_notify_holds_endpoint_id", table_name="notify_holds")
    op.drop_table("notify_holds")
    op.drop_table("channel_events")
    op.drop_index("ix_channels_account_id", table_name="channels")
    op.drop_table("channels")
