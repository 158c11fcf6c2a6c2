"""Kraken spot WebSocket v2 simulation at /v2 (wss://ws.kraken.com/v2), the ticker channel.

Written from Kraken's API documentation (checked 2026-11-26):
- https://docs.kraken.com/exchange/api-reference/spot-websocket-v2/status  (a `status` update
  `{"channel": "status", "type": "update", "data": [{api_version, connection_id, system,
  version}]}` on every successful connection)
- https://docs.kraken.com/exchange/api-reference/spot-websocket-v2/ticker  (subscribe
  `{"method": "subscribe", "params": {"channel": "ticker", "symbol": [...]}, "req_id": n}`; one
  ack per symbol `{"method": "subscribe", "result": {channel, symbol, snapshot}, "success": true,
  "time_in", "time_out", "req_id"}`, `"success": false` with `"error"` when refused; snapshot then
  updates on trades, fields bid, bid_qty, ask, ask_qty, last, volume, vwap, low, high, change,
  change_pct, timestamp (RFC 3339); no sequence number)
- https://docs.kraken.com/exchange/api-reference/spot-websocket-v2/heartbeat  (`{"channel":
  "heartbeat"}` about once a second in the absence of other updates, once subscribed to a channel)
- https://docs.kraken.com/exchange/api-reference/spot-websocket-v2/ping  (`{"method": "ping",
  "req_id": n}` → `{"method": "pong", "req_id": n, "time_in", "time_out"}`)
Where these differ from the brief: heartbeats come only after a subscription and only while the
channel is quiet, not every second regardless; and the docs set no rule that the server drops a
client that does not ping, so this simulation drops no one for that. Refusal wording as the live
API sends it: "Currency pair not supported <symbol>".

Timings scaled 1/10: heartbeats after 0.1 s of quiet; ticker updates come in bursts of trades
with quiet spells between them, so both data and heartbeats flow.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from typing import Any, ClassVar

from websockets.asyncio.server import ServerConnection

from support.wait import past
from tests.venues._sim_b import Tasks, VenueSimulation, iso_now

SYMBOLS = frozenset({"BTC/USD", "ETH/USD", "BTC/EUR", "SOL/USD"})
_PAIR = re.compile(r"^[A-Z0-9]{2,10}/[A-Z0-9]{2,10}$")


class _Quiet:
    """When the connection last carried a channel update (heartbeats fill the gaps)."""

    def __init__(self) -> None:
        self.since = time.monotonic()


class KrakenSimulation(VenueSimulation):
    name: ClassVar[str] = "kraken"
    PATH: ClassVar[str] = "/v2"
    HEARTBEAT_AFTER: ClassVar[float] = 0.1  # the venue's ~1 s
    DATA_PERIOD: ClassVar[float] = 0.03
    BURST: ClassVar[int] = 8  # trades in a burst, then a quiet spell of QUIET seconds
    QUIET: ClassVar[float] = 0.35

    def feed_overrides(self) -> dict[str, Any]:
        return {"url": self.url(), "idle_timeout": 5 * self.HEARTBEAT_AFTER,
                "heartbeat": {"send": {"method": "ping", "req_id": 100}, "interval": 0.2,
                              "expect": {"method": "pong"}, "timeout": 0.2},
                "subscribe_ack": {"expect": {"method": "subscribe", "success": True},
                                  "error": {"method": "subscribe", "success": False},
                                  "timeout": 1}}

    def bad_subscribe(self) -> dict[str, Any]:
        return self.feed_overrides() | {"subscribe": [
            {"method": "subscribe", "params": {"channel": "ticker", "symbol": ["BTC/USDX"]},
             "req_id": 1}]}

    def is_data(self, data: Any) -> bool:
        return (isinstance(data, dict) and data.get("channel") == "ticker"
                and data.get("type") in ("snapshot", "update"))

    async def session(self, ws: ServerConnection) -> None:
        tasks, quiet = Tasks(), _Quiet()
        await self.send(ws, {"channel": "status", "type": "update", "data": [
            {"api_version": "v2", "connection_id": random.getrandbits(63), "system": "online",
             "version": "2.0.10"}]})
        heartbeats = False
        try:
            async for raw in ws:
                time_in = iso_now()
                try:
                    request = json.loads(raw)
                except ValueError:
                    await self.send(ws, {"error": "Malformed request", "success": False,
                                         "time_in": time_in, "time_out": iso_now()})
                    continue
                for answer, symbol in self._answer(request):
                    if answer.get("method") == "pong":
                        self.client_heartbeats += 1
                    if symbol:
                        tasks.start(self._ticker(ws, symbol, quiet))
                        if not heartbeats:
                            heartbeats = True
                            tasks.start(self._heartbeats(ws, quiet))
                    answer.update(time_in=time_in, time_out=iso_now())
                    await self.send(ws, answer)
        finally:
            await tasks.cancel()

    def _answer(self, request: Any) -> list[tuple[dict[str, Any], str]]:
        """The answers to one request, each with the symbol it starts streaming (or "")."""
        if not isinstance(request, dict):
            return [({"error": "Malformed request", "success": False}, "")]
        method, extra = request.get("method"), {}
        if "req_id" in request:
            extra["req_id"] = request["req_id"]
        if method == "ping":
            return [({"method": "pong", **extra}, "")]
        params = request.get("params")
        if method != "subscribe" or not isinstance(params, dict):
            return [({"error": "Method not found" if method != "subscribe"
                      else "Invalid params", "method": method, "success": False, **extra}, "")]
        if params.get("channel") != "ticker":
            return [({"error": "Channel not supported", "method": method, "success": False,
                      **extra}, "")]
        symbols = params.get("symbol")
        if not isinstance(symbols, list) or not symbols:
            return [({"error": "Invalid symbol", "method": method, "success": False, **extra},
                     "")]
        answers: list[tuple[dict[str, Any], str]] = []
        for symbol in symbols:  # one ack per symbol
            if symbol in SYMBOLS:
                self.subscriptions += 1
                answers.append(({"method": method, "result": {
                    "channel": "ticker", "snapshot": params.get("snapshot", True),
                    "symbol": symbol}, "success": True, **extra}, symbol))
                continue
            reason = ("Currency pair not supported" if _PAIR.match(str(symbol))
                      else "Currency pair not in ISO 4217-A3 format")
            answers.append(({"error": f"{reason} {symbol}", "method": method, "success": False,
                             "symbol": symbol, **extra}, ""))
        return answers

    async def _ticker(self, ws: ServerConnection, symbol: str, quiet: _Quiet) -> None:
        last, kind = 60_000.0, "snapshot"
        while True:
            for _ in range(self.BURST):
                last += random.choice((-0.1, 0.1))
                await self.send(ws, {"channel": "ticker", "type": kind, "data": [{
                    "symbol": symbol, "bid": round(last - 0.1, 1), "bid_qty": 0.5,
                    "ask": round(last, 1), "ask_qty": 0.8, "last": round(last, 1),
                    "volume": 1234.5, "vwap": 60010.2, "low": 59000.0, "high": 61000.0,
                    "change": 120.4, "change_pct": 0.2, "timestamp": iso_now()}]})
                self.data_sent += 1
                quiet.since, kind = time.monotonic(), "update"
                await asyncio.sleep(self.DATA_PERIOD)
            await asyncio.sleep(self.QUIET)

    async def _heartbeats(self, ws: ServerConnection, quiet: _Quiet) -> None:
        while True:
            await past(lambda: quiet.since + self.HEARTBEAT_AFTER)
            await self.send(ws, {"channel": "heartbeat"})
            quiet.since = time.monotonic()


SIMULATION = KrakenSimulation
