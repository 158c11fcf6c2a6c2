"""Crypto.com Exchange v1 market-data simulation at /exchange/v1/market
(wss://stream.crypto.com/exchange/v1/market), the ticker channel.

Written from the Crypto.com Exchange API v1 documentation (checked 2026-11-26; read through
github.com/justrhoto/crypto-com-exchange-docs, a mirror of the official pages):
- https://exchange-docs.crypto.com/exchange/v1/rest-ws/index.html and
  https://exchange-developer.crypto.com/exchange/v1/docs/api/websocket/crypto-com-exchange-websocket-api
  (request `{id, method, params, nonce}`; response `{id, method, code, result, message}`, code 0
  = success; codes 40001 BAD_REQUEST, 40002 METHOD_NOT_FOUND, 40003 INVALID_REQUEST, 40004
  MISSING_OR_INVALID_ARGUMENT, 40102 INVALID_NONCE (nonce more than 60 s off); close code 1000
  "usually when the heartbeat isn't handled properly"; sleep 1 s after connecting before sending
  requests, because rate limits are pro-rated over the first calendar second)
- .../ws-market-data-client-commands-heartbeat-request  (`{"id": n, "method":
  "public/heartbeat", "code": 0}` every 30 s; the client must answer
  `{"id": n, "method": "public/respond-heartbeat"}` within 5 seconds)
- .../ws-market-data-client-commands-market-data-subscribe-request and
  .../ws-channel-ticker-instrument-name  (`{"id", "method": "subscribe", "params": {"channels":
  ["ticker.BTCUSD-PERP"]}}`; data pushed as `{"id": -1, "method": "subscribe", "code": 0,
  "result": {instrument_name, subscription, channel, data: [{h, l, a, c, b, bs, k, ks, i, v,
  vv, oi, t}]}}`, `t` in ms; the ticker carries no sequence number)
The subscribe answer is a bare `{"id": n, "method": "subscribe", "code": 0}`, and an unknown
instrument gets code 40003 with "message": "Unknown symbol", as the live server sends them.
Differences from the brief: the answer window (5 s) is documented; the 1 s wait is advice about
rate limits, not a rule the server enforces, so it is not simulated (nor is the pro-rated limit).
`nonce` is checked (±60 s) when present; public market-data subscribes without one are served.

Timings scaled 1/50: heartbeat every 0.6 s, answer within 0.1 s.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any, ClassVar

from websockets.asyncio.server import ServerConnection

from tests.venues._sim_b import Tasks, VenueSimulation, now_ms

INSTRUMENTS = frozenset({"BTCUSD-PERP", "ETHUSD-PERP", "BTC_USD", "ETH_USD", "CRO_USD"})


def _answer(rid: Any, method: Any, code: int, message: str = "", **extra: Any) -> dict[str, Any]:
    response = {"id": rid, "method": method, "code": code, **extra}
    if message:
        response["message"] = message
    return response


def _fresh(nonce: Any) -> bool:
    """A nonce within 60 s of now (ms since the epoch, as a number or a string)."""
    try:
        return abs(int(nonce) - now_ms()) <= 60_000
    except (TypeError, ValueError):
        return False


class CryptocomSimulation(VenueSimulation):
    name: ClassVar[str] = "cryptocom"
    PATH: ClassVar[str] = "/exchange/v1/market"
    HEARTBEAT_PERIOD: ClassVar[float] = 0.6  # the venue's 30 s
    ANSWER_WITHIN: ClassVar[float] = 0.1  # the venue's 5 s
    DATA_PERIOD: ClassVar[float] = 0.04

    def feed_overrides(self) -> dict[str, Any]:
        return {"url": self.url(), "idle_timeout": 2 * self.HEARTBEAT_PERIOD,
                "subscribe_ack": {"expect": {"id": 1, "method": "subscribe", "code": 0},
                                  "error": {"id": 1, "method": "subscribe", "message": "*"},
                                  "timeout": 1}}

    def bad_subscribe(self) -> dict[str, Any]:
        return self.feed_overrides() | {"subscribe": [
            {"id": 1, "method": "subscribe", "params": {"channels": ["ticker.BTCUSD-PERPX"]}}]}

    def is_data(self, data: Any) -> bool:
        return (isinstance(data, dict) and data.get("id") == -1
                and data.get("method") == "subscribe" and "result" in data)

    async def session(self, ws: ServerConnection) -> None:
        tasks = Tasks()
        pending: dict[str, int | None] = {"id": None}  # the heartbeat awaiting its answer
        tasks.start(self._heartbeats(ws, pending))
        try:
            async for raw in ws:
                try:
                    request = json.loads(raw)
                except ValueError:
                    await self.send(ws, _answer(-1, "ERROR", 40001, "BAD_REQUEST",
                                                original=str(raw)))
                    continue
                if not isinstance(request, dict):
                    await self.send(ws, _answer(-1, "ERROR", 40003, "INVALID_REQUEST"))
                    continue
                rid, method = request.get("id", -1), request.get("method", "ERROR")
                if method == "public/respond-heartbeat":
                    if pending["id"] is not None and str(rid) == str(pending["id"]):
                        pending["id"] = None
                        self.pings_answered += 1
                    continue  # the server does not answer a heartbeat answer
                if method != "subscribe":
                    await self.send(ws, _answer(rid, method, 40002, "METHOD_NOT_FOUND"))
                    continue
                await self._subscribe(ws, rid, request, tasks)
        finally:
            await tasks.cancel()

    async def _subscribe(self, ws: ServerConnection, rid: Any, request: dict[str, Any],
                         tasks: Tasks) -> None:
        nonce, params = request.get("nonce"), request.get("params")
        if nonce is not None and not _fresh(nonce):
            await self.send(ws, _answer(rid, "subscribe", 40102, "INVALID_NONCE"))
            return
        channels = params.get("channels") if isinstance(params, dict) else None
        if not isinstance(channels, list) or not channels:
            await self.send(ws, _answer(rid, "subscribe", 40004, "MISSING_OR_INVALID_ARGUMENT"))
            return
        for channel in channels:
            kind, _, instrument = str(channel).partition(".")
            if kind != "ticker" or instrument not in INSTRUMENTS:
                await self.send(ws, _answer(rid, "subscribe", 40003, "Unknown symbol",
                                            channel=channel))
                return
        self.subscriptions += 1
        await self.send(ws, _answer(rid, "subscribe", 0))
        for channel in channels:
            tasks.start(self._ticker(ws, channel.partition(".")[2]))

    async def _heartbeats(self, ws: ServerConnection, pending: dict[str, int | None]) -> None:
        while True:
            await asyncio.sleep(self.HEARTBEAT_PERIOD - self.ANSWER_WITHIN)
            heartbeat_id = now_ms()
            pending["id"] = heartbeat_id
            self.pings_sent += 1
            await self.send(ws, _answer(heartbeat_id, "public/heartbeat", 0))
            await asyncio.sleep(self.ANSWER_WITHIN)
            if pending["id"] == heartbeat_id:
                await self.drop(ws, "missed heartbeat")  # close code 1000, as documented
                return

    async def _ticker(self, ws: ServerConnection, instrument: str) -> None:
        last = 60_000.0
        while True:
            await asyncio.sleep(self.DATA_PERIOD)
            last += random.choice((-0.5, 0.5))
            await self.send(ws, _answer(-1, "subscribe", 0, result={
                "instrument_name": instrument, "subscription": f"ticker.{instrument}",
                "channel": "ticker", "data": [{
                    "h": "61000.00", "l": "59000.00", "a": f"{last:.6f}", "c": "0.0123",
                    "b": f"{last - 0.5:.6f}", "bs": "0.1000", "k": f"{last:.6f}",
                    "ks": "0.2000", "i": instrument, "v": "879.5024", "vv": "52770000.12",
                    "oi": "12345.12", "t": int(time.time() * 1000)}]}))
            self.data_sent += 1


SIMULATION = CryptocomSimulation
