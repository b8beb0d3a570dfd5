"""domain registration expiry from RDAP (issue 14 item 7)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 17:18:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("endpoints", sa.Column("registration_expires", sa.DateTime(), nullable=True))


def downgrade() -> None:
    op.drop_column("endpoints", "registration_expires")
