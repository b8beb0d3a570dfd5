"""Reads are reads: the line API's `expiration` costs no commit of its own (issue 16, item 9).

Dispatcher and WriteBatcher in-process on a real database (SQLite, and PostgreSQL when
KEYCHEST_TEST_DATABASE_URL is set); each request waits for its answer before the next is
sent, the way bash clients arrive, so group commit cannot hide a commit per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keychest.config import Settings
from keychest.protocol.line import Response, parse_request
from keychest.servers.dispatch import Dispatcher
from keychest.servers.line import WriteBatcher
from keychest.service import domains, keys
from keychest.service.facade import Keychest
from keychest.store.db import Database, upgrade
from keychest.store.models import ApiKey

REQUESTS = 200
CLIENT_IP = "192.0.2.77"


@pytest.fixture
def service(db_url: str) -> Iterator[Keychest]:
    db = Database(db_url)
    upgrade(db)
    yield Keychest(db, Settings(db_url=db_url, data_dir=Path("."), mail_domain="keychest.test"))
    db.dispose()


async def ask(dispatcher: Dispatcher, line: str, ip: str) -> Response:
    request = parse_request(line.encode())
    assert request is not None
    answer: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
    now = dispatcher.handle(request, ip, answer.set_result)
    return now if now is not None else await asyncio.wait_for(answer, 30)


def key_row(service: Keychest, key_id: int) -> ApiKey:
    return next(row for row in service.read(keys.list_all) if row.id == key_id)


def test_expiration_requests_cost_far_fewer_commits_than_requests(service: Keychest) -> None:
    issued = service.call(keys.create)
    service.call(domains.add, issued.key, "www.example.net")
    assert key_row(service, issued.id).last_used_ip != CLIENT_IP

    async def go() -> tuple[list[Response], int, int]:
        batcher = WriteBatcher(service)
        batcher.start()
        dispatcher = Dispatcher(service, batcher.submit)
        line = f"command expiration apikey {issued.key} domain www.example.net"
        answers = [await ask(dispatcher, line, CLIENT_IP) for _ in range(REQUESTS)]
        unknown = await ask(
            dispatcher, "command expiration apikey nosuchkeynosuchkey00 domain x.example", CLIENT_IP
        )
        answers.append(unknown)
        await batcher.stop()
        return answers, batcher.batches, batcher.reads

    answers, commits, reads = asyncio.run(go())
    assert (
        answers[:REQUESTS] == [Response(200, "not scanned yet", data="state=pending addresses=0")] * REQUESTS
    )
    assert answers[-1].code == 401 and answers[-1].text.endswith("get one with: command apikey")
    assert reads == REQUESTS + 1
    # Before: one commit per request (201). Now: the last-use stamps, in a commit or two.
    assert commits <= 5, commits
    # The stamp arrived (written by the writer, at the latest when it stopped).
    row = key_row(service, issued.id)
    assert row.last_used_ip == CLIENT_IP
    assert row.last_used_at is not None


def test_last_used_stamp_of_a_read_arrives_while_the_server_runs(service: Keychest) -> None:
    issued = service.call(keys.create)
    service.call(domains.add, issued.key, "www.example.net")

    async def go() -> tuple[str | None, float]:
        batcher = WriteBatcher(service)
        batcher.start()
        dispatcher = Dispatcher(service, batcher.submit)
        line = f"command expiration apikey {issued.key} domain www.example.net"
        assert (await ask(dispatcher, line, "192.0.2.78")).code == 200
        started = time.monotonic()
        seen: str | None = None
        # Waits for the positive event: the stamp written without any write to carry it.
        while time.monotonic() - started < 20:
            seen = (await asyncio.to_thread(key_row, service, issued.id)).last_used_ip
            if seen == "192.0.2.78":
                break
            await asyncio.sleep(0.05)
        waited = time.monotonic() - started
        await batcher.stop()
        return seen, waited

    seen, waited = asyncio.run(go())
    assert seen == "192.0.2.78"
    assert waited < 10


def test_a_write_carries_the_stamps_noted_by_reads(service: Keychest) -> None:
    issued = service.call(keys.create)
    service.call(domains.add, issued.key, "www.example.net")

    async def go() -> int:
        batcher = WriteBatcher(service)
        batcher.start()
        dispatcher = Dispatcher(service, batcher.submit)
        line = f"command expiration apikey {issued.key} domain www.example.net"
        assert (await ask(dispatcher, line, "192.0.2.79")).code == 200
        # A write right after the read commits the stamp with it: one commit for both.
        added = await ask(dispatcher, f"command add apikey {issued.key} domain www.example.org", "192.0.2.80")
        assert added.code == 200
        assert len(service.stamps) == 0
        await batcher.stop()
        return batcher.batches

    assert asyncio.run(go()) == 1
    assert key_row(service, issued.id).last_used_ip == "192.0.2.80"
