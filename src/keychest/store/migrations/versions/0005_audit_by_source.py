"""index the audit log by event and source address, for per-IP quotas

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 20:25:00
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_audit_event_ip_at", "audit_log", ["event", "ip", "at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_audit_event_ip_at", table_name="audit_log")
