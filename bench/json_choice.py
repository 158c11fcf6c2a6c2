"""Which JSON library for the hot path: parse a ~200-byte payload from bytes, build the
envelope, serialise it. `python -m bench.json_choice` prints microseconds per message."""

from __future__ import annotations

import json
import timeit

import orjson

from bench.loadgen import message

PAYLOAD = message(123456, 1795631750.123456)


def with_stdlib() -> bytes:
    data = json.loads(PAYLOAD)
    envelope = {"source": "bench", "seq": 1, "received_at": "2026-11-25T16:54:10.123456Z",
                "data": data}
    return json.dumps(envelope, separators=(",", ":")).encode()


def with_orjson() -> bytes:
    data = orjson.loads(PAYLOAD)
    envelope = {"source": "bench", "seq": 1, "received_at": "2026-11-25T16:54:10.123456Z",
                "data": data}
    return orjson.dumps(envelope)


if __name__ == "__main__":
    assert json.loads(with_stdlib()) == json.loads(with_orjson())
    n = 200_000
    print(f"payload {len(PAYLOAD)} bytes")
    for name, function in (("json (stdlib)", with_stdlib), ("orjson", with_orjson)):
        seconds = min(timeit.repeat(function, number=n, repeat=3))
        print(f"{name:14} {seconds / n * 1e6:.2f} us per message")
