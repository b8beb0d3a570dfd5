"""revocation and ARI answers per address (what ``keychest scan --json`` prints as ``revocation``/``ari``)

The latest scan's revocation answer (status, method, revoked_at, reason, error) and the CA's
suggested renewal window (window_start, window_end, explanation_url, checked_at) for each
address, as the JSON ``scan --json`` prints (ISO 8601 strings). NULL: not checked, no answer, or
the scan failed; rows from before stay NULL until their next scan.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 20:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

COLUMNS = ("revocation", "ari")


def upgrade() -> None:
    for name in COLUMNS:
        op.add_column("address_states", sa.Column(name, sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("address_states") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
