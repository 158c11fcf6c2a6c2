"""KuCoin spot public WebSocket (wss://ws-api-spot.kucoin.com/?token=...), simulated on 127.0.0.1.

Documentation followed (KuCoin spot "Websocket Feed": apply connect token, create connection,
ping, subscribe; public channel "Symbol Ticker"):
https://www.kucoin.com/docs/websocket/basic-info/apply-connect-token/public-token-no-authentication-required-
https://www.kucoin.com/docs/websocket/basic-info/create-connection
https://www.kucoin.com/docs/websocket/basic-info/ping
https://www.kucoin.com/docs/websocket/spot-trading/public-channels/ticker
https://github.com/Kucoin/kucoin-api-docs (the same text, "Websocket Feed")

Rules kept: the token from POST /api/v1/bullet-public goes in the URL query (`token`, optional
`connectId`); the server greets with `{"id": <connectId>, "type": "welcome"}` (only then is the
connection usable). pingInterval (18 s) and pingTimeout (10 s) come with the token, NOT in the
welcome. The client sends `{"id", "type": "ping"}` and gets `{"id", "type": "pong"}`; a client
silent "for a long time" is disconnected (the docs give no figure: pingInterval + pingTimeout
here). Subscribe `{"id", "type": "subscribe", "topic": "/market/ticker:BTC-USDT,ETH-USDT",
"privateChannel": false, "response": true}` -> `{"id", "type": "ack"}`; refusals
`{"id", "type": "error", "code": 404|400, "data": "topic ... is not found|invalid"}` (the
shape production sends, seen in client issues). A bad token: an error frame (401), then close.
Ticker data: `{"type": "message", "topic", "subject": "trade.ticker", "data": {"sequence", ...,
"time"}}` (the docs' example spells it "Time"; the schema and production use "time").
Scale: 1/50 (18 s -> 0.36 s, 10 s -> 0.2 s).
"""

from __future__ import annotations

import secrets
import time
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from websockets.http11 import Request

from support.wait import past
from tests.venues._sim_a import Session, SimulationBase, Tick, dumps, loads

SYMBOLS = {"BTC-USDT": 60_000.0, "ETH-USDT": 3_000.0}
TOPICS = {"/market/ticker"}


class KucoinSimulation(SimulationBase):
    name: ClassVar[str] = "kucoin"
    PATH: ClassVar[str] = "/"
    PING_INTERVAL: ClassVar[float] = 0.36  # 18 000 ms from bullet-public
    PING_TIMEOUT: ClassVar[float] = 0.2  # 10 000 ms from bullet-public

    def __init__(self) -> None:
        super().__init__()
        self.token = secrets.token_urlsafe(24)  # what bullet-public would have handed out

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/?token={self.token}"

    def check_request(self, request: Request) -> tuple[int, str] | None:
        return None if urlsplit(request.path).path == "/" else (404, "Not Found\n")

    def feed_overrides(self) -> dict[str, Any]:
        return {"url": self.url(),
                "heartbeat": {"send": {"id": "hb", "type": "ping"},
                              "interval": self.PING_INTERVAL, "expect": {"type": "pong"},
                              "timeout": self.PING_TIMEOUT},
                "subscribe_ack": {"expect": {"type": "ack"}, "error": {"type": "error"},
                                  "timeout": 1.0}}

    def bad_subscribe(self) -> dict[str, Any]:
        return {"subscribe": [{"id": "sub-1", "type": "subscribe",
                               "topic": "/market/ticker:BTC-USDX", "privateChannel": False,
                               "response": True}]}

    def is_data(self, data: Any) -> bool:
        return isinstance(data, dict) and data.get("type") == "message" and "data" in data

    async def session(self, session: Session) -> None:
        query = parse_qs(urlsplit(session.ws.request.path if session.ws.request else "/").query)
        connect_id = query.get("connectId", [secrets.token_urlsafe(6)])[0]
        if query.get("token", [""])[0] != self.token:
            await self.send(session, dumps({"id": connect_id, "type": "error", "code": 401,
                                            "data": "token is invalid"}))
            return await self.drop(session.ws, "bad token")
        await self.send(session, dumps({"id": connect_id, "type": "welcome"}))
        await self.run(session, self._read(session), self._watch(session))

    async def _watch(self, session: Session) -> None:
        await past(lambda: session.last_recv + self.PING_INTERVAL + self.PING_TIMEOUT)
        return await self.drop(session.ws, "missed heartbeat (client silent)")

    async def _read(self, session: Session) -> None:
        async for message in session.ws:
            session.last_recv = time.monotonic()
            reply = self._request(session, message)
            if reply is not None:
                await self.send(session, dumps(reply))

    def _request(self, session: Session, message: str | bytes) -> dict[str, Any] | None:
        request = loads(message)
        if not isinstance(request, dict):
            return {"type": "error", "code": 400, "data": "message is invalid"}
        ident, kind = request.get("id"), request.get("type")
        ident = str(ident) if ident is not None else None  # KuCoin answers ids as strings
        if kind == "ping":
            self.client_heartbeats += 1
            return {"id": ident, "type": "pong"}
        if kind not in ("subscribe", "unsubscribe"):
            return {"id": ident, "type": "error", "code": 400, "data": f"type {kind} is invalid"}
        topic = request.get("topic")
        prefix, _, names = topic.partition(":") if isinstance(topic, str) else ("", "", "")
        symbols = names.split(",")
        if prefix not in TOPICS or not all(symbols):
            return {"id": ident, "type": "error", "code": 400, "data": f"topic {topic} is invalid"}
        if any(symbol not in SYMBOLS for symbol in symbols):
            return {"id": ident, "type": "error", "code": 404,
                    "data": f"topic {topic} is not found"}
        for symbol in symbols:
            item = (prefix, symbol)
            if kind == "subscribe" and item not in session.topics:
                session.topics.append(item)
            elif kind == "unsubscribe" and item in session.topics:
                session.topics.remove(item)
        self.subscriptions += kind == "subscribe"
        return {"id": ident, "type": "ack"} if request.get("response") is True else None

    def frames_for(self, session: Session, tick: Tick) -> list[str | bytes]:
        return [dumps({"type": "message", "topic": f"{prefix}:{symbol}",
                       "subject": "trade.ticker", "data": _ticker(symbol, tick)})
                for prefix, symbol in session.topics]


def _ticker(symbol: str, tick: Tick) -> dict[str, Any]:
    price = SYMBOLS[symbol] + (tick.n % 200) / 10
    return {"sequence": str(1_545_896_668_986 + tick.n), "price": f"{price:.1f}",
            "size": "0.011", "bestAsk": f"{price + 0.1:.1f}", "bestAskSize": "0.18",
            "bestBid": f"{price:.1f}", "bestBidSize": "0.036", "time": tick.ms}


SIMULATION = KucoinSimulation
