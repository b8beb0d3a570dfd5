"""The states rows move through, as StrEnums.

A member is its word: it compares equal to the plain string, is stored as it in the database
(where migration 0008 allows no other), and is written as it in JSON, mails and line-API
answers. An address's state is the scanner's verdict, ``keychest.scan.judge.State``.
"""

from __future__ import annotations

from enum import StrEnum


class KeyState(StrEnum):
    UNCLAIMED = "unclaimed"  # issued, bound to no address yet
    PENDING = "pending"  # claimed: waits for its owner's approval by mail
    ACTIVE = "active"  # approved: sees (and is seen by) its account's domains
    REVOKED = "revoked"


class AccountState(StrEnum):
    DORMANT = "dormant"  # claimed, address not confirmed yet
    ACTIVE = "active"
    BLOCKED = "blocked"  # the address's owner said no: nothing is mailed to it


class MailState(StrEnum):
    """An outbox row's life (service/outbox.py)."""

    QUEUED = "queued"
    SENDING = "sending"  # leased by a sender until next_attempt_at
    SENT = "sent"
    FAILED = "failed"  # gave up after too many attempts
    SKIPPED = "skipped"  # must never be mailed (blocked account, placeholder, ...)


class Change(StrEnum):
    """The kinds of scan history rows (docs/architecture.md, "One scan")."""

    FIRST_SEEN = "first_seen"
    NEW_CERTIFICATE = "new_certificate"
    ERROR = "error"
    ERROR_CHANGED = "error_changed"
    RECOVERED = "recovered"
    ADDRESS_GONE = "address_gone"
