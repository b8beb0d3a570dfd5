"""Certificates: watching a PEM's expiry without a server, and reading certificates back.

A certificate is visible to a caller when one of its servers served it (now or in the
history) or when one of its keys uploaded it; everything else answers 404.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import CompoundSelect, Select, insert, or_, select, union

from keychest.scan.judge import cert_facts
from keychest.service import domains, errors, keys, scans, visibility
from keychest.service.context import Ctx
from keychest.store.models import AddressState, ApiKey, Certificate, Endpoint, ScanChange, WatchedCertificate

MAX_PEM_BYTES = 64 * 1024


class NotOneCertificate(errors.ServiceError):
    """A chain (or several certificates) where one was expected: KeyChest's single-cert-expected."""


@dataclass(frozen=True)
class WatchOutcome:
    id: int
    sha256: str
    subject: str
    not_after: datetime
    created: bool


def parse_single_pem(text: str) -> bytes:
    """The DER of exactly one certificate in PEM, or a 422 saying what is wrong."""
    if len(text) > MAX_PEM_BYTES:
        raise errors.invalid(f"certificate larger than {MAX_PEM_BYTES} bytes")
    if "PRIVATE KEY" in text:
        # Refused outright: a private key has no business on a monitoring server.
        raise errors.invalid("that is a private key; send only the certificate")
    try:
        found = x509.load_pem_x509_certificates(text.strip().encode("ascii", "replace"))
    except ValueError:
        raise errors.invalid("not a PEM certificate (-----BEGIN CERTIFICATE----- ...)") from None
    if len(found) != 1:
        raise NotOneCertificate(
            422, "invalid", f"expected one certificate, got {len(found)}: send the leaf alone"
        )
    return found[0].public_bytes(serialization.Encoding.DER)


def watch_pem(ctx: Ctx, raw_key: str, pem_text: str) -> WatchOutcome:
    key = keys.use(ctx, raw_key)
    der = parse_single_pem(pem_text)
    try:
        facts = cert_facts(der)
    except ValueError as exc:
        raise errors.invalid(f"unreadable certificate: {exc}") from None
    cert_id = scans._certificate_id(ctx, facts, {})
    existing = ctx.session.scalar(
        select(WatchedCertificate.id).where(
            WatchedCertificate.certificate_id == cert_id,
            WatchedCertificate.api_key_id.in_(visibility.key_scope(key)),
        )
    )
    created = existing is None
    if existing is None:
        existing = ctx.session.execute(
            insert(WatchedCertificate)
            .values(api_key_id=key.id, certificate_id=cert_id, added_at=ctx.now, added_ip=ctx.ip)
            .returning(WatchedCertificate.id)
        ).scalar_one()
    return WatchOutcome(existing, facts.sha256, facts.subject, scans._naive(facts.not_after), created)


def visible_ids(endpoint_ids: Select[int], key_ids: Select[int]) -> CompoundSelect[int | None]:
    """A SELECT of certificate ids: served on those endpoints (now or before), or uploaded."""
    return union(
        select(AddressState.certificate_id).where(AddressState.endpoint_id.in_(endpoint_ids)),
        select(ScanChange.certificate_id).where(ScanChange.endpoint_id.in_(endpoint_ids)),
        select(ScanChange.previous_certificate_id).where(ScanChange.endpoint_id.in_(endpoint_ids)),
        select(WatchedCertificate.certificate_id).where(WatchedCertificate.api_key_id.in_(key_ids)),
    )


def _key_scope(key: ApiKey) -> CompoundSelect[int | None]:
    return visible_ids(visibility.key_endpoints(key), visibility.key_scope(key))


def _account_scope(account_id: int) -> CompoundSelect[int | None]:
    return visible_ids(visibility.account_endpoints(account_id), visibility.account_keys(account_id))


@dataclass(frozen=True)
class CertRow:
    sha256: str
    subject: str
    issuer: str
    not_before: datetime
    not_after: datetime
    subject_alt_names: list[str]
    watched: bool  # uploaded as PEM by one of the caller's keys


def _rows(ctx: Ctx, scope: CompoundSelect[int | None], key_ids: Select[int]) -> list[CertRow]:
    watched = set(
        ctx.session.scalars(
            select(WatchedCertificate.certificate_id).where(WatchedCertificate.api_key_id.in_(key_ids))
        )
    )
    found = ctx.session.scalars(
        select(Certificate).where(Certificate.id.in_(scope)).order_by(Certificate.not_after)
    )
    return [
        CertRow(
            c.sha256,
            c.subject,
            c.issuer_name,
            c.not_before,
            c.not_after,
            list(c.subject_alt_names or []),
            c.id in watched,
        )
        for c in found
    ]


def list_for_key(ctx: Ctx, raw_key: str) -> list[CertRow]:
    key = keys.use(ctx, raw_key)
    return _rows(ctx, _key_scope(key), visibility.key_scope(key))


@dataclass(frozen=True)
class Deployment:
    endpoint_id: int
    domain: str
    ip: str
    state: str
    since: datetime
    last_scan_at: datetime
    current: bool


@dataclass(frozen=True)
class HistoryItem:
    at: datetime
    domain: str
    ip: str
    change: str
    sha256: str | None
    previous_sha256: str | None
    error: str | None


@dataclass(frozen=True)
class CertDetail:
    certificate: Certificate
    chain: list[Certificate | str]  # the chain as last served, leaf first; a sha256 if unknown
    deployments: list[Deployment]
    history: list[HistoryItem]
    watched: bool


def _detail(
    ctx: Ctx,
    sha256: str,
    scope: CompoundSelect[int | None],
    endpoint_ids: Select[int],
    key_ids: Select[int],
) -> CertDetail:
    cert = ctx.session.scalar(
        select(Certificate).where(Certificate.sha256 == sha256.lower(), Certificate.id.in_(scope))
    )
    if cert is None:
        raise errors.not_found("no such certificate")
    current = ctx.session.execute(
        select(AddressState, Endpoint.host, Endpoint.port)
        .join(Endpoint, Endpoint.id == AddressState.endpoint_id)
        .where(AddressState.certificate_id == cert.id, AddressState.endpoint_id.in_(endpoint_ids))
        .order_by(Endpoint.host, AddressState.ip)
    ).all()
    deployments = [
        Deployment(s.endpoint_id, str(domains.DomainName(h, p)), s.ip, s.state, s.since, s.last_scan_at, True)
        for s, h, p in current
    ]
    chain_hashes = list(current[0][0].chain) if current else [cert.sha256]
    known = {
        c.sha256: c
        for c in ctx.session.scalars(select(Certificate).where(Certificate.sha256.in_(chain_hashes)))
    }
    chain: list[Certificate | str] = [known.get(h, h) for h in chain_hashes]
    # Every change on each address that ever served it: renewals, errors, recoveries.
    places = ctx.session.execute(
        select(ScanChange.endpoint_id, ScanChange.ip)
        .where(
            or_(ScanChange.certificate_id == cert.id, ScanChange.previous_certificate_id == cert.id),
            ScanChange.endpoint_id.in_(endpoint_ids),
        )
        .distinct()
    ).all()
    history: list[HistoryItem] = []
    if places:
        endpoint_set = {p.endpoint_id for p in places}
        wanted = {(p.endpoint_id, p.ip) for p in places}
        previous = Certificate.__table__.alias("previous")
        current_cert = Certificate.__table__.alias("current_cert")
        rows = ctx.session.execute(
            select(
                ScanChange.at,
                ScanChange.endpoint_id,
                ScanChange.ip,
                ScanChange.change,
                ScanChange.error,
                Endpoint.host,
                Endpoint.port,
                current_cert.c.sha256,
                previous.c.sha256.label("previous_sha256"),
            )
            .join(Endpoint, Endpoint.id == ScanChange.endpoint_id)
            .outerjoin(current_cert, current_cert.c.id == ScanChange.certificate_id)
            .outerjoin(previous, previous.c.id == ScanChange.previous_certificate_id)
            .where(ScanChange.endpoint_id.in_(endpoint_set))
            .order_by(ScanChange.at.desc(), ScanChange.id.desc())
            .limit(500)
        ).all()
        history = [
            HistoryItem(
                r.at,
                str(domains.DomainName(r.host, r.port)),
                r.ip,
                r.change,
                r.sha256,
                r.previous_sha256,
                r.error,
            )
            for r in rows
            if (r.endpoint_id, r.ip) in wanted
        ]
    watched = (
        ctx.session.scalar(
            select(WatchedCertificate.id)
            .where(WatchedCertificate.certificate_id == cert.id, WatchedCertificate.api_key_id.in_(key_ids))
            .limit(1)
        )
        is not None
    )
    return CertDetail(cert, chain, deployments, history, watched)


def detail_for_key(ctx: Ctx, raw_key: str, sha256: str) -> CertDetail:
    key = keys.use(ctx, raw_key)
    return _detail(ctx, sha256, _key_scope(key), visibility.key_endpoints(key), visibility.key_scope(key))


def detail_for_account(ctx: Ctx, account_id: int, sha256: str) -> CertDetail:
    return _detail(
        ctx,
        sha256,
        _account_scope(account_id),
        visibility.account_endpoints(account_id),
        visibility.account_keys(account_id),
    )
