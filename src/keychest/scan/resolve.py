"""Name -> addresses, with a time-out, through the system resolver or a configured DNS server.

The system resolver (getaddrinfo) is the default because it is what the monitored
service's clients use on this host: /etc/hosts, nsswitch and the local stub all count.
A configured resolver (`host:port`) is asked directly with dnspython, which is what the
tests use and what an operator wants when the host's resolver lies (split horizon).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from keychest.scan.errors import ErrorKind, ScanFailure
from keychest.scan.targets import is_ip_literal, parse_endpoint, parse_ip

if TYPE_CHECKING:
    import dns.asyncresolver


def _ordered(addresses: Iterable[str]) -> list[str]:
    """IPv4 first, then IPv6, each in the order given, without duplicates."""
    seen: dict[str, None] = {}
    for address in addresses:
        seen.setdefault(str(ipaddress.ip_address(address)), None)
    v4 = [a for a in seen if ":" not in a]
    v6 = [a for a in seen if ":" in a]
    return v4 + v6


# Lookups in flight at once per Resolver: each is one UDP socket on the event loop (no thread).
MAX_LOOKUPS = 256
# Time-outs within a minute that make a WARNING (once a minute): the resolver is in trouble.
TIMEOUT_WARNING_AT = 10
HOSTS_FILE = "/etc/hosts"

log = logging.getLogger("keychest.scan.resolve")


def read_hosts(path: str = HOSTS_FILE) -> dict[str, list[str]]:
    """Name (lower case) -> addresses, from a hosts file; empty when it cannot be read."""
    names: dict[str, list[str]] = {}
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return names
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or parse_ip(fields[0]) is None:
            continue
        address = str(ipaddress.ip_address(fields[0].split("%", 1)[0]))
        for name in fields[1:]:
            names.setdefault(name.lower().rstrip("."), []).append(address)
    return names


class Resolver:
    """Resolves names to addresses. Build one and reuse it: it holds the dnspython resolver.

    Without a configured nameserver: names in /etc/hosts are answered from it, all others by
    dnspython's asynchronous resolver with the nameservers of /etc/resolv.conf. Not
    getaddrinfo: its few shared worker threads fill with slow lookups, and then even
    ``localhost`` waits behind them and times out (issue 16 item 7). Each lookup has its own
    time-out; getaddrinfo remains only for a host without a readable resolv.conf.
    """

    def __init__(
        self,
        timeout: float,
        nameserver: str | None = None,
        *,
        resolv_conf: str = "/etc/resolv.conf",
        hosts_file: str = HOSTS_FILE,
    ) -> None:
        self.timeout = timeout
        self._dns: dns.asyncresolver.Resolver | None = None
        self._hosts: dict[str, list[str]] = {}
        self._slots = asyncio.Semaphore(MAX_LOOKUPS)
        self._recent_timeouts: deque[float] = deque()
        self._warned_at = -60.0
        self.timeouts = 0
        if nameserver is None:
            self._hosts = read_hosts(hosts_file)
            import dns.asyncresolver
            import dns.resolver

            try:
                system = dns.asyncresolver.Resolver(filename=resolv_conf)
            except (dns.resolver.NoResolverConfiguration, OSError):
                system = None
            if system is not None and system.nameservers:
                system.lifetime = timeout
                system.timeout = max(0.2, timeout / 3)
                self._dns = system
        else:
            where = parse_endpoint(nameserver, default_port=53)
            if not is_ip_literal(where.host):
                raise ValueError(f"resolver must be an IP address with an optional port: {nameserver!r}")
            # Imported here: dnspython costs start-up time that system-resolver scans never need.
            import dns.asyncresolver

            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [where.host]
            resolver.port = where.port
            resolver.lifetime = timeout
            # Per-try time-out below the lifetime, so a lost UDP datagram is retried in time.
            resolver.timeout = max(0.2, timeout / 3)
            self._dns = resolver

    async def resolve(self, host: str) -> list[str]:
        """Addresses of `host`; raises ScanFailure(DNS or NO_ADDRESS) when there are none."""
        address = parse_ip(host)
        if address is not None:
            return [str(address)]
        local = self._hosts.get(host.lower().rstrip("."))
        if local:
            return _ordered(local)
        if self._dns is not None:
            async with self._slots:
                addresses = await self._resolve_dns(host)
        else:
            addresses = await self._resolve_system(host)
        if not addresses:
            raise ScanFailure(ErrorKind.NO_ADDRESS, f"{host} has no A or AAAA record")
        return addresses

    async def _resolve_system(self, host: str) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            # getaddrinfo runs in a thread that cannot be cancelled; the time-out at least
            # frees the probe, and the thread ends when the libc resolver gives up.
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, None, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM),
                self.timeout,
            )
        except TimeoutError:
            raise ScanFailure(
                ErrorKind.DNS, f"DNS lookup of {host} timed out after {self.timeout:g}s"
            ) from None
        except socket.gaierror as exc:
            if exc.errno in (getattr(socket, "EAI_NODATA", None), getattr(socket, "EAI_ADDRFAMILY", None)):
                raise ScanFailure(ErrorKind.NO_ADDRESS, f"{host} has no A or AAAA record") from None
            if exc.errno == socket.EAI_NONAME:
                raise ScanFailure(ErrorKind.DNS, f"{host} does not resolve") from None
            raise ScanFailure(ErrorKind.DNS, f"DNS lookup of {host} failed: {exc.strerror}") from None
        except UnicodeError:
            raise ScanFailure(ErrorKind.DNS, f"{host} is not a valid DNS name") from None
        return _ordered(str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6))

    def _timed_out(self) -> None:
        """Count a time-out; a minute with many of them is a WARNING, not a row of INFO lines."""
        self.timeouts += 1
        now = time.monotonic()
        window = self._recent_timeouts
        window.append(now)
        while window and window[0] < now - 60:
            window.popleft()
        if len(window) >= TIMEOUT_WARNING_AT and now - self._warned_at >= 60:
            self._warned_at = now
            log.warning(
                "%d DNS lookups timed out in the last minute (after %gs each): the resolver is slow "
                "or unreachable; names in %s are still answered",
                len(window),
                self.timeout,
                HOSTS_FILE,
            )

    async def _resolve_dns(self, host: str) -> list[str]:
        assert self._dns is not None
        results = await asyncio.gather(
            self._query(host, "A"), self._query(host, "AAAA"), return_exceptions=True
        )
        addresses: list[str] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            addresses.extend(result)
        return _ordered(addresses)

    async def _query(self, host: str, rdtype: str) -> list[str]:
        import dns.exception
        import dns.resolver

        assert self._dns is not None
        try:
            answer = await self._dns.resolve(host, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            raise ScanFailure(ErrorKind.DNS, f"{host} does not exist (NXDOMAIN)") from None
        except dns.resolver.LifetimeTimeout:
            self._timed_out()
            raise ScanFailure(
                ErrorKind.DNS, f"DNS lookup of {host} {rdtype} timed out after {self.timeout:g}s"
            ) from None
        except dns.resolver.NoNameservers as exc:
            raise ScanFailure(ErrorKind.DNS, f"DNS lookup of {host} {rdtype} failed: {exc}") from None
        except dns.exception.DNSException as exc:
            raise ScanFailure(ErrorKind.DNS, f"DNS lookup of {host} {rdtype} failed: {exc}") from None
        if answer.rrset is None:
            return []
        return [rdata.address for rdata in answer.rrset]
