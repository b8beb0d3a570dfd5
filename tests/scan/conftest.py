from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .certs import CertFactory
from .tls_servers import TestServers, ipv6_available


@pytest.fixture(scope="session")
def servers() -> Iterator[TestServers]:
    with TestServers() as running:
        yield running


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFactory:
    return CertFactory(Path(tmp_path_factory.mktemp("certs")))


@pytest.fixture(scope="session")
def has_ipv6() -> bool:
    return ipv6_available()
