"""renewal truth: renewal reports from the machines (issue 13)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 16:35:00

One row per `command renewal` (renewed or failed, per domain): the last one per endpoint is
shown by `expiration` and the dashboard, failures are alerted, and a reported SHA-256 that
no address serves an hour later is a `not_deployed` warning.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "renewal_reports",
        sa.Column("id", BigId, nullable=False),
        sa.Column("endpoint_id", BigId, nullable=False),
        sa.Column("api_key_id", BigId, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("host", sa.String(length=253), nullable=True),
        sa.Column("reported_at", sa.DateTime(), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["endpoint_id"], ["endpoints.id"]),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_renewal_reports_endpoint_at", "renewal_reports", ["endpoint_id", "reported_at"])


def downgrade() -> None:
    op.drop_index("ix_renewal_reports_endpoint_at", table_name="renewal_reports")
    op.drop_table("renewal_reports")
