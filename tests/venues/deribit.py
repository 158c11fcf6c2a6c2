"""Deribit simulation: JSON-RPC 2.0 over WebSocket at /ws/api/v2 (wss://www.deribit.com/ws/api/v2).

Written from Deribit's API documentation (checked 2026-11-26):
- https://docs.deribit.com/api-reference/session-management/public-set_heartbeat
  `public/set_heartbeat {"interval": s}`, "not less than 10", answers `"result": "ok"`; then the
  server sends `heartbeat` and `test_request` messages, and a client that does not answer a
  test_request with `public/test` is disconnected at once.
- https://docs.deribit.com/api-reference/supporting/public-test  (`"result": {"version": ...}`)
- https://docs.deribit.com/api-reference/subscription-management/public-subscribe
  (`params.channels`: string[]; `result`: the channels subscribed)
- https://docs.deribit.com/articles/notifications  (data: `"method": "subscription"`,
  `params: {channel, data}`); book channel `book.{instrument_name}.{interval}` with `change_id`,
  `prev_change_id`, `timestamp` (ms): https://docs.deribit.com/subscriptions/market-data
Behaviour seen on the live API, not in the reference: a channel Deribit does not know is left out
of `result` (even `"result": []`), not refused (github.com/adampointer/go-deribit/issues/16); a
malformed request is refused with `-32602 "Invalid params"` and `data: {reason, param}`
(github.com/ccxt/ccxt/issues/6931); an interval below the minimum gets the same shape here (its
exact wording is not documented). Book `change_id`s grow but skip numbers, so a client must
chain `prev_change_id`, not expect +1.

Timings scaled 1/20: the 10 s minimum interval is 0.5 s here.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from typing import Any, ClassVar

from websockets.asyncio.server import ServerConnection

from tests.venues._sim_b import Tasks, VenueSimulation, now_ms

_BOOK = re.compile(r"^book\.(BTC-PERPETUAL|ETH-PERPETUAL)\.(100ms|raw)$")


def _error(request_id: Any, code: int, message: str, **data: str) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


class DeribitSimulation(VenueSimulation):
    name: ClassVar[str] = "deribit"
    PATH: ClassVar[str] = "/ws/api/v2"
    MIN_INTERVAL: ClassVar[float] = 0.5  # the venue's 10 s, scaled 1/20
    DATA_PERIOD: ClassVar[float] = 0.04

    def feed_overrides(self) -> dict[str, Any]:
        return {"url": self.url(), "subscribe": [
            {"jsonrpc": "2.0", "id": 1, "method": "public/set_heartbeat",
             "params": {"interval": self.MIN_INTERVAL}},
            {"jsonrpc": "2.0", "id": 2, "method": "public/subscribe",
             "params": {"channels": ["book.BTC-PERPETUAL.100ms"]}}],
            "subscribe_ack": {"expect": {"jsonrpc": "2.0", "result": "*"},
                              "error": {"jsonrpc": "2.0", "error": "*"}, "timeout": 1},
            "idle_timeout": 2 * self.MIN_INTERVAL}

    def bad_subscribe(self) -> dict[str, Any]:
        # channels as a string, not a list: refused with -32602, as the live API does
        overrides = self.feed_overrides()
        overrides["subscribe"][1]["params"]["channels"] = "book.BTC-PERPETUAL.100ms"
        return overrides

    def is_data(self, data: Any) -> bool:
        return isinstance(data, dict) and data.get("method") == "subscription"

    async def session(self, ws: ServerConnection) -> None:
        tasks = Tasks()
        awaiting = [False]  # a test_request not yet answered with public/test
        try:
            async for raw in ws:
                received = time.time()
                try:
                    request = json.loads(raw)
                except ValueError:
                    await self.send(ws, _error(None, -32700, "Parse error"))
                    continue
                response = self._answer(ws, request, tasks, awaiting)
                response.update(usIn=int(received * 1e6), usOut=int(time.time() * 1e6),
                                testnet=False)
                response["usDiff"] = response["usOut"] - response["usIn"]
                await self.send(ws, response)
        finally:
            await tasks.cancel()

    def _answer(self, ws: ServerConnection, request: Any, tasks: Tasks,
                awaiting: list[bool]) -> dict[str, Any]:
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return _error(None, -32600, "Invalid Request")
        method, rid = request["method"], request.get("id")
        params = request.get("params", {})
        if method == "public/test":
            if awaiting[0]:
                awaiting[0] = False
                self.pings_answered += 1
            return {"jsonrpc": "2.0", "id": rid, "result": {"version": "1.2.26"}}
        if method == "public/set_heartbeat":
            interval = params.get("interval") if isinstance(params, dict) else None
            if not isinstance(interval, (int, float)) or interval < self.MIN_INTERVAL:
                return _error(rid, -32602, "Invalid params", reason="must be >= 10",
                              param="interval")
            tasks.start(self._heartbeats(ws, float(interval), awaiting))
            return {"jsonrpc": "2.0", "id": rid, "result": "ok"}
        if method == "public/subscribe":
            channels = params.get("channels") if isinstance(params, dict) else None
            if not isinstance(channels, list):
                return _error(rid, -32602, "Invalid params", reason="value must be a list",
                              param="channels")
            known = [c for c in channels if isinstance(c, str) and _BOOK.match(c)]
            for channel in known:
                tasks.start(self._book(ws, channel))
            if known:
                self.subscriptions += 1
            return {"jsonrpc": "2.0", "id": rid, "result": known}
        return _error(rid, -32601, "Method not found")

    async def _heartbeats(self, ws: ServerConnection, interval: float,
                          awaiting: list[bool]) -> None:
        while True:
            await asyncio.sleep(interval / 2)
            await self.send(ws, {"jsonrpc": "2.0", "method": "heartbeat",
                                 "params": {"type": "heartbeat"}})
            await asyncio.sleep(interval / 2)
            if awaiting[0]:
                await self.drop(ws, "missed heartbeat")
                return
            awaiting[0] = True
            self.pings_sent += 1
            await self.send(ws, {"jsonrpc": "2.0", "method": "heartbeat",
                                 "params": {"type": "test_request"}})

    async def _book(self, ws: ServerConnection, channel: str) -> None:
        instrument = channel.split(".")[1]
        change_id, price = random.randint(10**9, 2 * 10**9), 60_000.0
        data: dict[str, Any] = {"type": "snapshot", "timestamp": now_ms(),
                                "instrument_name": instrument, "change_id": change_id,
                                "bids": [["new", price - 0.5, 1000.0]],
                                "asks": [["new", price, 1200.0]]}
        while True:
            await self.send(ws, {"jsonrpc": "2.0", "method": "subscription",
                                 "params": {"channel": channel, "data": data}})
            self.data_sent += 1
            await asyncio.sleep(self.DATA_PERIOD)
            previous, change_id = change_id, change_id + random.randint(1, 5)
            price += random.choice((-0.5, 0.5))
            data = {"type": "change", "timestamp": now_ms(), "prev_change_id": previous,
                    "instrument_name": instrument, "change_id": change_id,
                    "bids": [["change", price - 0.5, float(random.randint(10, 5000))]],
                    "asks": [["change", price, float(random.randint(10, 5000))]]}


SIMULATION = DeribitSimulation
