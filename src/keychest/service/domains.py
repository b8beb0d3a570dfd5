"""Domains: what may be monitored, and who registered it."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime

import idna
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from keychest.service import audit, errors, keys
from keychest.service.context import Ctx
from keychest.store.models import Account, ApiKey, Endpoint, Watch

LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
DEFAULT_PORT = 443


@dataclass(frozen=True)
class DomainName:
    """A normalised endpoint to watch: an A-label name (or an IP literal) and a port."""

    host: str
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORT else f"{host}:{self.port}"


def parse_domain(text: str) -> DomainName:
    """Normalise what a user typed into a DomainName, or say clearly why not.

    Lower-cased, trailing dot removed, IDNA to A-labels, ``:port`` optional (default 443).
    IP literals are accepted (``192.0.2.1``, ``[2001:db8::1]:8443``): intranet users watch
    them, and the scanner's private-address guard decides whether they may be scanned.
    """
    text = text.strip()
    if not text:
        raise errors.invalid("empty domain")
    if "://" in text or "/" in text:
        raise errors.invalid("give a domain name, not a URL (www.example.net or www.example.net:8443)")
    host, port = _split_port(text)
    literal = _ip_literal(host)
    if literal is not None:
        return DomainName(literal, port)
    # One trailing dot is the DNS root; a second would leave an empty label, refused below.
    host = (host[:-1] if host.endswith(".") else host).lower()
    if not host:
        raise errors.invalid("empty domain")
    if host.startswith("*."):
        raise errors.invalid(
            "wildcards cannot be scanned: register each name your servers answer to (e.g. www."
            + host[2:]
            + ")"
        )
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise errors.invalid(f"not a valid internationalised domain name: {exc}") from None
    if len(host) > 253:
        raise errors.invalid("domain longer than 253 characters")
    labels = host.split(".")
    for label in labels:
        if not label:
            raise errors.invalid("empty label in domain (two dots in a row?)")
        if len(label) > 63:
            raise errors.invalid(f"label longer than 63 characters: {label[:20]}...")
        if not LABEL.fullmatch(label):
            raise errors.invalid(
                f"bad characters in {label!r}: a label is a-z, 0-9 and inner hyphens"
            )
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except idna.IDNAError:
                raise errors.invalid(f"invalid IDNA label {label}") from None
    if labels[-1].isdigit():
        raise errors.invalid("the last label is all digits: not a domain (and not an IP address)")
    return DomainName(host, port)


def _split_port(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise errors.invalid("unclosed [ in IPv6 address")
        if not rest:
            return host, DEFAULT_PORT
        if not rest.startswith(":"):
            raise errors.invalid("expected :port after ]")
        return host, _port(rest[1:])
    if text.count(":") > 1:
        return text, DEFAULT_PORT  # a bare IPv6 literal
    host, sep, port = text.partition(":")
    return host, _port(port) if sep else DEFAULT_PORT


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise errors.invalid(f"invalid port {text[:10]!r}: 1 to 65535")
    return int(text)


def _ip_literal(host: str) -> str | None:
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        if ":" in host:
            raise errors.invalid("invalid IPv6 address") from None
        return None


@dataclass(frozen=True)
class AddOutcome:
    domain: DomainName
    watch_id: int
    endpoint_id: int
    created: bool


def _key_is_confirmed(ctx: Ctx, key: ApiKey) -> bool:
    if key.state != "active" or key.account_id is None:
        return False
    state = ctx.session.scalar(select(Account.state).where(Account.id == key.account_id))
    return state == "active"


def _endpoint_id(ctx: Ctx, domain: DomainName) -> int:
    found = ctx.session.scalar(
        select(Endpoint.id).where(Endpoint.host == domain.host, Endpoint.port == domain.port)
    )
    if found is not None:
        return found
    try:
        # A savepoint: a concurrent writer (another process on PostgreSQL) may win the race.
        with ctx.session.begin_nested():
            return ctx.session.execute(
                insert(Endpoint)
                .values(host=domain.host, port=domain.port, created_at=ctx.now, next_scan_at=ctx.now)
                .returning(Endpoint.id)
            ).scalar_one()
    except IntegrityError:
        return ctx.session.execute(
            select(Endpoint.id).where(Endpoint.host == domain.host, Endpoint.port == domain.port)
        ).scalar_one()


def add(ctx: Ctx, raw_key: str, domain_text: str) -> AddOutcome:
    """Put a domain under monitoring for a key's account. Idempotent."""
    key = keys.use(ctx, raw_key)
    if key.state == "revoked":
        raise errors.forbidden("API key revoked")
    domain = parse_domain(domain_text)
    endpoint_id = _endpoint_id(ctx, domain)
    existing = ctx.session.scalar(
        select(Watch.id).where(Watch.api_key_id == key.id, Watch.endpoint_id == endpoint_id)
    )
    if existing is None and key.account_id is not None:
        # Idempotent per account: another key of the same account already watches it.
        existing = ctx.session.scalar(
            select(Watch.id)
            .join(ApiKey, ApiKey.id == Watch.api_key_id)
            .where(ApiKey.account_id == key.account_id, Watch.endpoint_id == endpoint_id)
            .limit(1)
        )
    if existing is not None:
        return AddOutcome(domain, existing, endpoint_id, created=False)
    limit = ctx.settings.limits.domains_per_unconfirmed_key
    if limit > 0 and not _key_is_confirmed(ctx, key):
        count = ctx.session.scalar(
            select(func.count()).select_from(Watch).where(Watch.api_key_id == key.id)
        )
        if count is not None and count >= limit:
            raise errors.forbidden(
                f"quota: {limit} domains per API key until its email is confirmed"
            )
    watch_id = ctx.session.execute(
        insert(Watch)
        .values(api_key_id=key.id, endpoint_id=endpoint_id, added_at=ctx.now, added_ip=ctx.ip)
        .returning(Watch.id)
    ).scalar_one()
    audit.record(ctx, "domain_added", api_key_id=key.id, account_id=key.account_id, subject=str(domain))
    return AddOutcome(domain, watch_id, endpoint_id, created=True)


@dataclass(frozen=True)
class DomainRow:
    domain: str
    host: str
    port: int
    account_email: str | None
    apikey_prefix: str
    key_state: str
    added_at: datetime


def list_rows(ctx: Ctx, *, raw_key: str | None = None) -> list[DomainRow]:
    query = (
        select(Endpoint.host, Endpoint.port, Account.email, ApiKey.prefix, ApiKey.state, Watch.added_at)
        .join(Watch, Watch.endpoint_id == Endpoint.id)
        .join(ApiKey, ApiKey.id == Watch.api_key_id)
        .outerjoin(Account, Account.id == ApiKey.account_id)
        .order_by(Watch.id)
    )
    if raw_key is not None:
        key = keys.find(ctx, raw_key)
        if key is None:
            raise errors.unknown_key()
        query = query.where(Watch.api_key_id == key.id)
    return [
        DomainRow(str(DomainName(host, port)), host, port, email, prefix, state, added_at)
        for host, port, email, prefix, state, added_at in ctx.session.execute(query)
    ]


def account_endpoint_ids(ctx: Ctx, account_id: int) -> list[int]:
    """The endpoints an account sees: those of its approved keys."""
    return list(
        ctx.session.scalars(
            select(Watch.endpoint_id)
            .join(ApiKey, ApiKey.id == Watch.api_key_id)
            .where(ApiKey.account_id == account_id, ApiKey.state == "active")
            .distinct()
        )
    )
