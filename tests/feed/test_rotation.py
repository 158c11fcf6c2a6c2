"""Make before break (rotate_after, rotate_on) against a Binance-like venue: every connection
is cut after CAP_S, every connection gets the same live stream (an increasing `u` per symbol,
2 000 messages per second in all), and the service rotates before the cap."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from support.wait import wait_until

CAP_S = 0.6  # the venue's connection cap (Binance: 24 h)
ROTATE_AFTER_S = 0.25
SYMBOLS = ("BTC", "ETH")
RATE = 2000  # messages per second, over both symbols


class Market:
    """One stream for every connection, as a venue's: each tick goes to all of them."""

    def __init__(self, notice_every: int = 0) -> None:
        self.clients: set[ServerConnection] = set()
        self.connections = 0
        self.notice_every = notice_every
        self._next = dict.fromkeys(SYMBOLS, 1)
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None

    async def handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._ticks())
        self.clients.add(ws)
        try:
            await asyncio.wait_for(ws.wait_closed(), CAP_S)
        except asyncio.TimeoutError:
            await ws.close(1000, "connection cap")  # the venue's own limit
        finally:
            self.clients.discard(ws)
            if not self.clients and self._task is not None:  # the market closes with its last
                self._task.cancel()
                self._task = None

    async def _ticks(self) -> None:
        started, sent = time.monotonic(), 0
        while True:
            sent += 1
            symbol = SYMBOLS[sent % len(SYMBOLS)]
            u = self._next[symbol]
            self._next[symbol] = u + 1
            frame = json.dumps({"e": "trade", "s": symbol, "u": u, "E": int(time.time() * 1000)})
            for ws in list(self.clients):
                try:
                    await ws.send(frame)
                    if self.notice_every and u % self.notice_every == 0 and symbol == "BTC":
                        await ws.send(json.dumps({"e": "serverShutdown"}))
                except ConnectionClosed:
                    pass
            ahead = started + sent / RATE - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)


def received(sink: Any, source: str) -> tuple[list[int], dict[str, list[int]]]:
    """seq numbers at the sink, and the venue's `u` per symbol, in arrival order."""
    with sink._lock:
        envelopes = [m for m in sink.messages if m["source"] == source]
    per_symbol: dict[str, list[int]] = {}
    for envelope in envelopes:
        per_symbol.setdefault(envelope["data"]["s"], []).append(envelope["data"]["u"])
    return [e["seq"] for e in envelopes], per_symbol


def test_twenty_rotations_with_sequence_lose_and_repeat_nothing(sink, servers, dataflow):
    market = Market()
    venue = servers(market.handle)
    feed = {"name": "binance", "url": venue.url, "rotate_after": ROTATE_AFTER_S,
            "sequence": {"path": "/u", "scope": "/s"}}
    app = dataflow({"INGEST_SOURCES": json.dumps([feed]), "INGEST_SINK_URL": sink.url})
    wait_until(lambda: (app.metric("ingest_source_rotations_total", source="binance",
                                   reason="age") or 0) >= 20, 30)
    app.stop()
    seqs, per_symbol = received(sink, "binance")
    assert seqs == list(range(1, len(seqs) + 1))  # seq continuous across every switch
    events = [(e["event"], e.get("handed_over"), e.get("error")) for e in app.logs()
              if e["event"].startswith("source_")]
    for symbol, us in per_symbol.items():
        assert us == list(range(us[0], us[0] + len(us))), (symbol, events)  # no gap, no repeat
    assert app.metric("ingest_source_connects_total", source="binance") == 1
    assert app.metric("ingest_upstream_gaps_total", source="binance") == 0
    assert market.connections >= 21
    events = [e["event"] for e in app.logs()]
    assert events.count("source_rotated") >= 20 and "source_disconnected" not in events


def test_a_notice_rotates_at_once(sink, servers, dataflow):
    market = Market(notice_every=300)
    venue = servers(market.handle)
    feed = {"name": "noticed", "url": venue.url, "rotate_on": {"e": "serverShutdown"},
            "sequence": {"path": "/u", "scope": "/s"}}
    app = dataflow({"INGEST_SOURCES": json.dumps([feed]), "INGEST_SINK_URL": sink.url})
    wait_until(lambda: (app.metric("ingest_source_rotations_total", source="noticed",
                                   reason="notice") or 0) >= 2, 20)
    app.stop()
    _, per_symbol = received(sink, "noticed")
    for symbol, us in per_symbol.items():
        assert us == list(range(us[0], us[0] + len(us))), symbol
    assert app.metric("ingest_control_messages_total", source="noticed", kind="notice") >= 2


def test_without_sequence_the_switch_is_measured(sink, servers, dataflow):
    market = Market()
    venue = servers(market.handle)
    feed = {"name": "plain", "url": venue.url, "rotate_after": ROTATE_AFTER_S}
    app = dataflow({"INGEST_SOURCES": json.dumps([feed]), "INGEST_SINK_URL": sink.url})
    wait_until(lambda: (app.metric("ingest_source_rotations_total", source="plain",
                                   reason="age") or 0) >= 10, 30)
    app.stop()
    seqs, per_symbol = received(sink, "plain")
    assert seqs == list(range(1, len(seqs) + 1))
    repeats = missed = 0
    for us in per_symbol.values():
        for before, after in itertools.pairwise(us):
            if after <= before:
                repeats += before - after + 1
            elif after > before + 1:
                missed += after - before - 1
    rotations = app.metric("ingest_source_rotations_total", source="plain", reason="age")
    print(f"without sequence, {rotations:.0f} switches at {RATE} msg/s: "
          f"{repeats} repeated, {missed} missed")
    assert rotations >= 10 and app.metric("ingest_source_connects_total", source="plain") == 1
