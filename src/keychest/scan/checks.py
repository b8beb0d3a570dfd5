"""The I/O shells of the renewal checks: revocation (CRL, OCSP) and ACME renewal information.

One `RevocationChecker` and one `AriChecker` per scanner, so their caches are shared by every
endpoint the scanner sees:

- a CRL is kept until its nextUpdate (at most MAX_CRL_AGE); then it is asked again with a
  conditional GET (If-None-Match / If-Modified-Since). Concurrent scans of certificates that
  share a CRL wait for the one download in flight. A failing URL is left alone for
  FAILURE_BACKOFF, so a thousand certificates behind a dead URL cost one time-out;
- an OCSP answer is kept until its nextUpdate (at most RECHECK);
- a renewalInfo answer is kept until the server's Retry-After (within MIN_RETRY..MAX_RETRY),
  so a certificate is never asked about twice within one Retry-After.

All fetches go through the guarded `Fetcher` (the private-address guard, one deadline, a
size cap). The verdicts themselves come from the pure `revocation` and `ari` modules.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from keychest.scan.ari import (
    DIRECTORY_TTL,
    ERROR_RETRY,
    RenewalInfo,
    cert_id,
    parse_renewal_info,
    public_directory,
    retry_after,
)
from keychest.scan.fetch import Fetcher, FetchError
from keychest.scan.revocation import (
    FAILURE_BACKOFF,
    MAX_CRL_AGE,
    RECHECK,
    Method,
    Revocation,
    Status,
    crl_date_problem,
    crl_lookup,
    crl_signature_problem,
    crl_urls,
    key_hash,
    load_crl,
    ocsp_next_update,
    ocsp_request,
    ocsp_urls,
    ocsp_verdict,
    unknown,
)

# --- revocation ----------------------------------------------------------------------------


@dataclass(slots=True)
class _CrlEntry:
    crl: x509.CertificateRevocationList | None
    fresh_until: datetime
    etag: str | None = None
    last_modified: str | None = None
    error: str | None = None
    verified: set[bytes] = field(default_factory=set)  # issuer key hashes it verified against


@dataclass(slots=True)
class _OcspEntry:
    data: bytes
    fresh_until: datetime


class RevocationChecker:
    """One per scanner: caches CRLs by URL and OCSP answers by (issuer key, serial)."""

    def __init__(self, fetcher: Fetcher, clock: Callable[[], datetime]) -> None:
        self.fetcher = fetcher
        self.clock = clock
        self.crl_downloads = 0  # full bodies fetched (a 304 is not one)
        self.crl_requests = 0
        self._crls: dict[str, _CrlEntry] = {}
        self._ocsp: dict[tuple[bytes, int], _OcspEntry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def check(self, leaf: bytes, issuer: bytes | None, stapled: bytes | None) -> Revocation:
        try:
            cert = x509.load_der_x509_certificate(leaf)
            issuer_cert = x509.load_der_x509_certificate(issuer) if issuer else None
        except ValueError as exc:
            return unknown(None, f"certificate cannot be parsed: {exc}")
        if issuer_cert is None:
            return unknown(None, "the issuer's certificate is not available to check signatures")
        errors: list[Revocation] = []
        if stapled:
            verdict = ocsp_verdict(stapled, cert, issuer_cert, self.clock(), Method.STAPLED)
            if verdict.definite:
                return verdict
            errors.append(verdict)
        for url in ocsp_urls(cert)[:2]:
            verdict = await self._ocsp_check(url, cert, issuer_cert)
            if verdict.definite:
                return verdict
            errors.append(verdict)
        for url in crl_urls(cert)[:2]:
            verdict = await self._crl_check(url, cert, issuer_cert)
            if verdict.definite:
                return verdict
            errors.append(verdict)
        if errors:
            return errors[-1]
        return Revocation(Status.UNKNOWN)

    async def _ocsp_check(self, url: str, cert: x509.Certificate, issuer: x509.Certificate) -> Revocation:
        key = (key_hash(issuer, hashes.SHA1()), cert.serial_number)
        entry = self._ocsp.get(key)
        now = self.clock()
        if entry is None or entry.fresh_until <= now:
            try:
                response = await self.fetcher.get(
                    url,
                    {"Content-Type": "application/ocsp-request", "Accept": "application/ocsp-response"},
                    method="POST",
                    body=ocsp_request(cert, issuer),
                )
            except FetchError as exc:
                return unknown(Method.OCSP, str(exc))
            if response.status != 200:
                return unknown(Method.OCSP, f"{url}: HTTP {response.status}")
            next_update = ocsp_next_update(response.body)
            fresh = min(next_update, now + RECHECK) if next_update else now + RECHECK
            entry = self._ocsp[key] = _OcspEntry(response.body, fresh)
        return ocsp_verdict(entry.data, cert, issuer, self.clock())

    async def _crl_check(self, url: str, cert: x509.Certificate, issuer: x509.Certificate) -> Revocation:
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            entry = await self._crl(url)
        if entry.crl is None:
            return unknown(Method.CRL, entry.error or f"{url}: no CRL")
        # The signature is checked once per CRL and issuer; the dates at every use.
        fingerprint = key_hash(issuer, hashes.SHA256())
        if fingerprint not in entry.verified:
            problem = crl_signature_problem(entry.crl, issuer)
            if problem:
                return unknown(Method.CRL, f"{url}: {problem}")
            entry.verified.add(fingerprint)
        problem = crl_date_problem(entry.crl, self.clock())
        if problem:
            return unknown(Method.CRL, f"{url}: {problem}")
        return crl_lookup(entry.crl, cert)

    async def _crl(self, url: str) -> _CrlEntry:
        now = self.clock()
        entry = self._crls.get(url)
        if entry is not None and now < entry.fresh_until:
            return entry
        headers = {}
        if entry is not None and entry.crl is not None:
            if entry.etag:
                headers["If-None-Match"] = entry.etag
            if entry.last_modified:
                headers["If-Modified-Since"] = entry.last_modified
        self.crl_requests += 1
        try:
            response = await self.fetcher.get(url, headers)
        except FetchError as exc:
            return self._failed(url, str(exc), now)
        if response.status == 304 and entry is not None and entry.crl is not None:
            entry.fresh_until = self._fresh_until(entry.crl, self.clock(), unchanged=True)
            return entry
        if response.status != 200:
            return self._failed(url, f"{url}: HTTP {response.status}", now)
        self.crl_downloads += 1
        try:
            crl = load_crl(response.body)
        except ValueError as exc:
            return self._failed(url, f"{url}: not a CRL: {exc}", now)
        fresh = _CrlEntry(
            crl,
            self._fresh_until(crl, self.clock()),
            response.headers.get("etag"),
            response.headers.get("last-modified"),
        )
        self._crls[url] = fresh
        return fresh

    def _failed(self, url: str, error: str, now: datetime) -> _CrlEntry:
        entry = _CrlEntry(None, now + FAILURE_BACKOFF, error=error)
        self._crls[url] = entry
        return entry

    @staticmethod
    def _fresh_until(crl: x509.CertificateRevocationList, now: datetime, unchanged: bool = False) -> datetime:
        next_update = crl.next_update_utc
        if next_update is None or next_update <= now:
            return now + (RECHECK if unchanged or next_update is None else FAILURE_BACKOFF)
        return min(next_update, now + MAX_CRL_AGE)


# --- ACME renewal information --------------------------------------------------------------


@dataclass(slots=True)
class _Known:
    info: RenewalInfo | None
    next_check: datetime


class AriChecker:
    """One per scanner: directories by URL, answers by CertID."""

    def __init__(
        self, fetcher: Fetcher, clock: Callable[[], datetime], directories: Sequence[str] = ()
    ) -> None:
        self.fetcher = fetcher
        self.clock = clock
        self.directories = tuple(directories)
        self.requests = 0  # renewalInfo requests, for the figures in docs/renewal.md
        self._renewal_urls: dict[str, tuple[str | None, datetime]] = {}
        self._known: dict[str, _Known] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def candidates(self, issuer_organization: str | None) -> list[str]:
        public = public_directory(issuer_organization)
        return [public] if public else list(self.directories)

    async def check(self, leaf: bytes, issuer_organization: str | None) -> RenewalInfo | None:
        directories = self.candidates(issuer_organization)
        if not directories:
            return None
        try:
            ident = cert_id(x509.load_der_x509_certificate(leaf))
        except ValueError:
            return None
        if ident is None:
            return None
        lock = self._locks.setdefault(ident, asyncio.Lock())
        async with lock:
            known = self._known.get(ident)
            if known is not None and self.clock() < known.next_check:
                return known.info
            info, next_check = await self._ask(ident, directories, known.info if known else None)
            self._known[ident] = _Known(info, next_check)
            return info

    async def _ask(
        self, ident: str, directories: Sequence[str], previous: RenewalInfo | None
    ) -> tuple[RenewalInfo | None, datetime]:
        now = self.clock()
        for directory in directories:
            base = await self._renewal_url(directory)
            if base is None:
                continue
            self.requests += 1
            try:
                response = await self.fetcher.get(
                    f"{base.rstrip('/')}/{ident}", {"Accept": "application/json"}
                )
            except FetchError:
                continue
            if response.status == 404:
                continue  # not this CA's certificate
            wait = retry_after(response.headers.get("retry-after"), now)
            if response.status != 200:
                return previous, now + max(wait, ERROR_RETRY)
            try:
                return parse_renewal_info(response.body, self.clock()), now + wait
            except ValueError:
                return previous, now + max(wait, ERROR_RETRY)
        return previous, now + ERROR_RETRY

    async def _renewal_url(self, directory: str) -> str | None:
        # Certificates scanned at once wait for the one directory request in flight.
        async with self._locks.setdefault(f"directory {directory}", asyncio.Lock()):
            return await self._fetch_renewal_url(directory)

    async def _fetch_renewal_url(self, directory: str) -> str | None:
        now = self.clock()
        cached = self._renewal_urls.get(directory)
        if cached is not None and now < cached[1]:
            return cached[0]
        url: str | None = None
        try:
            response = await self.fetcher.get(directory, {"Accept": "application/json"})
            if response.status == 200:
                data = json.loads(response.body)
                if isinstance(data, dict) and isinstance(data.get("renewalInfo"), str):
                    url = data["renewalInfo"]
        except (FetchError, ValueError):
            url = None
        self._renewal_urls[directory] = (url, now + (DIRECTORY_TTL if url else ERROR_RETRY))
        return url
