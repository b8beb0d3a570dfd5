"""protocols and the earliest expiry on the verified path (issue 14)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 16:35:00

address_states.earliest_not_after: the soonest notAfter on the path the scanner verified
(leaf, intermediates, anchor), so that metrics and sorting see an intermediate expiring
before the leaf. NULL for rows not rescanned since (readers fall back to the leaf).

endpoints.protocol: what the port speaks (`https`: TLS at once; `smtp`, `imap`, ...:
STARTTLS first), `https` for every endpoint registered before.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("address_states", sa.Column("earliest_not_after", sa.DateTime(), nullable=True))
    op.add_column(
        "endpoints", sa.Column("protocol", sa.String(length=16), server_default="https", nullable=False)
    )


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite 3.35+): a batch rebuild of endpoints, which other tables
    # reference, is refused while foreign keys are enforced.
    op.drop_column("endpoints", "protocol")
    op.drop_column("address_states", "earliest_not_after")
