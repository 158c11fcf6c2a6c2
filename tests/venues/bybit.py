"""Bybit v5 public spot stream (wss://stream.bybit.com/v5/public/spot), simulated on 127.0.0.1.

Documentation followed (Bybit API v5, WebSocket "Connect": heartbeat, subscribe, responses;
public "Ticker" and "Trade" topics):
https://bybit-exchange.github.io/docs/v5/ws/connect
https://bybit-exchange.github.io/docs/v5/websocket/public/ticker
https://bybit-exchange.github.io/docs/v5/websocket/public/trade

Rules kept: path /v5/public/spot; `{"req_id", "op": "subscribe", "args": [topics]}` (at most 10
args per request on spot) acknowledged once per request with the public-spot shape
`{"success": true, "ret_msg": "subscribe", "conn_id", "req_id", "op": "subscribe"}` (not
ret_msg "" as on linear/private); a refusal is the same frame with `"success": false` and the
reason in ret_msg ("args size >10" is documented; "error:handler not found,topic:..." and
"Invalid symbol :[...]" are what production sends, seen in client code, not in the docs). The
client sends `{"req_id", "op": "ping"}` (every 20 s recommended) and gets the spot pong
`{"success": true, "ret_msg": "pong", "conn_id", "op": "ping"}`; a connection with neither
ping-pong nor stream data for 10 minutes is cut, checked by a scan every 30 s.
Scale: 1/100 (20 s -> 0.2 s, 10 min -> 6 s, 30 s -> 0.3 s).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, ClassVar

from tests.venues._sim_a import Session, SimulationBase, Tick, dumps, loads

SYMBOLS = {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0}
TOPICS = {"tickers", "publicTrade"}
MAX_ARGS = 10


class BybitSimulation(SimulationBase):
    name: ClassVar[str] = "bybit"
    PATH: ClassVar[str] = "/v5/public/spot"
    HEARTBEAT: ClassVar[float] = 0.2  # the recommended client ping interval, 20 s
    IDLE_CUT: ClassVar[float] = 6.0  # 10 minutes without ping-pong or data
    SCAN: ClassVar[float] = 0.3  # the server's 30 s scan

    def feed_overrides(self) -> dict[str, Any]:
        return {"url": self.url(),
                "heartbeat": {"send": {"req_id": "hb", "op": "ping"}, "interval": self.HEARTBEAT,
                              "expect": {"op": "ping", "ret_msg": "pong"},
                              "timeout": self.HEARTBEAT},
                "subscribe_ack": {"expect": {"op": "subscribe", "success": True},
                                  "error": {"op": "subscribe", "success": False},
                                  "timeout": 1.0}}

    def bad_subscribe(self) -> dict[str, Any]:
        return {"subscribe": [{"req_id": "sub-1", "op": "subscribe",
                               "args": ["tickers.BTCUSDX"]}]}

    def is_data(self, data: Any) -> bool:
        return isinstance(data, dict) and {"topic", "data", "ts"} <= set(data)

    async def session(self, session: Session) -> None:
        session.state["conn_id"] = str(uuid.uuid4())
        await self.run(session, self._read(session), self._scan(session))

    async def _scan(self, session: Session) -> None:
        while True:
            await asyncio.sleep(self.SCAN)
            if time.monotonic() - session.last_sent > self.IDLE_CUT:
                return await self.drop(session.ws, "no ping-pong and no data for 10 minutes")

    async def _read(self, session: Session) -> None:
        async for message in session.ws:
            await self.send(session, dumps(self._request(session, message)))

    def _request(self, session: Session, message: str | bytes) -> dict[str, Any]:
        request = loads(message)
        conn = {"conn_id": session.state["conn_id"]}
        if not isinstance(request, dict) or request.get("op") not in (
                "ping", "subscribe", "unsubscribe"):
            op = request.get("op", "") if isinstance(request, dict) else ""
            return {"success": False, "ret_msg": f"error:unknown op {op}".strip(), **conn}
        op = request["op"]
        if op == "ping":
            self.client_heartbeats += 1
            return {"success": True, "ret_msg": "pong", **conn, "op": "ping"}
        ident = {"req_id": request["req_id"]} if "req_id" in request else {}
        args = request.get("args")
        problem = self._refusal(args)
        if problem:
            return {"success": False, "ret_msg": problem, **conn, **ident, "op": op}
        for topic in args or []:
            if op == "subscribe" and topic not in session.topics:
                session.topics.append(topic)
            elif op == "unsubscribe" and topic in session.topics:
                session.topics.remove(topic)
        self.subscriptions += op == "subscribe"
        return {"success": True, "ret_msg": op, **conn, **ident, "op": op}

    @staticmethod
    def _refusal(args: Any) -> str:
        if not isinstance(args, list) or not args:
            return "error:args is empty"
        if len(args) > MAX_ARGS:
            return f"args size >{MAX_ARGS}"
        for topic in args:
            kind, _, symbol = topic.partition(".") if isinstance(topic, str) else ("", "", "")
            if kind not in TOPICS:
                return f"error:handler not found,topic:{topic}"
            if symbol not in SYMBOLS:
                return f"Invalid symbol :[{topic}]"
        return ""

    def frames_for(self, session: Session, tick: Tick) -> list[str | bytes]:
        return [dumps(_frame(topic, tick)) for topic in session.topics]


def _frame(topic: str, tick: Tick) -> dict[str, Any]:
    kind, symbol = topic.split(".")
    price = SYMBOLS[symbol] + (tick.n % 200) / 10
    if kind == "tickers":
        return {"topic": topic, "ts": tick.ms, "type": "snapshot", "cs": 2_588_000_000 + tick.n,
                "data": {"symbol": symbol, "lastPrice": f"{price:.2f}",
                         "highPrice24h": f"{price + 50:.2f}", "lowPrice24h": f"{price - 50:.2f}",
                         "prevPrice24h": f"{SYMBOLS[symbol]:.2f}", "volume24h": "6780.866843",
                         "turnover24h": "141946527.22907118", "price24hPcnt": "0.0196",
                         "usdIndexPrice": f"{price + 0.3:.2f}"}}
    return {"topic": topic, "type": "snapshot", "ts": tick.ms,
            "data": [{"T": tick.ms - 1, "s": symbol, "S": "Buy" if tick.n % 2 else "Sell",
                      "v": "0.001", "p": f"{price:.2f}", "L": "PlusTick",
                      "i": str(uuid.UUID(int=tick.n)), "BT": False,
                      "seq": 1_783_000_000 + tick.n}]}


SIMULATION = BybitSimulation
