"""Coverage-guided fuzzing of the line protocol's pure core with atheris.

    .venv/bin/pip install atheris
    .venv/bin/python fuzz/fuzz_line.py -max_total_time=60 [-dict=fuzz/line.dict] [corpus_dir]

Feeds arbitrary bytes, split at fuzzer-chosen points, through LineFramer (as the server
receives them) and parse_request, and formats whatever comes out. The properties checked:
nothing raises but LineError; a parsed request names a known command with exactly its
arguments; every response is one `dd bs=1000 count=1` read (<= 900 bytes), ASCII, ends
with exactly one status line; the framer never holds more than a line's worth of bytes.
tests/protocol has the hypothesis properties; this finds inputs nobody thought to generate.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from keychest.protocol.line import (
        COMMANDS,
        MAX_LINE_BYTES,
        MAX_RESPONSE_BYTES,
        LineError,
        LineFramer,
        Response,
        format_response,
        parse_request,
    )


def check_response(raw: bytes) -> None:
    assert len(raw) <= MAX_RESPONSE_BYTES, len(raw)
    raw.decode("ascii")
    lines = raw.split(b"\n")
    assert lines[-1] == b"", raw
    assert [line.startswith(b"status ") for line in lines[:-1]].count(True) == 1, raw
    assert lines[-2].startswith(b"status "), raw


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    cuts = sorted(fdp.ConsumeIntListInRange(fdp.ConsumeIntInRange(0, 8), 0, 4096))
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())
    framer = LineFramer()
    pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    lines: list[bytes] = []
    for piece in pieces:
        lines += framer.feed(piece)
        # A flood without newlines costs at most one line of memory per connection.
        assert len(framer._buffer) <= MAX_LINE_BYTES + 1, len(framer._buffer)
        if framer.overflowed:
            break
    if framer.has_pending and not framer.overflowed:
        pending = framer.take_pending()
        assert len(pending) <= MAX_LINE_BYTES + 2, len(pending)
        lines.append(pending)
    for line in lines:
        try:
            request = parse_request(line)
        except LineError as exc:
            check_response(format_response(exc.response()))
            continue
        if request is None:
            continue
        spec = COMMANDS[request.command]
        assert set(spec.required) <= set(request.args), (request, spec)
        for value in request.args.values():
            assert value and "\n" not in value, request
        echoed = Response(200, " ".join(request.args.values()), data=line.decode("latin-1"))
        check_response(format_response(echoed))


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
