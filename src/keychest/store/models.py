"""SQLAlchemy models: the schema, changed only through Alembic migrations.

Rows are plain facts; the rules that create and change them live in ``keychest.service``.
Timestamps are naive UTC datetimes, the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from keychest.scan.judge import State
from keychest.states import AccountState, Change, KeyState, MailState

# SQLite only auto-increments INTEGER PRIMARY KEY; BIGINT keeps PostgreSQL roomy.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    # Core statements (bulk INSERT ... RETURNING) take the Table; typed as one, not a FromClause.
    __table__: ClassVar[Table]


def one_of(name: str, column: str, words: type[StrEnum], *, nullable: bool = False) -> CheckConstraint:
    """The column holds only the enum's words (migration 0008; triggers on SQLite)."""
    allowed = f"{column} IN ({', '.join(repr(str(w)) for w in words)})"
    return CheckConstraint(f"{column} IS NULL OR {allowed}" if nullable else allowed, name=name)


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    # dormant: created by a claim, not confirmed; active: confirmed; blocked: "this wasn't me"
    state: Mapped[str] = mapped_column(String(16), default="dormant")
    is_placeholder: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    created_ip: Mapped[str | None] = mapped_column(String(64))
    confirmed_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Signed into session cookies; bumping it (sign-out everywhere, block, key revoke) ends them all.
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (one_of("ck_accounts_state", "state", AccountState),)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters, for people to recognise a key in mails and listings.
    prefix: Mapped[str] = mapped_column(String(12))
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    # unclaimed -> active (bound to an account) or pending (awaits the owner's approval);
    # revoked is final.
    state: Mapped[str] = mapped_column(String(16), default="unclaimed")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    created_ip: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_used_ip: Mapped[str | None] = mapped_column(String(64))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        Index("ix_api_keys_created_ip_at", "created_ip", "created_at"),
        one_of("ck_api_keys_state", "state", KeyState),
    )


class Endpoint(Base):
    """A name and a port to watch, shared by every key that registered it."""

    __tablename__ = "endpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    host: Mapped[str] = mapped_column(String(253))
    port: Mapped[int] = mapped_column(Integer, default=443)
    # What the port speaks (scan.protocols): https is TLS at once, smtp/imap/... STARTTLS.
    protocol: Mapped[str] = mapped_column(String(16), default="https", server_default="https")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    # When the scanner should look next; NULL never happens for a live endpoint.
    next_scan_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_scan_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Worst state over the addresses after the last scan; NULL: not scanned yet.
    last_state: Mapped[str | None] = mapped_column(String(16))
    # Consecutive failed scans: the back-off grows with it.
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # A scanner's claim on this endpoint; another may take it over once lease_until passed.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime)
    # The registrable domain's registration expiry (RDAP) at the last scan; NULL: unknown.
    registration_expires: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        UniqueConstraint("host", "port", name="uq_endpoints_host_port"),
        Index("ix_endpoints_next_scan_at", "next_scan_at"),
        one_of("ck_endpoints_last_state", "last_state", State, nullable=True),
    )


class Watch(Base):
    """One API key's registration of an endpoint; an account sees the watches of its keys."""

    __tablename__ = "watches"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id"), index=True)
    added_at: Mapped[datetime] = mapped_column(DateTime)
    added_ip: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (UniqueConstraint("api_key_id", "endpoint_id", name="uq_watches_key_endpoint"),)


class AuditEvent(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime)
    event: Mapped[str] = mapped_column(String(32))
    ip: Mapped[str | None] = mapped_column(String(64))
    api_key_id: Mapped[int | None] = mapped_column(BigInteger)
    account_id: Mapped[int | None] = mapped_column(BigInteger)
    # What the event was about (an email for claims, a domain for adds), for quotas and people.
    subject: Mapped[str | None] = mapped_column(String(300))
    detail: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_audit_event_subject_at", "event", "subject", "at"),
        # Per-address quotas (claims and sign-in mails per IP) count recent events by source.
        Index("ix_audit_event_ip_at", "event", "ip", "at"),
        Index("ix_audit_at", "at"),
    )


class OutboxMail(Base):
    """A mail to send, written in the transaction of the event that causes it."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    kind: Mapped[str] = mapped_column(String(32))
    to_addr: Mapped[str] = mapped_column(String(254))
    account_id: Mapped[int | None] = mapped_column(BigInteger)
    payload: Mapped[dict] = mapped_column(JSON, default=dict)
    # queued -> sent | failed (gave up) | skipped (never to be mailed, e.g. a placeholder)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    # A notification to an alert channel (migration 0009); NULL: a mail.
    channel_id: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_outbox_state_next", "state", "next_attempt_at"),
        Index("ix_outbox_channel_state_next", "channel_id", "state", "next_attempt_at"),
        one_of("ck_outbox_state", "state", MailState),
    )


class Certificate(Base):
    """A certificate seen by the scanner, once per SHA-256, with the facts we search by."""

    __tablename__ = "certificates"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    subject: Mapped[str] = mapped_column(Text)
    issuer: Mapped[str] = mapped_column(Text)
    issuer_name: Mapped[str] = mapped_column(String(300))
    not_before: Mapped[datetime] = mapped_column(DateTime)
    not_after: Mapped[datetime] = mapped_column(DateTime, index=True)
    subject_alt_names: Mapped[list] = mapped_column(JSON, default=list)
    key_type: Mapped[str] = mapped_column(String(16))
    key_bits: Mapped[int] = mapped_column(Integer)
    signature_algorithm: Mapped[str] = mapped_column(String(64))
    is_lets_encrypt: Mapped[bool] = mapped_column(Boolean, default=False)
    self_signed: Mapped[bool] = mapped_column(Boolean, default=False)
    is_ca: Mapped[bool] = mapped_column(Boolean, default=False)
    pem: Mapped[str] = mapped_column(Text)
    first_seen_at: Mapped[datetime] = mapped_column(DateTime)


class AddressState(Base):
    """The latest result for one (endpoint, address): what the dashboard and alerts read."""

    __tablename__ = "address_states"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id"))
    # "" when the name did not resolve (the error is then about the name, not an address)
    ip: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # ok, warning, critical, error
    certificate_id: Mapped[int | None] = mapped_column(ForeignKey("certificates.id"))
    chain: Mapped[list] = mapped_column(JSON, default=list)  # sha256 of each sent certificate
    error_kind: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    trusted: Mapped[bool | None] = mapped_column(Boolean)
    hostname_ok: Mapped[bool | None] = mapped_column(Boolean)
    problems: Mapped[list] = mapped_column(JSON, default=list)  # [{code, severity, message}]
    # The soonest notAfter on the verified path (an intermediate may expire before the leaf).
    earliest_not_after: Mapped[datetime | None] = mapped_column(DateTime)
    # Since when this address has shown this certificate (or this error).
    since: Mapped[datetime] = mapped_column(DateTime)
    last_scan_at: Mapped[datetime] = mapped_column(DateTime)
    scan_seconds: Mapped[float | None] = mapped_column()
    # The last scan's revocation answer and the CA's ARI window, as ``scan --json`` prints them
    # (migration 0015); None when not checked, not answered, or the scan failed.
    revocation: Mapped[dict | None] = mapped_column(JSON)
    ari: Mapped[dict | None] = mapped_column(JSON)

    __table_args__ = (
        UniqueConstraint("endpoint_id", "ip", name="uq_address_states_endpoint_ip"),
        one_of("ck_address_states_state", "state", State),
    )


class ScanChange(Base):
    """History: a row only when an address changes (new certificate, new error, recovered)."""

    __tablename__ = "scan_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id"))
    ip: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime)
    # first_seen, new_certificate, error, error_changed, recovered, address_gone
    change: Mapped[str] = mapped_column(String(24))
    certificate_id: Mapped[int | None] = mapped_column(BigInteger)
    previous_certificate_id: Mapped[int | None] = mapped_column(BigInteger)
    error_kind: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_scan_changes_endpoint_at", "endpoint_id", "at"),
        Index("ix_scan_changes_at", "at"),
        one_of("ck_scan_changes_change", "change", Change),
    )


class ServerSecret(Base):
    """Secrets every process of one installation shares (cookie signing), made on first use."""

    __tablename__ = "server_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime)


# --- mail: tokens in links, alerts sent, per-account preferences (issue 5, migration 0003) ---------


class Token(Base):
    """A single-use secret carried by a link in a mail; only its SHA-256 is stored."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # confirm_account, block_account, approve_key, revoke_key, signin, unsubscribe, confirm_address
    purpose: Mapped[str] = mapped_column(String(24))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    api_key_id: Mapped[int | None] = mapped_column(BigInteger)
    # Purpose-specific extras (the unsubscribe scope, the address to confirm).
    data: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    used_at: Mapped[datetime | None] = mapped_column(DateTime)


class AlertSent(Base):
    """One row per alert (or weekly report) mailed: the unique key makes "at most once" hold."""

    __tablename__ = "alerts_sent"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    # e.g. expiry:<certificate id>:<threshold seconds>, expired:<id>, weekly:2026-11-30
    alert_key: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    sent_at: Mapped[datetime] = mapped_column(DateTime)
    # Incidents mailed (``invalid``, ``down``; migration 0014), NULL on other rows: where, how
    # bad, when last mailed (--renotify counts from it), the SHA-256 of the single-use token in
    # the last mail's acknowledge link (NULL once used), and when it was acknowledged.
    severity: Mapped[str | None] = mapped_column(String(16))
    endpoint_id: Mapped[int | None] = mapped_column(BigInteger)
    ip: Mapped[str | None] = mapped_column(String(64))
    last_sent_at: Mapped[datetime | None] = mapped_column(DateTime)
    ack_hash: Mapped[str | None] = mapped_column(String(64))
    acked_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        UniqueConstraint("account_id", "alert_key", name="uq_alerts_sent_account_key"),
        Index("ix_alerts_sent_ack_hash", "ack_hash", unique=True),
    )


class AccountPreferences(Base):
    """Notification settings; an account without a row has the defaults (service.preferences)."""

    __tablename__ = "account_preferences"

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    # Another address for notifications; mailed only once confirmed (notify_email_confirmed).
    notify_email: Mapped[str | None] = mapped_column(String(254))
    notify_email_confirmed: Mapped[bool] = mapped_column(Boolean, default=False)
    expiry_thresholds: Mapped[list] = mapped_column(JSON, default=list)  # days; empty: defaults
    alerts_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    down_grace_minutes: Mapped[int] = mapped_column(Integer, default=60)
    weekly_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    weekly_day: Mapped[int] = mapped_column(Integer, default=0)  # Monday = 0
    weekly_time: Mapped[str] = mapped_column(String(5), default="08:00")
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    updated_at: Mapped[datetime | None] = mapped_column(DateTime)


# --- REST API and dashboard (issue 6) -----------------------------------------------------------


class WatchedCertificate(Base):
    """A certificate watched for its expiry without a server: uploaded as PEM (certificate/add)."""

    __tablename__ = "watched_certificates"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    certificate_id: Mapped[int] = mapped_column(ForeignKey("certificates.id"), index=True)
    added_at: Mapped[datetime] = mapped_column(DateTime)
    added_ip: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        UniqueConstraint("api_key_id", "certificate_id", name="uq_watched_certificates_key_cert"),
    )


# --- rescans (issue 11, migration 0007) -----------------------------------------------------------


class ScanSettings(Base):
    """The scanner settings of the last start, as a fingerprint: a change rescans what they judged."""

    __tablename__ = "scan_settings"

    # One row per kind of settings; "scanner" today.
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    # SHA-256 over the settings that decide `blocked` and `untrusted` (see servers.scheduler).
    fingerprint: Mapped[str] = mapped_column(String(64))
    changed_at: Mapped[datetime] = mapped_column(DateTime)


# --- alert channels (issue 12, migration 0009) ----------------------------------------------------


class Channel(Base):
    """Where notifications go besides mail: an Apprise URL or a native signed webhook."""

    __tablename__ = "channels"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # server:<sha256 of kind and URL> for the operator's channels (--notify, --webhook)
    ref: Mapped[str] = mapped_column(String(100), unique=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)  # NULL: server-wide
    kind: Mapped[str] = mapped_column(String(16))  # apprise, webhook
    # An account's channel: only the URL without its credentials; the full URL and webhook
    # secret are in ``sealed`` (Fernet, key from the server secret). The operator's: the URL.
    url: Mapped[str] = mapped_column(Text)
    sealed: Mapped[str | None] = mapped_column(Text)
    min_severity: Mapped[str] = mapped_column(String(16), default="warning")
    event_types: Mapped[list] = mapped_column(JSON, default=list)  # empty: every type
    created_at: Mapped[datetime] = mapped_column(DateTime)
    # ok, failing (a 4xx answer: last_error holds it until a delivery succeeds)
    state: Mapped[str] = mapped_column(String(16), default="ok")
    last_error: Mapped[str | None] = mapped_column(Text)
    failures: Mapped[int] = mapped_column(Integer, default=0)  # in a row, for the back-off
    # A 5xx or time-out pauses the whole channel: its queue waits, no other channel does.
    paused_until: Mapped[datetime | None] = mapped_column(DateTime)


class ChannelEvent(Base):
    """One row per event sent to a channel; an incident while closed_at is NULL."""

    __tablename__ = "channel_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("channels.id"))
    # e.g. invalid:<endpoint>:<ip>:<certificate>:<codes>, failing:<endpoint>:<ip>:<since>
    event_key: Mapped[str] = mapped_column(String(300))
    type: Mapped[str] = mapped_column(String(40))
    endpoint_id: Mapped[int | None] = mapped_column(BigInteger)
    ip: Mapped[str | None] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    opened_at: Mapped[datetime] = mapped_column(DateTime)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_sent_at: Mapped[datetime | None] = mapped_column(DateTime)  # --renotify counts from it
    # The SHA-256 of the single-use token in the last ack_url sent; NULL once used.
    ack_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    acked_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (UniqueConstraint("channel_id", "event_key", name="uq_channel_events_channel_key"),)


# --- renewal reports (issue 13, migration 0010) ---------------------------------------------------


class RenewalReport(Base):
    """What a machine's hook said about one domain's renewal: `command renewal ...`."""

    __tablename__ = "renewal_reports"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id"))
    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    status: Mapped[str] = mapped_column(String(16))  # renewed, failed
    sha256: Mapped[str | None] = mapped_column(String(64))  # the new leaf's DER SHA-256, hex
    host: Mapped[str | None] = mapped_column(String(253))  # the reporting machine's name
    reported_at: Mapped[datetime] = mapped_column(DateTime)
    ip: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_renewal_reports_endpoint_at", "endpoint_id", "reported_at"),)


# --- process heartbeats (issue 16, migration 0012) -------------------------------------------------


class Heartbeat(Base):
    """A running keychest process (any role, any machine), as it last said it was alive."""

    __tablename__ = "heartbeats"

    # role:host:pid, so a restarted process is a new row and a dead one's row ages visibly.
    id: Mapped[str] = mapped_column(String(300), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(253))
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime)
    # Database time of the last heartbeat, and of the process's main loop's last pass
    # (scanner: a lease round; mailer: an outbox round); NULL: no pass yet.
    seen_at: Mapped[datetime] = mapped_column(DateTime)
    last_pass_at: Mapped[datetime | None] = mapped_column(DateTime)


class NotifyHold(Base):
    """A server's snooze or maintenance window: its events wait, and go out afterwards only if
    still true. ``weekly``: the same span again every week."""

    __tablename__ = "notify_holds"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id"), index=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"))  # who set it
    kind: Mapped[str] = mapped_column(String(16))  # snooze, maintenance
    starts_at: Mapped[datetime] = mapped_column(DateTime)
    ends_at: Mapped[datetime] = mapped_column(DateTime)
    weekly: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime)
