"""Domain registration expiry through RDAP (RFC 9082/9083/9224).

The registrable domain of a name comes from the Public Suffix List as bundled with the
`publicsuffixlist` package (ICANN section: `x.github.io` is registered as `github.io`), so
nothing is downloaded at run time for it. The RDAP server of a TLD comes from IANA's
bootstrap file (or `--rdap-bootstrap URL`), fetched once a day; each registrable domain is
asked once a day however many names sit under it, and a registry without RDAP, an error or
an answer without an `expiration` event is `None`, remembered for the day like an answer (no
retry storm). Every request goes through the scanner's guarded `Fetcher` (private-address
guard, one deadline, a size cap); redirects are followed a few times, each one guarded.

The pure parts (`registrable_domain`, `rdap_base_urls`, `expiration_of`, `problems`) do no I/O.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urljoin

from keychest.scan.fetch import Fetcher, FetchError
from keychest.scan.judge import Problem, Severity, days_left
from keychest.scan.suffixes import DOMAIN_CRIT_DAYS as CRIT_DAYS
from keychest.scan.suffixes import DOMAIN_WARN_DAYS as WARN_DAYS
from keychest.scan.suffixes import registrable_domain

IANA_BOOTSTRAP = "https://data.iana.org/rdap/dns.json"
CACHE_FOR = timedelta(days=1)
MAX_REDIRECTS = 3
MAX_BYTES = 512 * 1024


def rdap_base_urls(bootstrap: Mapping[str, Any], domain: str) -> list[str]:
    """The RDAP base URLs the bootstrap file gives for `domain`'s longest matching suffix."""
    labels = domain.split(".")
    best: tuple[int, list[str]] = (0, [])
    for service in bootstrap.get("services", []):
        if not (isinstance(service, list) and len(service) >= 2):
            continue
        suffixes, urls = service[0], service[1]
        for suffix in suffixes if isinstance(suffixes, list) else []:
            if not isinstance(suffix, str):
                continue
            size = suffix.count(".") + 1
            if size > best[0] and labels[-size:] == suffix.lower().split("."):
                best = (size, [u for u in urls if isinstance(u, str)])
    # https first, as RFC 9224 asks.
    return sorted(best[1], key=lambda url: not url.startswith("https:"))


def expiration_of(answer: Mapping[str, Any]) -> datetime | None:
    """The date of the `expiration` event of an RDAP domain answer (RFC 9083 4.5)."""
    for event in answer.get("events", []) or []:
        if isinstance(event, dict) and event.get("eventAction") == "expiration":
            text = event.get("eventDate")
            if isinstance(text, str):
                try:
                    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
                except ValueError:
                    return None
                return moment if moment.tzinfo else None
    return None


def problems(domain: str, expires: datetime | None, now: datetime) -> list[Problem]:
    if expires is None:
        return []
    if now >= expires:
        return [
            Problem(
                "domain_expired",
                Severity.CRITICAL,
                f"the domain {domain} expired on {expires:%Y-%m-%d} (registration, RDAP)",
            )
        ]
    left = days_left(expires, now)
    if left < WARN_DAYS:
        severity = Severity.CRITICAL if left < CRIT_DAYS else Severity.WARNING
        unit = "day" if left == 1 else "days"
        return [
            Problem(
                "domain_expires_soon",
                severity,
                f"the domain {domain}'s registration expires in {left} {unit} ({expires:%Y-%m-%d}, RDAP)",
            )
        ]
    return []


@dataclass(frozen=True, slots=True)
class Registration:
    domain: str
    expires: datetime | None
    error: str | None = None  # why there is no date (no RDAP server, no answer, no event)


class RdapClient:
    """One per scanner: the bootstrap file and each domain's answer cached for a day, and
    concurrent lookups of one domain sharing one request."""

    def __init__(
        self,
        fetcher: Fetcher,
        clock: Callable[[], datetime],
        bootstrap_url: str = IANA_BOOTSTRAP,
    ) -> None:
        self.fetcher = fetcher
        self.clock = clock
        self.bootstrap_url = bootstrap_url
        self._bootstrap: tuple[datetime, Mapping[str, Any] | None] | None = None
        self._bootstrap_lock = asyncio.Lock()
        self._answers: dict[str, tuple[datetime, asyncio.Future[Registration]]] = {}
        self.lookups = 0  # domain requests made (not counting redirects), for tests and figures

    async def lookup(self, host: str) -> Registration | None:
        """The registration of `host`'s registrable domain; None for an address or a suffix."""
        domain = registrable_domain(host)
        if domain is None:
            return None
        now = self.clock()
        cached = self._answers.get(domain)
        if cached is not None and now - cached[0] < CACHE_FOR:
            return await asyncio.shield(cached[1])
        future: asyncio.Future[Registration] = asyncio.get_running_loop().create_future()
        self._answers[domain] = (now, future)
        registration = Registration(domain, None, "RDAP lookup cancelled")
        try:
            registration = await self._ask(domain)
        except Exception as exc:  # a lookup must never break a scan
            registration = Registration(domain, None, f"RDAP lookup failed: {type(exc).__name__}: {exc}")
        finally:
            # Whoever waits on this lookup gets an answer, even when this task was cancelled.
            future.set_result(registration)
        return registration

    async def _bootstrap_file(self) -> Mapping[str, Any] | None:
        async with self._bootstrap_lock:
            now = self.clock()
            if self._bootstrap is not None and now - self._bootstrap[0] < CACHE_FOR:
                return self._bootstrap[1]
            try:
                data = await self._get_json(self.bootstrap_url)
            except FetchError:
                data = None
            self._bootstrap = (now, data)
            return data

    async def _ask(self, domain: str) -> Registration:
        bootstrap = await self._bootstrap_file()
        if bootstrap is None:
            return Registration(domain, None, f"RDAP bootstrap file unavailable ({self.bootstrap_url})")
        bases = rdap_base_urls(bootstrap, domain)
        if not bases:
            return Registration(domain, None, "the registry has no RDAP server")
        self.lookups += 1
        base = bases[0] if bases[0].endswith("/") else bases[0] + "/"
        try:
            answer = await self._get_json(urljoin(base, f"domain/{domain}"))
        except FetchError as exc:
            return Registration(domain, None, str(exc))
        expires = expiration_of(answer)
        return Registration(domain, expires, None if expires else "no expiration event in the RDAP answer")

    async def _get_json(self, url: str) -> Mapping[str, Any]:
        for _ in range(MAX_REDIRECTS + 1):
            response = await self.fetcher.get(url, {"Accept": "application/rdap+json, application/json"})
            if response.status in (301, 302, 303, 307, 308) and response.headers.get("location"):
                url = urljoin(url, response.headers["location"])
                continue
            if response.status != 200:
                raise FetchError(f"{url}: HTTP {response.status}")
            try:
                data = json.loads(response.body)
            except ValueError:
                raise FetchError(f"{url}: not JSON") from None
            if not isinstance(data, dict):
                raise FetchError(f"{url}: not a JSON object")
            return data
        raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects")


def rdap_fetcher(base: Fetcher) -> Fetcher:
    """A fetcher like the scanner's, with RDAP's own size cap."""
    return Fetcher(
        base.resolver,
        timeout=base.timeout,
        max_bytes=MAX_BYTES,
        allow_private_targets=base.allow_private_targets,
        ca_file=base.ca_file,
    )
