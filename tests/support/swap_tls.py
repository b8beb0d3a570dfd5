"""A loopback TLS server whose certificate is replaced while it runs, as a renewal does."""

from __future__ import annotations

import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives import hashes

from tests.scan.certs import ServerCert
from tests.scan.tls_servers import TestServers


def sha256_of(cert: ServerCert) -> str:
    return cert.leaf.fingerprint(hashes.SHA256()).hex()


class SwappableTLS:
    """Serves ``cert`` on a free port until :meth:`swap` loads another into the same context.

    The context is reloaded on the servers' own event loop, between handshakes: what the
    next connection sees is the new certificate, whatever name (or no SNI) it asks for.
    """

    def __init__(self, servers: TestServers, cert: ServerCert, hosts: Iterable[str] = ("127.0.0.1",)) -> None:
        self._servers = servers
        self._dir = tempfile.TemporaryDirectory(prefix="keychest-swap-")
        self._swaps = 0
        self._context: ssl.SSLContext | None = None
        self.port = servers.tls(cert.chain_pem, cert.key_pem, hosts=list(hosts), configure=self._keep)
        self.serving = cert

    def _keep(self, context: ssl.SSLContext) -> None:
        self._context = context

    def swap(self, cert: ServerCert) -> None:
        assert self._context is not None
        self._swaps += 1
        chain = Path(self._dir.name) / f"chain{self._swaps}.pem"
        key = Path(self._dir.name) / f"key{self._swaps}.pem"
        chain.write_bytes(cert.chain_pem)
        key.write_bytes(cert.key_pem)
        context = self._context

        async def load() -> None:
            context.load_cert_chain(chain, key)

        self._servers._loop.call(load())
        self.serving = cert

    def close(self) -> None:
        self._dir.cleanup()
