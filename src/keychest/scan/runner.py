"""Scan endpoints: resolve, guard, probe every address, judge. The asyncio shell around the pure parts.

Concurrency is bounded twice: globally (`concurrency` probes in flight) and per address
(`per_address_concurrency`), so that a thousand names on one shared-hosting IP do not turn
into a thousand simultaneous handshakes against one server.

Waiting for a per-address slot holds nothing global. An endpoint all of whose addresses
wait for their address is *parked*: callers that bound how many endpoints they scan at
once (the scheduler's `--scan-concurrency`, `scan_grouped`'s pool) count only the busy
ones, so a tarpit (a hundred names on one address that accept and never answer) makes its
own names wait their turn while everybody else's scans go ahead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime

from cryptography import x509

from keychest.scan import rdap
from keychest.scan.ari import ari_problems
from keychest.scan.checks import AriChecker, RevocationChecker
from keychest.scan.errors import ErrorKind, ScanError, ScanFailure
from keychest.scan.fetch import Fetcher
from keychest.scan.guard import blocked_message, check_address
from keychest.scan.judge import (
    CertFacts,
    Problem,
    TrustStore,
    Verdict,
    chain_facts,
    judge,
    old_protocol_problem,
    utc_now,
)
from keychest.scan.lifetime import lifetime_problem
from keychest.scan.model import AddressResult, ScanOptions, mark_stale_deployments
from keychest.scan.probe import ProbeResult, TLSClient
from keychest.scan.resolve import Resolver
from keychest.scan.revocation import Revocation, unknown
from keychest.scan.revocation import problems as revocation_problems
from keychest.scan.targets import Endpoint, ScanTarget

__all__ = [
    "AddressResult",
    "PARKED_PER_SLOT",
    "ScanOptions",
    "Scanner",
    "load_trust_store",
    "mark_stale_deployments",
    "scan_endpoint",
    "scan_endpoints",
]

# How many parked endpoints a caller may hold per busy-endpoint slot: enough that a tarpit
# cannot fill them before the names behind it start, few enough to bound memory (and, in
# the scheduler, how long a parked endpoint's lease must last).
PARKED_PER_SLOT = 16


class _Parking:
    """Whether one endpoint is parked: every address it still has to scan is waiting for
    a per-address slot (so it uses no global slot and does no work)."""

    __slots__ = ("parked", "pending", "scanner", "waiting")

    def __init__(self, scanner: Scanner, pending: int) -> None:
        self.scanner = scanner
        self.pending = pending
        self.waiting = 0
        self.parked = False

    def change(self, pending: int = 0, waiting: int = 0) -> None:
        self.pending += pending
        self.waiting += waiting
        parked = self.pending > 0 and self.waiting == self.pending
        if parked != self.parked:
            self.parked = parked
            self.scanner._parked += 1 if parked else -1
            self.scanner._notify()


@functools.lru_cache(maxsize=8)
def load_trust_store(ca_file: str | None, system: bool = True) -> TrustStore:
    """Trust stores are read-only once loaded, so one per configuration is shared."""
    return TrustStore([ca_file] if ca_file else (), system=system)


class Scanner:
    """A long-lived scanner: owns the trust store, resolver, TLS context and concurrency limits.

    Build one per process (per event loop) and call `scan_endpoint` / `scan` as often as needed.
    """

    def __init__(
        self,
        options: ScanOptions,
        trust_store: TrustStore | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.options = options
        self.trust_store = trust_store or load_trust_store(options.ca_file, options.system_trust)
        self.resolver = Resolver(options.timeout, options.resolver)
        self.client = TLSClient(
            options.timeout, options.max_chain_bytes, options.client_cert, options.client_key
        )
        # CRL, OCSP and ARI answers are cached here, for every endpoint this scanner sees.
        self.fetcher = Fetcher(
            self.resolver,
            timeout=options.timeout,
            allow_private_targets=options.allow_private_targets,
            ca_file=options.ca_file,
        )
        self.revocation = RevocationChecker(self.fetcher, clock)
        self.ari = AriChecker(self.fetcher, clock, options.acme_directories)
        self.clock = clock
        self.rdap = (
            rdap.RdapClient(
                rdap.rdap_fetcher(self.fetcher), clock, options.rdap_bootstrap or rdap.IANA_BOOTSTRAP
            )
            if options.rdap
            else None
        )
        self._slots = asyncio.Semaphore(options.concurrency)
        self._per_address: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}
        self._parked = 0
        self._change: asyncio.Future[None] | None = None

    # --- parking: what callers that bound endpoints in flight need to know -------------------

    @property
    def parked(self) -> int:
        """Endpoints being scanned that only wait for busy addresses (see the module docstring)."""
        return self._parked

    def room(self, in_flight: int, limit: int) -> int:
        """How many more endpoints a caller with `in_flight` unfinished scans may start, when
        it allows `limit` busy ones: parked scans do not count against `limit`, but at most
        `limit * PARKED_PER_SLOT` of them are held."""
        busy = in_flight - self._parked
        return max(0, min(limit - busy, limit * (1 + PARKED_PER_SLOT) - in_flight))

    async def wait_for_change(self, timeout: float | None = None) -> None:
        """Return when an endpoint parks or unparks, or after `timeout` seconds."""
        if self._change is None or self._change.done():
            self._change = asyncio.get_running_loop().create_future()
        await asyncio.wait([self._change], timeout=timeout)

    def _notify(self) -> None:
        if self._change is not None and not self._change.done():
            self._change.set_result(None)

    @contextlib.asynccontextmanager
    async def _address_slot(self, ip: str, parking: _Parking | None) -> AsyncIterator[None]:
        entry = self._per_address.get(ip)
        if entry is None:
            entry = self._per_address[ip] = (asyncio.Semaphore(self.options.per_address_concurrency), [0])
        semaphore, users = entry
        users[0] += 1
        try:
            # Per address first, and nothing held while waiting for it: a busy (or tarpitted)
            # address delays only the names on it.
            if semaphore.locked() and parking is not None:
                parking.change(waiting=1)
                try:
                    await semaphore.acquire()
                finally:
                    parking.change(waiting=-1)
            else:
                await semaphore.acquire()
            try:
                async with self._slots:
                    yield
            finally:
                semaphore.release()
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._per_address[ip]

    async def scan_endpoint(self, endpoint: Endpoint) -> list[AddressResult]:
        """Resolve `endpoint` and scan each of its addresses; one result per address.

        A name that does not resolve gives a single result with `ip=None` and the error.
        """
        # --resolve: this name and port go to the addresses given (curl's meaning), unresolved.
        pinned = [
            ip for host, port, ip in self.options.resolve if (host, port) == (endpoint.host, endpoint.port)
        ]
        try:
            addresses = pinned or await self.resolver.resolve(endpoint.host)
        except ScanFailure as failure:
            return await self._with_registration(
                endpoint, [AddressResult(endpoint, None, utc_now(), error=failure.error)]
            )
        parking = _Parking(self, len(addresses))
        try:
            results = await asyncio.gather(*(self.scan_target(endpoint.at(ip), parking) for ip in addresses))
        finally:
            if parking.parked:  # cancelled while parked
                parking.change(pending=-parking.pending, waiting=-parking.waiting)
        return await self._with_registration(endpoint, mark_stale_deployments(results))

    async def _with_registration(
        self, endpoint: Endpoint, results: list[AddressResult]
    ) -> list[AddressResult]:
        """The domain's registration expiry (RDAP) on every row, and its problems on judged ones."""
        if self.rdap is None:
            return results
        registration = await self.rdap.lookup(endpoint.host)
        if registration is None or registration.expires is None:
            return results
        found = rdap.problems(registration.domain, registration.expires, self.clock())
        marked = []
        for result in results:
            verdict = result.verdict
            if verdict is not None:
                for problem in found:
                    verdict = verdict.with_problem(problem)
            marked.append(
                dataclasses.replace(result, verdict=verdict, registration_expires=registration.expires)
            )
        return marked

    async def scan_target(self, target: ScanTarget, parking: _Parking | None = None) -> AddressResult:
        """Probe one address already resolved. The guard is checked on exactly this address."""
        try:
            endpoint = target.endpoint
            blocked = check_address(target.ip, self.options.allow_private_targets)
            if blocked:
                error = ScanError(ErrorKind.BLOCKED, blocked_message(target.ip, blocked))
                return AddressResult(endpoint, target.ip, utc_now(), error=error)
            async with self._address_slot(target.ip, parking):
                probe = await self.client.probe(target)
                old = None
                if self.options.old_protocols and probe.ok:
                    old = await self.client.probe(target, old=True)
            result = self.judge_probe(probe)
            if old is not None and old.ok and old.tls_version and result.verdict is not None:
                result = dataclasses.replace(
                    result, verdict=result.verdict.with_problem(old_protocol_problem(old.tls_version))
                )
            if result.verdict is not None and result.chain:
                result = await self.check_renewal(result, probe.stapled_ocsp)
            return result
        finally:
            if parking is not None:
                parking.change(pending=-1)

    def judge_probe(self, probe: ProbeResult) -> AddressResult:
        target = probe.target
        now = utc_now()

        def result(
            error: ScanError | None, chain: tuple[CertFacts, ...] = (), verdict: Verdict | None = None
        ) -> AddressResult:
            return AddressResult(
                target.endpoint,
                target.ip,
                now,
                error=error,
                chain=chain,
                verdict=verdict,
                tls_version=probe.tls_version,
                cipher=probe.cipher,
                elapsed=probe.elapsed,
            )

        if probe.error is not None and not probe.chain:
            return result(probe.error)
        try:
            chain = chain_facts(probe.chain)
        except ValueError as exc:
            return result(
                ScanError(ErrorKind.GARBAGE, f"server sent a certificate that cannot be parsed: {exc}")
            )
        verdict = judge(
            chain,
            hostname=target.host,
            now=now,
            trust_store=self.trust_store,
            warn_days=self.options.warn_days,
            crit_days=self.options.crit_days,
        )
        lifetime = lifetime_problem(chain[0]) if self._publicly_trusted(verdict, chain) else None
        if lifetime is not None:
            verdict = verdict.with_problem(lifetime)
        # A certificate sent before the handshake failed (a server that wants a client
        # certificate) is judged and shown, and the row stays an error.
        return result(probe.error, chain, verdict)

    def _publicly_trusted(self, verdict: Verdict, chain: tuple[CertFacts, ...]) -> bool:
        """Trusted through the system's CA bundle: the lifetime policy binds public CAs only."""
        if not verdict.trusted or not self.options.system_trust:
            return False
        if not self.options.ca_file:
            return True
        return load_trust_store(None, True).verify([c.der for c in chain]).trusted

    async def check_renewal(self, result: AddressResult, stapled: bytes | None) -> AddressResult:
        """Revocation (unless switched off), must-staple and ARI, each within its own deadline
        (a slow CA costs at most that, and gives `unknown`, never a verdict)."""
        verdict = result.verdict
        leaf = result.leaf
        assert verdict is not None and leaf is not None
        issuer = verdict.path[1].der if len(verdict.path) > 1 else None
        if issuer is None and len(result.chain) > 1:
            issuer = result.chain[1].der
        budget = 2 * self.options.timeout
        revocation: Revocation | None = None
        if self.options.revocation:
            try:
                async with asyncio.timeout(budget):
                    revocation = await self.revocation.check(leaf.der, issuer, stapled)
            except TimeoutError:
                revocation = unknown(None, f"no revocation answer within {budget:g}s")
        try:
            async with asyncio.timeout(budget):
                info = await self.ari.check(leaf.der, leaf.issuer_organization)
        except TimeoutError:
            info = None
        problems: list[Problem] = revocation_problems(
            revocation, x509.load_der_x509_certificate(leaf.der), stapled=bool(stapled)
        )
        problems += ari_problems(info, result.scanned_at)
        for problem in problems:
            verdict = verdict.with_problem(problem)
        return dataclasses.replace(result, verdict=verdict, revocation=revocation, ari=info)

    async def scan(self, endpoints: Iterable[Endpoint]) -> list[AddressResult]:
        """Scan many endpoints; results come grouped by endpoint, in the order given."""
        return [result for results in await self.scan_grouped(endpoints) for result in results]

    async def scan_grouped(self, endpoints: Iterable[Endpoint]) -> list[list[AddressResult]]:
        """Scan many endpoints; one list of address results per endpoint, in the order given.

        Up to `concurrency` endpoints are busy at once; parked ones (waiting for a busy
        address) do not count, so a slow address cannot hold up the rest of the list.
        """
        endpoints = list(endpoints)
        per_endpoint: list[list[AddressResult]] = [[] for _ in endpoints]
        in_flight = 0
        tasks: set[asyncio.Task[None]] = set()

        async def one(index: int, endpoint: Endpoint) -> None:
            nonlocal in_flight
            try:
                per_endpoint[index] = await self.scan_endpoint(endpoint)
            finally:
                in_flight -= 1
                self._notify()

        try:
            for index, endpoint in enumerate(endpoints):
                while self.room(in_flight, self.options.concurrency) <= 0:
                    await self.wait_for_change()
                in_flight += 1
                task = asyncio.create_task(one(index, endpoint))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.gather(*list(tasks))
        finally:
            for task in tasks:
                task.cancel()
        return per_endpoint


async def scan_endpoint(endpoint: Endpoint, options: ScanOptions) -> list[AddressResult]:
    """One endpoint, one-off. Callers scanning repeatedly should keep a `Scanner` instead."""
    return await Scanner(options).scan_endpoint(endpoint)


async def scan_endpoints(endpoints: Iterable[Endpoint], options: ScanOptions) -> list[AddressResult]:
    return await Scanner(options).scan(endpoints)
