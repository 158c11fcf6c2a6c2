"""Binance spot market streams (wss://stream.binance.com:9443), simulated on 127.0.0.1.

Documentation followed (binance-spot-api-docs, web-socket-streams.md: "General WSS information",
"Server Shutdown", "Live Subscribing/Unsubscribing to streams", "Error Messages", trade streams):
https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams
https://github.com/binance/binance-spot-api-docs/blob/master/web-socket-streams.md

Rules kept: raw streams at /ws and /ws/<stream>, combined streams at /stream?streams=<a>/<b>
(events wrapped as {"stream", "data"}); live `{"method": "SUBSCRIBE", "params": [...], "id"}`
-> `{"result": null, "id"}`; the server sends a WebSocket PING FRAME every 20 s and disconnects a
connection whose pong has not come within a minute; a connection lives at most 24 h; a
`serverShutdown` event ({"e", "E"}; combined: stream "!serverShutdown") precedes a shutdown.
Errors: the documented codes and texts (2 "Invalid request: ...", 3 "Invalid JSON: ...") wrapped
as production sends them, `{"error": {"code", "msg"}, "id"}`, and "Invalid request: invalid
stream" for a malformed stream name (seen from production, not in the table). A well-formed
stream of an unknown symbol is accepted and stays silent, as production does.
Scale: 1/100 (20 s -> 0.2 s, 1 min -> 0.6 s, 24 h -> 864 s).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from websockets.http11 import Request

from tests.venues._sim_a import Session, SimulationBase, Tick, dumps, loads

SYMBOLS = {"btcusdt": 60_000.0, "ethusdt": 3_000.0}
STREAM = re.compile(r"(?P<symbol>[a-z0-9]+)@(?P<kind>trade|aggTrade)")
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
ID = re.compile(r"[A-Za-z0-9]{1,36}")


class BinanceSimulation(SimulationBase):
    name: ClassVar[str] = "binance"
    PATH: ClassVar[str] = "/ws"
    PING_EVERY: ClassVar[float] = 0.2  # 20 s
    PONG_WITHIN: ClassVar[float] = 0.6  # 1 minute
    MAX_AGE: ClassVar[float] = 864.0  # 24 hours
    SHUTDOWN_AFTER: ClassVar[float] = 0.6  # the docs no longer give a time; 1 minute here

    def check_request(self, request: Request) -> tuple[int, str] | None:
        path = urlsplit(request.path).path
        if path == "/ws" or path == "/stream" or path.startswith("/ws/"):
            return None
        return 404, "Not Found\n"

    def feed_overrides(self) -> dict[str, Any]:
        return {"url": self.url(), "rotate_after": round(self.MAX_AGE * 23 / 24, 1),
                "subscribe_ack": {"expect": {"result": None, "id": 1}, "error": {"error": "*"},
                                  "timeout": 1.0}}

    def bad_subscribe(self) -> dict[str, Any]:
        return {"subscribe": [{"method": "SUBSCRIBE", "params": ["btcusdt@trades"], "id": 1}]}

    def is_data(self, data: Any) -> bool:
        if isinstance(data, dict) and "stream" in data:
            data = data.get("data")
        return isinstance(data, dict) and "e" in data and data["e"] != "serverShutdown"

    def send_notice(self) -> None:
        def shutdown(session: Session) -> list[str | bytes]:
            session.state["shutdown_at"] = time.monotonic()
            event = {"e": "serverShutdown", "E": int(time.time() * 1000)}
            combined = session.state["combined"]
            return [dumps({"stream": "!serverShutdown", "data": event} if combined else event)]

        self.send_to_all(shutdown)

    async def session(self, session: Session) -> None:
        url = urlsplit(session.ws.request.path if session.ws.request else "/ws")
        session.state.update(combined=url.path == "/stream", pings=[])
        named = url.path[len("/ws/"):] if url.path.startswith("/ws/") else \
            parse_qs(url.query).get("streams", [""])[0]
        session.topics.extend(name for name in named.split("/") if STREAM.fullmatch(name))
        await self.run(session, self._read(session), self._ping(session))

    async def _ping(self, session: Session) -> None:
        pings: list[tuple[float, asyncio.Future[float]]] = session.state["pings"]
        while True:
            await asyncio.sleep(self.PING_EVERY)
            now = time.monotonic()
            if now - session.opened >= self.MAX_AGE:
                return await session.ws.close(1000, "24 hour limit")
            if now - session.state.get("shutdown_at", now) >= self.SHUTDOWN_AFTER:
                return await session.ws.close(1001, "server shutdown")
            pings[:] = [(sent, waiter) for sent, waiter in pings if not waiter.done()]
            if pings and now - pings[0][0] >= self.PONG_WITHIN:
                return await self.drop(session.ws, "missed heartbeat (no pong within a minute)")
            waiter = asyncio.ensure_future(await session.ws.ping(str(self.pings_sent).encode()))
            waiter.add_done_callback(self._answered)
            pings.append((now, waiter))
            self.pings_sent += 1

    def _answered(self, waiter: asyncio.Future[float]) -> None:
        # A pong answers its ping (and, per RFC 6455, any earlier one); a close fails them.
        if not waiter.cancelled() and waiter.exception() is None:
            self.pings_answered += 1

    async def _read(self, session: Session) -> None:
        async for message in session.ws:
            await self.send(session, dumps(self._request(session, message)))

    def _request(self, session: Session, message: str | bytes) -> dict[str, Any]:
        request = loads(message)
        if not isinstance(request, dict):
            return _error(3, "Invalid JSON: expected value at line 1 column 1")
        ident = request.get("id")
        method, params = request.get("method"), request.get("params", [])
        if "method" not in request:
            return _error(2, f"Invalid request: missing field `method` at line 1 column "
                             f"{len(message)}", ident)
        if method not in METHODS:
            return _error(2, f"Invalid request: unknown variant `{method}`, expected one of "
                             + ", ".join(f"`{m}`" for m in METHODS) + " at line 1 column 28",
                          ident)
        if not (ident is None or (isinstance(ident, int) and not isinstance(ident, bool))
                or (isinstance(ident, str) and ID.fullmatch(ident))):
            return _error(2, "Invalid request: request ID must be an unsigned integer")
        if method == "LIST_SUBSCRIPTIONS":
            return {"result": list(session.topics), "id": ident}
        if method in ("SET_PROPERTY", "GET_PROPERTY"):
            if not params or params[0] != "combined":
                return _error(0, "Unknown property", ident)
            if method == "GET_PROPERTY":
                return {"result": session.state["combined"], "id": ident}
            if len(params) != 2 or not isinstance(params[1], bool):
                return _error(1, "Invalid value type: expected Boolean", ident)
            session.state["combined"] = params[1]
            return {"result": None, "id": ident}
        if not isinstance(params, list) or not all(
                isinstance(name, str) and STREAM.fullmatch(name) for name in params):
            return _error(2, "Invalid request: invalid stream", ident)
        for name in params:
            if method == "SUBSCRIBE" and name not in session.topics:
                session.topics.append(name)
            elif method == "UNSUBSCRIBE" and name in session.topics:
                session.topics.remove(name)
        self.subscriptions += method == "SUBSCRIBE"
        return {"result": None, "id": ident}

    def frames_for(self, session: Session, tick: Tick) -> list[str | bytes]:
        frames: list[str | bytes] = []
        for name in session.topics:
            symbol, kind = name.split("@")
            if symbol not in SYMBOLS:
                continue  # a well-formed stream of no market: accepted, silent
            event = _event(symbol, kind, tick)
            wrapped = {"stream": name, "data": event} if session.state["combined"] else event
            frames.append(dumps(wrapped))
        return frames


def _error(code: int, msg: str, ident: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "msg": msg}, "id": ident}


def _event(symbol: str, kind: str, tick: Tick) -> dict[str, Any]:
    price, trade = SYMBOLS[symbol] + (tick.n % 200) / 10, 4_000_000_000 + tick.n
    base = {"e": kind, "E": tick.ms, "s": symbol.upper()}
    if kind == "trade":
        return {**base, "t": trade, "p": f"{price:.2f}", "q": "0.00100000", "T": tick.ms - 1,
                "m": tick.n % 2 == 0, "M": True}
    return {**base, "a": 3_000_000_000 + tick.n, "p": f"{price:.2f}", "q": "0.00100000",
            "f": trade, "l": trade, "T": tick.ms - 1, "m": tick.n % 2 == 0, "M": True}


SIMULATION = BinanceSimulation
