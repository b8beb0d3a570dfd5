"""domain registration expiry from RDAP (issue 14 item 7)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 17:18:00
"""

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
