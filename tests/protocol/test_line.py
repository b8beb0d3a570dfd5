"""The line protocol on bytes alone: no sockets, no database."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keychest.protocol.line import (
    MAX_LINE_BYTES,
    MAX_RESPONSE_BYTES,
    LineError,
    LineFramer,
    Request,
    Response,
    format_response,
    parse_request,
)


def test_keys_in_any_order_and_any_case() -> None:
    a = parse_request(b"command add domain www.example.net apikey K123")
    b = parse_request(b"APIKEY K123 Command ADD Domain www.example.net")
    assert a == b == Request("add", {"domain": "www.example.net", "apikey": "K123"})


def test_carriage_return_and_tabs_are_whitespace() -> None:
    assert parse_request(b"command\tping\r") == Request("ping", {})


def test_blank_line_is_no_request() -> None:
    assert parse_request(b"") is None
    assert parse_request(b"   \r") is None


def test_unknown_keys_are_ignored_but_kept() -> None:
    request = parse_request(b"command ping client hook-1.0")
    assert request is not None and request.command == "ping"


@pytest.mark.parametrize(
    ("line", "code", "words"),
    [
        (b"command", 400, "odd number"),
        (b"apikey K", 400, "missing key command"),
        (b"command add domain x.org", 400, "missing key apikey"),
        (b"command claim apikey K", 400, "missing key email"),
        (b"command frobnicate", 404, "unknown command"),
        (b"command ping command ping", 400, "given twice"),
        (b"command \xff\xfe", 400, "ASCII"),
        (b"command ping\x00", 400, "control"),
        (b"command add apikey K domain " + b"a" * MAX_LINE_BYTES, 413, "too long"),
    ],
)
def test_refusals(line: bytes, code: int, words: str) -> None:
    with pytest.raises(LineError) as caught:
        parse_request(line)
    assert caught.value.code == code
    assert words in caught.value.text


def test_format_ok_with_data() -> None:
    raw = format_response(Response(200, "new key", data="abc-def"))
    assert raw == b"data abc-def\nstatus ok 200 new key\n"


def test_format_error_folds_newlines() -> None:
    assert format_response(Response(422, "bad\nthing")) == b"status error 422 bad thing\n"


def test_framer_splits_and_keeps_partial() -> None:
    framer = LineFramer()
    assert framer.feed(b"command ping\ncommand ap") == [b"command ping"]
    assert framer.has_pending
    assert framer.feed(b"ikey\n") == [b"command apikey"]
    assert not framer.has_pending
    framer.feed(b"command apikey")
    assert framer.take_pending() == b"command apikey"


def test_framer_overflow_answers_earlier_lines_first() -> None:
    framer = LineFramer()
    lines = framer.feed(b"command ping\n" + b"x" * (MAX_LINE_BYTES + 10))
    assert lines == [b"command ping"]
    assert framer.overflowed


@given(st.binary(max_size=2 * MAX_LINE_BYTES))
def test_any_bytes_parse_or_refuse_cleanly(data: bytes) -> None:
    for line in data.split(b"\n"):
        try:
            result = parse_request(line)
        except LineError as exc:
            assert 400 <= exc.code < 500
            raw = format_response(exc.response())
            assert raw.startswith(b"status error ") and raw.count(b"\n") == 1
        else:
            assert result is None or result.command


@given(st.lists(st.binary(min_size=0, max_size=300), max_size=20))
def test_framer_reassembles_any_chunking(chunks: list[bytes]) -> None:
    stream = b"".join(chunks)
    framer = LineFramer()
    got: list[bytes] = []
    for chunk in chunks:
        got += framer.feed(chunk)
    expected = stream.split(b"\n")[:-1]
    if not framer.overflowed:
        assert got == expected
        assert framer.take_pending() == stream.split(b"\n")[-1]
    else:
        assert got == expected[: len(got)]


@given(
    st.text(max_size=3000),
    st.one_of(st.none(), st.text(max_size=3000)),
    st.sampled_from([200, 404, 500]),
)
def test_responses_are_small_and_two_lines_at_most(text: str, data: str | None, code: int) -> None:
    raw = format_response(Response(code, text, data=data))
    assert len(raw) <= MAX_RESPONSE_BYTES
    assert raw.endswith(b"\n") and raw.count(b"\n") == (1 if data is None else 2)
    assert raw.splitlines()[-1].startswith(b"status ok 200 " if code == 200 else b"status error ")
    if data is not None:
        assert raw.startswith(b"data ")


def test_long_texts_are_cut_to_fit_one_read() -> None:
    raw = format_response(Response(200, "0" * 900))
    assert len(raw) <= MAX_RESPONSE_BYTES and raw.startswith(b"status ok 200 000")
    raw = format_response(Response(200, "x" * 900, data="d" * 2000))
    lines = raw.split(b"\n")
    assert (
        len(raw) <= MAX_RESPONSE_BYTES
        and lines[0].startswith(b"data ddd")
        and lines[1].startswith(b"status ok")
    )


@pytest.mark.parametrize(
    ("line", "hint"),
    [
        (b"ping", "requests look like: command ping"),
        (b"HELP", "requests look like: command help"),
        (b"add apikey K domain x.org", "requests look like: command add apikey K domain D[:port]"),
        (b"apikey K", "requests look like: command apikey"),
        (b"hello", "requests look like: command ping"),
    ],
)
def test_a_line_without_command_gets_an_example(line: bytes, hint: str) -> None:
    with pytest.raises(LineError) as caught:
        parse_request(line)
    assert caught.value.code == 400
    assert caught.value.text.endswith(hint)
    raw = format_response(caught.value.response()).decode()
    assert raw.endswith(hint + "\n")  # not cut by the status text's limit


def test_help_gives_every_command_with_its_syntax_in_one_status_line() -> None:
    from keychest.protocol.line import COMMANDS, MAX_STATUS_TEXT, help_text

    text = help_text()
    assert len(text) <= MAX_STATUS_TEXT
    for spec in COMMANDS.values():
        assert spec.summary.removeprefix("command ") in text
    assert "claim apikey K email E" in text and "add apikey K domain D[:port]" in text
    assert format_response(Response(200, text)).decode() == f"status ok 200 {text}\n"
