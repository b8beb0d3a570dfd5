"""earliest expiry on the verified path per address (issue 14)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 16:35:00

address_states.earliest_not_after: the soonest notAfter on the path the scanner verified
(leaf, intermediates, anchor), so that metrics and sorting see an intermediate expiring
before the leaf. NULL for rows not rescanned since (readers fall back to the leaf).
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("address_states", sa.Column("earliest_not_after", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("address_states") as batch:
        batch.drop_column("earliest_not_after")
