"""Scan endpoints: resolve, guard, probe every address, judge. The asyncio shell around the pure parts.

Concurrency is bounded twice: globally (`concurrency` probes in flight) and per address
(`per_address_concurrency`), so that a thousand names on one shared-hosting IP do not turn
into a thousand simultaneous handshakes against one server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from keychest.scan.errors import ErrorKind, ScanError, ScanFailure
from keychest.scan.guard import blocked_message, check_address
from keychest.scan.judge import (
    CertFacts,
    State,
    TrustStore,
    Verdict,
    chain_facts,
    find_stale_deployments,
    judge,
    utc_now,
)
from keychest.scan.probe import ProbeResult, TLSClient
from keychest.scan.resolve import Resolver
from keychest.scan.targets import Endpoint, ScanTarget


@dataclass(frozen=True, slots=True)
class ScanOptions:
    """Everything a scan needs to know, built once by the caller (CLI flags, service config)."""

    timeout: float = 10.0  # seconds, for the DNS lookup and again for connect + handshake
    ca_file: str | None = None  # extra trust anchors (private CAs), in addition to the system's
    system_trust: bool = True  # trust the system CA bundle
    allow_private_targets: bool = False
    resolver: str | None = None  # "ip[:port]" of a DNS server; None: the system resolver
    warn_days: int = 30
    crit_days: int = 7
    max_chain_bytes: int = 256 * 1024  # bytes we read from a server before giving up on it
    concurrency: int = 100  # probes in flight at once
    per_address_concurrency: int = 8  # probes in flight against one IP address

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if self.concurrency < 1 or self.per_address_concurrency < 1:
            raise ValueError("concurrency limits must be at least 1")
        if self.crit_days > self.warn_days:
            raise ValueError("crit_days must not exceed warn_days")


@dataclass(frozen=True, slots=True)
class AddressResult:
    """One (endpoint, address) outcome: a judged chain, or a classified error."""

    endpoint: Endpoint
    ip: str | None  # None when the name did not resolve
    scanned_at: datetime
    error: ScanError | None = None
    chain: tuple[CertFacts, ...] = ()  # as sent by the server, leaf first
    verdict: Verdict | None = None
    tls_version: str | None = None
    cipher: str | None = None
    elapsed: float = 0.0

    @property
    def state(self) -> State:
        if self.error is not None or self.verdict is None:
            return State.ERROR
        return self.verdict.state

    @property
    def leaf(self) -> CertFacts | None:
        return self.chain[0] if self.chain else None

    @property
    def target(self) -> ScanTarget | None:
        return self.endpoint.at(self.ip) if self.ip else None


@functools.lru_cache(maxsize=8)
def load_trust_store(ca_file: str | None, system: bool = True) -> TrustStore:
    """Trust stores are read-only once loaded, so one per configuration is shared."""
    return TrustStore([ca_file] if ca_file else (), system=system)


class Scanner:
    """A long-lived scanner: owns the trust store, resolver, TLS context and concurrency limits.

    Build one per process (per event loop) and call `scan_endpoint` / `scan` as often as needed.
    """

    def __init__(self, options: ScanOptions, trust_store: TrustStore | None = None) -> None:
        self.options = options
        self.trust_store = trust_store or load_trust_store(options.ca_file, options.system_trust)
        self.resolver = Resolver(options.timeout, options.resolver)
        self.client = TLSClient(options.timeout, options.max_chain_bytes)
        self._slots = asyncio.Semaphore(options.concurrency)
        self._per_address: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def _address_slot(self, ip: str) -> AsyncIterator[None]:
        entry = self._per_address.get(ip)
        if entry is None:
            entry = self._per_address[ip] = (asyncio.Semaphore(self.options.per_address_concurrency), [0])
        semaphore, users = entry
        users[0] += 1
        try:
            # Per address first: waiting for a busy address must not hold a global slot.
            async with semaphore, self._slots:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._per_address[ip]

    async def scan_endpoint(self, endpoint: Endpoint) -> list[AddressResult]:
        """Resolve `endpoint` and scan each of its addresses; one result per address.

        A name that does not resolve gives a single result with `ip=None` and the error.
        """
        try:
            addresses = await self.resolver.resolve(endpoint.host)
        except ScanFailure as failure:
            return [AddressResult(endpoint, None, utc_now(), error=failure.error)]
        results = await asyncio.gather(*(self.scan_target(endpoint.at(ip)) for ip in addresses))
        return mark_stale_deployments(results)

    async def scan_target(self, target: ScanTarget) -> AddressResult:
        """Probe one address already resolved. The guard is checked on exactly this address."""
        endpoint = target.endpoint
        blocked = check_address(target.ip, self.options.allow_private_targets)
        if blocked:
            error = ScanError(ErrorKind.BLOCKED, blocked_message(target.ip, blocked))
            return AddressResult(endpoint, target.ip, utc_now(), error=error)
        async with self._address_slot(target.ip):
            probe = await self.client.probe(target)
        return self.judge_probe(probe)

    def judge_probe(self, probe: ProbeResult) -> AddressResult:
        target = probe.target
        now = utc_now()
        common = {"tls_version": probe.tls_version, "cipher": probe.cipher, "elapsed": probe.elapsed}
        if probe.error is not None:
            return AddressResult(target.endpoint, target.ip, now, error=probe.error, **common)
        try:
            chain = chain_facts(probe.chain)
        except ValueError as exc:
            error = ScanError(ErrorKind.GARBAGE, f"server sent a certificate that cannot be parsed: {exc}")
            return AddressResult(target.endpoint, target.ip, now, error=error, **common)
        verdict = judge(
            chain,
            hostname=target.host,
            now=now,
            trust_store=self.trust_store,
            warn_days=self.options.warn_days,
            crit_days=self.options.crit_days,
        )
        return AddressResult(target.endpoint, target.ip, now, chain=chain, verdict=verdict, **common)

    async def scan(self, endpoints: Iterable[Endpoint]) -> list[AddressResult]:
        """Scan many endpoints; results come grouped by endpoint, in the order given."""
        return [result for results in await self.scan_grouped(endpoints) for result in results]

    async def scan_grouped(self, endpoints: Iterable[Endpoint]) -> list[list[AddressResult]]:
        """Scan many endpoints; one list of address results per endpoint, in the order given."""
        endpoints = list(endpoints)
        per_endpoint: list[list[AddressResult]] = [[] for _ in endpoints]
        queue = iter(enumerate(endpoints))

        async def worker() -> None:
            # A fixed pool of workers instead of one task per endpoint keeps memory flat
            # for very long target lists.
            for index, endpoint in queue:
                per_endpoint[index] = await self.scan_endpoint(endpoint)

        workers = min(len(endpoints), self.options.concurrency)
        await asyncio.gather(*(worker() for _ in range(workers)))
        return per_endpoint


def mark_stale_deployments(results: Sequence[AddressResult]) -> list[AddressResult]:
    """Add a stale_deployment warning to addresses of one endpoint serving an outdated leaf."""
    leaves = [(r.ip, r.leaf) for r in results if r.ip and r.leaf is not None and r.verdict is not None]
    stale = {s.ip: s for s in find_stale_deployments(leaves)}  # type: ignore[arg-type]
    if not stale:
        return list(results)
    marked = []
    for result in results:
        found = stale.get(result.ip or "")
        if found is not None and result.verdict is not None:
            result = replace(result, verdict=result.verdict.with_problem(found.problem()))
        marked.append(result)
    return marked


async def scan_endpoint(endpoint: Endpoint, options: ScanOptions) -> list[AddressResult]:
    """One endpoint, one-off. Callers scanning repeatedly should keep a `Scanner` instead."""
    return await Scanner(options).scan_endpoint(endpoint)


async def scan_endpoints(endpoints: Iterable[Endpoint], options: ScanOptions) -> list[AddressResult]:
    return await Scanner(options).scan(endpoints)
