"""One live `keychest serve` (SQLite, default limits) and one SMTP sink for the tests of this
package that need nothing special; each test speaks from 127.0.0.x addresses of its own."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.notify.smtp import SmtpSink
from tests.support.net import wait_for_port
from tests.support.server import LiveServer, start_server


@dataclass
class Env:
    server: LiveServer
    sink: SmtpSink


@pytest.fixture(scope="package")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with SmtpSink() as sink:
        server = start_server(Path(tmp_path_factory.mktemp("security")), "--smtp", sink.address)
        wait_for_port(server.http_port)  # start_server waits for the line API only
        try:
            yield Env(server, sink)
        finally:
            server.stop()
