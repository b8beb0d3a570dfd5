"""mail incidents: acknowledge links and --renotify repeats by mail (issue 12 item 5)

The mailed ``invalid``/``down`` alerts are the account's incidents: where (endpoint, address),
how bad, when last mailed (repeats count from it), the hash of the single-use ack token in the
last mail, and when it was acknowledged. Rows from before carry NULLs: their incidents clear as
before but are neither repeated nor acknowledged.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 19:50:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

COLUMNS = (
    ("severity", sa.String(length=16)),
    ("endpoint_id", sa.BigInteger()),
    ("ip", sa.String(length=64)),
    ("last_sent_at", sa.DateTime()),
    ("ack_hash", sa.String(length=64)),
    ("acked_at", sa.DateTime()),
)


def upgrade() -> None:
    for name, type_ in COLUMNS:
        op.add_column("alerts_sent", sa.Column(name, type_, nullable=True))
    # An index, not a column constraint: SQLite cannot add a UNIQUE column to a table.
    op.create_index("ix_alerts_sent_ack_hash", "alerts_sent", ["ack_hash"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_alerts_sent_ack_hash", table_name="alerts_sent")
    with op.batch_alter_table("alerts_sent") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
