"""Name -> addresses, with a time-out, through the system resolver or a configured DNS server.

The system resolver (getaddrinfo) is the default because it is what the monitored
service's clients use on this host: /etc/hosts, nsswitch and the local stub all count.
A configured resolver (`host:port`) is asked directly with dnspython, which is what the
tests use and what an operator wants when the host's resolver lies (split horizon).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
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


class Resolver:
    """Resolves names to addresses. Build one and reuse it: it holds the dnspython resolver."""

    def __init__(self, timeout: float, nameserver: str | None = None) -> None:
        self.timeout = timeout
        self._dns: dns.asyncresolver.Resolver | None = None
        if nameserver is not None:
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
        if self._dns is not None:
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
