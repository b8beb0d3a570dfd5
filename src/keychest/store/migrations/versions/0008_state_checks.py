"""states: the database allows only the known words in every state column

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 17:00:00

The words are those of keychest.states and keychest.scan.judge.State, frozen here as they are
at this revision. PostgreSQL gets CHECK constraints. SQLite can add a CHECK only by rebuilding
the table, which it refuses for a table other rows point at (accounts, api_keys, endpoints)
while foreign keys are enforced; there the same rule is a pair of triggers per column, which
refuse a bad INSERT or UPDATE the same way (an IntegrityError naming the rule).
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

VERDICTS = ("ok", "warning", "critical", "error")
# name, table, column, allowed words, whether NULL is allowed
CHECKS = [
    ("ck_accounts_state", "accounts", "state", ("dormant", "active", "blocked"), False),
    ("ck_api_keys_state", "api_keys", "state", ("unclaimed", "pending", "active", "revoked"), False),
    ("ck_outbox_state", "outbox", "state", ("queued", "sending", "sent", "failed", "skipped"), False),
    ("ck_address_states_state", "address_states", "state", VERDICTS, False),
    ("ck_endpoints_last_state", "endpoints", "last_state", VERDICTS, True),
    (
        "ck_scan_changes_change",
        "scan_changes",
        "change",
        ("first_seen", "new_certificate", "error", "error_changed", "recovered", "address_gone"),
        False,
    ),
]


def condition(column: str, words: tuple[str, ...], nullable: bool, prefix: str = "") -> str:
    allowed = f"{prefix}{column} IN ({', '.join(repr(w) for w in words)})"
    return f"{prefix}{column} IS NULL OR {allowed}" if nullable else allowed


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for name, table, column, words, nullable in CHECKS:
        if not sqlite:
            op.create_check_constraint(name, table, condition(column, words, nullable))
            continue
        bad = f"NOT ({condition(column, words, nullable, 'NEW.')})"
        for event in ("INSERT", f"UPDATE OF {column}"):
            trigger = f"{name}_{event.split()[0].lower()}"
            op.execute(
                sa.text(
                    f"CREATE TRIGGER {trigger} BEFORE {event} ON {table} WHEN {bad} "
                    f"BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: {name}'); END"
                )
            )


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for name, table, _column, _words, _nullable in reversed(CHECKS):
        if not sqlite:
            op.drop_constraint(name, table, type_="check")
            continue
        for event in ("insert", "update"):
            op.execute(sa.text(f"DROP TRIGGER IF EXISTS {name}_{event}"))
