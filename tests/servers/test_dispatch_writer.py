"""`Dispatcher` and `WriteBatcher` in-process, on a real database: no sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from keychest.config import Limits, Settings
from keychest.protocol.line import COMMANDS, Request, Response, help_text, parse_request
from keychest.servers.dispatch import Dispatcher
from keychest.servers.line import WriteBatcher
from keychest.service import domains, keys
from keychest.service.facade import Call, Keychest
from keychest.store.db import Database, upgrade


@pytest.fixture
def service(db_url: str) -> Iterator[Keychest]:
    db = Database(db_url)
    upgrade(db)
    settings = Settings(
        db_url=db_url,
        data_dir=Path("."),
        mail_domain="keychest.test",
        limits=Limits(apikey_burst_per_ip=3, domains_per_unconfirmed_key=0),
    )
    yield Keychest(db, settings)
    db.dispose()


def run_writes(service: Keychest, requests: list[tuple[Call, str]]) -> tuple[list[Response], WriteBatcher]:
    """Submit every call in one loop tick, wait for all answers; return them in order."""

    async def go() -> tuple[list[Response], WriteBatcher]:
        batcher = WriteBatcher(service)
        batcher.start()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Response]] = [loop.create_future() for _ in requests]
        for (call, _), fut in zip(requests, futures, strict=True):
            batcher.submit(call, lambda result: Response(200, str(result)), fut.set_result)
        answers = await asyncio.wait_for(asyncio.gather(*futures), 30)
        await batcher.stop()
        return list(answers), batcher

    return asyncio.run(go())


def test_writer_commits_many_calls_in_few_batches(service: Keychest) -> None:
    key = service.call(keys.create).key
    calls = [(Call(domains.add, (key, f"d{i}.example"), "127.0.0.1"), "") for i in range(300)]
    answers, batcher = run_writes(service, calls)
    assert all(a.code == 200 for a in answers)
    assert batcher.calls == 300
    # The first call starts a commit alone; everything submitted meanwhile goes into the next.
    assert batcher.batches <= 3
    listed = service.read(domains.list_rows, raw_key=key)
    assert sorted(row.domain for row in listed) == sorted(f"d{i}.example" for i in range(300))


def test_writer_refusal_of_one_call_leaves_the_others(service: Keychest) -> None:
    key = service.call(keys.create).key
    calls = [
        (Call(domains.add, (key, "good1.example"), None), ""),
        (Call(domains.add, ("no-such-key-0000000000", "x.example"), None), ""),
        (Call(domains.add, (key, "*.wild.example"), None), ""),
        (Call(domains.add, (key, "good2.example"), None), ""),
    ]
    answers, _ = run_writes(service, calls)
    assert [a.code for a in answers] == [200, 401, 422, 200]
    assert answers[1].text.startswith("unknown API key")


def test_writer_refuses_everything_when_the_sqlite_file_is_gone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = Database(url)
    upgrade(db)
    service = Keychest(db, Settings(db_url=url, data_dir=tmp_path, mail_domain="keychest.test"))
    key = service.call(keys.create).key
    (tmp_path / "k.db").unlink()
    answers, _ = run_writes(service, [(Call(domains.add, (key, "lost.example"), None), "")] * 3)
    assert [a.code for a in answers] == [503, 503, 503]
    db.dispose()


def dispatch(dispatcher: Dispatcher, line: bytes, ip: str | None = "192.0.2.1") -> Response | None:
    request = parse_request(line)
    assert request is not None
    return dispatcher.handle(request, ip, lambda response: None)


def test_dispatcher_answers_at_once_without_the_database(service: Keychest) -> None:
    submitted: list[Call] = []
    dispatcher = Dispatcher(service, lambda call, finish, deliver: submitted.append(call))
    assert dispatch(dispatcher, b"command ping") == Response(200, "pong")
    assert dispatch(dispatcher, b"command help") == Response(200, help_text())
    assert dispatch(dispatcher, b"command maildomain") == Response(
        200, "placeholder mail domain", data="keychest.test"
    )
    assert submitted == []


def test_dispatcher_hands_every_write_command_to_the_writer(service: Keychest) -> None:
    submitted: list[Call] = []
    dispatcher = Dispatcher(service, lambda call, finish, deliver: submitted.append(call))
    immediate = {"ping", "help", "maildomain"}
    for name, spec in COMMANDS.items():
        args = {key: f"v-{key}" for key in spec.required}
        answer = dispatcher.handle(Request(name, args), "192.0.2.7", lambda response: None)
        assert (answer is None) == (name not in immediate), name
    assert [c.args for c in submitted] == [
        (),
        ("v-apikey", "v-email"),
        ("v-apikey", "v-domain"),
        ("v-apikey", "v-domain"),
        ("v-apikey", "v-domain", "v-status", None, None),  # renewal: sha256 and host optional
    ]
    assert {c.ip for c in submitted} == {"192.0.2.7"}


def test_dispatcher_apikey_burst_is_per_address(service: Keychest) -> None:
    submitted: list[Call] = []
    dispatcher = Dispatcher(service, lambda call, finish, deliver: submitted.append(call))
    answers = [dispatch(dispatcher, b"command apikey", "192.0.2.1") for _ in range(5)]
    assert answers[:3] == [None, None, None]
    assert all(a is not None and a.code == 429 for a in answers[3:])
    assert dispatch(dispatcher, b"command apikey", "192.0.2.2") is None
    assert len(submitted) == 4


def test_dispatcher_and_writer_together(service: Keychest) -> None:
    """A request's whole path without a socket: parse, dispatch, group commit, answer."""

    async def go() -> list[Response]:
        batcher = WriteBatcher(service)
        batcher.start()
        dispatcher = Dispatcher(service, batcher.submit)
        loop = asyncio.get_running_loop()
        issued: asyncio.Future[Response] = loop.create_future()
        assert dispatch_to(dispatcher, b"command apikey", issued.set_result) is None
        key = (await issued).data
        assert key
        answers: list[asyncio.Future[Response]] = [loop.create_future() for _ in range(3)]
        lines = [
            f"command add apikey {key} domain www.example.net".encode(),
            f"command add apikey {key} domain www.example.net".encode(),
            b"command add apikey nosuchkeynosuchkey00 domain x.example",
        ]
        for line, fut in zip(lines, answers, strict=True):
            dispatch_to(dispatcher, line, fut.set_result)
        done = list(await asyncio.gather(*answers))
        await batcher.stop()
        return done

    def dispatch_to(dispatcher: Dispatcher, line: bytes, deliver: object) -> Response | None:
        request = parse_request(line)
        assert request is not None
        return dispatcher.handle(request, "127.0.0.1", deliver)  # type: ignore[arg-type]

    added, again, unknown = asyncio.run(go())
    assert added == Response(200, "added www.example.net")
    assert again.code == 200 and again.text.startswith("already monitored www.example.net")
    assert unknown.code == 401 and unknown.text == "unknown API key; get one with: command apikey"
