"""HTX (Huobi) spot market WebSocket (wss://api.huobi.pro/ws), simulated on 127.0.0.1.

Documentation followed (HTX spot API v1, "Websocket Market Data": access, gzip, heartbeat,
subscribe/unsubscribe, "Best Bid/Offer" and "Market Ticker" topics):
https://huobiapi.github.io/docs/spot/v1/en/#websocket-market-data
https://huobiapi.github.io/docs/spot/v1/en/#best-bid-offer
https://www.htx.com/en-us/opend/newApiPages/ (the same pages, newer home)
https://huobius.readme.io/reference/general-request-process (the same heartbeat text, verbatim)

Rules kept: path /ws; EVERY server frame is gzip-compressed and sent binary; the server sends
`{"ping": <ms>}` every 5 s and the client must answer `{"pong": <same ms>}`; after 2 pings
without a pong ("within two ping periods") the server closes the connection. Subscribe
`{"sub": topic, "id": id}` -> `{"id", "status": "ok", "subbed": topic, "ts"}`; an unknown topic
-> `{"id", "status": "error", "err-code": "bad-request", "err-msg": "invalid topic <topic>",
"ts"}`. Data `{"ch", "ts", "tick": {...}}` (bbo: `seqId`, `quoteTime`). Scale: 1/20 (5 s -> 0.25 s).
"""

from __future__ import annotations

import asyncio
import gzip
import re
import time
from typing import Any, ClassVar

from tests.venues._sim_a import Session, SimulationBase, Tick, dumps, loads

SYMBOLS = {"btcusdt": 60_000.0, "ethusdt": 3_000.0}
TOPIC = re.compile(r"market\.(?P<symbol>[a-z0-9]+)\.(?P<kind>bbo|ticker)")


def _now() -> int:
    return int(time.time() * 1000)


class HtxSimulation(SimulationBase):
    name: ClassVar[str] = "htx"
    PATH: ClassVar[str] = "/ws"
    PING_EVERY: ClassVar[float] = 0.25  # 5 s
    MISSED: ClassVar[int] = 2  # pings without a pong before the close

    def feed_overrides(self) -> dict[str, Any]:
        return {"url": self.url(),
                "subscribe_ack": {"expect": {"status": "ok", "subbed": "*"},
                                  "error": {"status": "error"}, "timeout": 1.0}}

    def bad_subscribe(self) -> dict[str, Any]:
        return {"subscribe": [{"sub": "market.btcusdx.bbo", "id": "bbo1"}]}

    def is_data(self, data: Any) -> bool:
        return isinstance(data, dict) and {"ch", "tick"} <= set(data)

    async def send(self, session: Session, frame: str | bytes) -> None:
        # HTX compresses every frame, data and control alike.
        raw = frame.encode() if isinstance(frame, str) else frame
        await super().send(session, gzip.compress(raw, compresslevel=1))

    async def session(self, session: Session) -> None:
        session.state["outstanding"] = []
        await self.run(session, self._read(session), self._ping(session))

    async def _ping(self, session: Session) -> None:
        while True:
            await asyncio.sleep(self.PING_EVERY)
            outstanding: list[int] = session.state["outstanding"]
            if len(outstanding) >= self.MISSED:
                return await self.drop(session.ws, "missed heartbeat")
            outstanding.append(ping := _now())
            self.pings_sent += 1
            await self.send(session, dumps({"ping": ping}))

    async def _read(self, session: Session) -> None:
        async for message in session.ws:
            request = loads(message)
            if not isinstance(request, dict):
                await self.send(session, dumps(_error(None, "invalid request")))
            elif "pong" in request:
                if request["pong"] in session.state["outstanding"]:
                    session.state["outstanding"].clear()  # a late pong still proves life
                    self.pings_answered += 1
            elif "sub" in request or "unsub" in request:
                await self.send(session, dumps(self._subscribe(session, request)))
            else:
                await self.send(session, dumps(_error(request.get("id"), "invalid request")))

    def _subscribe(self, session: Session, request: dict[str, Any]) -> dict[str, Any]:
        op = "sub" if "sub" in request else "unsub"
        topic = request[op]
        found = TOPIC.fullmatch(topic) if isinstance(topic, str) else None
        if found is None or found["symbol"] not in SYMBOLS:
            return _error(request.get("id"), f"invalid topic {topic}")
        if op == "sub" and topic not in session.topics:
            session.topics.append(topic)
            self.subscriptions += 1
        elif op == "unsub" and topic in session.topics:
            session.topics.remove(topic)
        return {"id": request.get("id"), "status": "ok", f"{op}bed": topic, "ts": _now()}

    def frames_for(self, session: Session, tick: Tick) -> list[str | bytes]:
        return [dumps({"ch": topic, "ts": tick.ms, "tick": _tick(topic, tick)})
                for topic in session.topics]


def _error(ident: Any, message: str) -> dict[str, Any]:
    frame = {"status": "error", "err-code": "bad-request", "err-msg": message, "ts": _now()}
    return frame if ident is None else {"id": ident, **frame}


def _tick(topic: str, tick: Tick) -> dict[str, Any]:
    _, symbol, kind = topic.split(".")
    price = SYMBOLS[symbol] + (tick.n % 200) / 10
    if kind == "bbo":
        return {"seqId": 160_000_000_000 + tick.n, "ask": price + 0.01, "askSize": 0.5,
                "bid": price, "bidSize": 0.7, "quoteTime": tick.ms - 2, "symbol": symbol}
    return {"open": SYMBOLS[symbol], "high": price + 50, "low": price - 50, "close": price,
            "amount": 13259.24, "vol": 687640987.41, "count": 448737 + tick.n, "bid": price,
            "bidSize": 0.036, "ask": price + 0.01, "askSize": 0.58, "lastPrice": price,
            "lastSize": 0.03}


SIMULATION = HtxSimulation
