"""Venue frame handling in the running dataflow: compressed frames, a decompression bomb, the
handshake's compression offer, control frames kept out of the data."""

from __future__ import annotations

import gzip
import json
import time
import zlib

import pytest
from websockets.asyncio.server import ServerConnection

from support.servers import script_handler, tick
from support.wait import wait_until


def deflate_raw(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(("method", "compress"), [
    ("gzip", gzip.compress), ("zlib", zlib.compress), ("deflate", deflate_raw),
    ("auto", gzip.compress), ("auto", zlib.compress)])
def test_compressed_frames_inflate_to_the_original(sink, servers, dataflow, method, compress):
    frames = [compress(tick("z", n).encode()) for n in (1, 2)] + [tick("z", 3)]
    feed = servers(script_handler(frames))
    app = dataflow({"INGEST_SOURCES": json.dumps([
        {"name": "z", "url": feed.url, "decompress": method}]), "INGEST_SINK_URL": sink.url})
    assert sink.wait_for(lambda s: len(s.messages) >= 3)
    assert [m["data"] for m in sink.messages] == [json.loads(tick("z", n)) for n in (1, 2, 3)]
    app.stop()


def gzip_bomb(inflated: int) -> bytes:
    """About inflated / 1000 bytes of gzip that inflate to `inflated` zero bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    parts = [compressor.compress(block) for _ in range(inflated >> 20)]
    return b"".join(parts) + compressor.flush()


def test_a_decompression_bomb_is_too_large_without_inflating_it(sink, servers, service):
    bomb = gzip_bomb(1 << 30)  # 1 MB that inflates to 1 GB
    frames = [gzip.compress(tick("b", 1).encode()), bomb, gzip.compress(tick("b", 3).encode())]
    feed = servers(script_handler(frames), max_size=None)
    app = service({"INGEST_SOURCES": json.dumps([
        {"name": "b", "url": feed.url, "decompress": "gzip", "max_message_bytes": 1 << 20}]),
        "INGEST_SINK_URL": sink.url})
    assert sink.wait_for(lambda s: len(s.messages) >= 2, 20)
    assert [m["seq"] for m in sink.messages] == [1, 3]
    wait_until(lambda: app.metric("ingest_messages_invalid_total", source="b",
                                  reason="too_large") == 1)
    assert app.metric("ingest_source_connects_total", source="b") == 1  # the connection lived
    with open(f"/proc/{app.process.pid}/status") as status:
        peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(f"peak RSS with a 1 GB bomb: {peak_kib / 1024:.0f} MiB")
    assert peak_kib < 150 * 1024
    assert app.terminate() == 0


def test_compression_none_is_not_offered_in_the_handshake(sink, servers, dataflow):
    offered: list[str | None] = []

    async def recording(ws: ServerConnection) -> None:
        offered.append(ws.request.headers.get("Sec-WebSocket-Extensions"))
        await script_handler([tick("c", 1)])(ws)

    feeds = [servers(recording) for _ in range(2)]
    app = dataflow({"INGEST_SOURCES": json.dumps([
        {"name": "plain", "url": feeds[0].url, "compression": "none"},
        {"name": "deflate", "url": feeds[1].url}]), "INGEST_SINK_URL": sink.url})
    assert sink.wait_for(lambda s: len(s.messages) >= 2)
    assert sorted(offered, key=str) == sorted(
        [None, "permessage-deflate; client_max_window_bits"], key=str)
    app.stop()


def test_control_frames_are_answered_counted_and_never_numbered(sink, servers, dataflow):
    answers: list[str] = []

    async def venue(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"event": "welcome"}))
        await ws.send(tick("v", 1))
        await ws.send(json.dumps({"ping": 42}))
        answers.append(str(await ws.recv()))
        await ws.send(tick("v", 2))
        await ws.wait_closed()

    feed = servers(venue)
    app = dataflow({"INGEST_SOURCES": json.dumps([{
        "name": "v", "url": feed.url, "control": [{"event": "welcome"}],
        "replies": [{"when": {"ping": "*"}, "send": {"pong": 0}, "copy": {"/pong": "/ping"}}]}]),
        "INGEST_SINK_URL": sink.url})
    assert sink.wait_for(lambda s: len(s.messages) >= 2)
    assert answers == ['{"pong":42}']
    assert [(m["seq"], m["data"]["n"]) for m in sink.messages] == [(1, 1), (2, 2)]
    assert app.metric("ingest_messages_received_total", source="v") == 2
    assert app.metric("ingest_control_messages_total", source="v", kind="control") == 1
    assert app.metric("ingest_control_messages_total", source="v", kind="reply") == 1
    app.stop()


def test_upstream_gaps_are_counted_per_scope_and_lag_is_observed(sink, servers, dataflow):
    now_ms = int(time.time() * 1000)
    frames = [json.dumps({"s": symbol, "u": u, "E": now_ms - 50})
              for symbol, u in [("BTC", 1), ("ETH", 7), ("BTC", 2), ("BTC", 5), ("ETH", 8),
                                ("BTC", 6), ("ETH", 12)]]
    feed = servers(script_handler(frames))
    app = dataflow({"INGEST_SOURCES": json.dumps([{
        "name": "seq", "url": feed.url, "sequence": {"path": "/u", "scope": "/s"},
        "event_time": {"path": "/E", "unit": "ms"}}]), "INGEST_SINK_URL": sink.url})
    assert sink.wait_for(lambda s: len(s.messages) >= 7)
    assert app.metric("ingest_upstream_gaps_total", source="seq") == 2  # BTC 2->5, ETH 8->12
    assert app.metric("ingest_upstream_missing_total", source="seq") == 2 + 3
    assert app.metric("ingest_upstream_lag_seconds_count", source="seq") == 7
    assert 0.04 <= app.metric("ingest_upstream_lag_seconds_sum", source="seq") / 7 < 5
    gaps = [e for e in app.logs() if e["event"] == "upstream_gap"]
    assert gaps and gaps[0]["scope"] == "BTC" and gaps[0]["expected"] == 3
    app.stop()
