"""OKX v5 public WebSocket (wss://ws.okx.com:8443/ws/v5/public), simulated on 127.0.0.1.

Documentation followed (OKX API v5, "WebSocket" overview, subscribe, notice, error codes, tickers):
https://www.okx.com/docs-v5/en/#overview-websocket-overview
https://www.okx.com/docs-v5/en/#overview-websocket-subscribe
https://www.okx.com/docs-v5/en/#overview-websocket-notification-notice
https://www.okx.com/docs-v5/en/#error-code-websocket-public
https://www.okx.com/docs-v5/en/#order-book-trading-market-data-ws-tickers-channel

Rules kept: path /ws/v5/public; subscribe `{"id", "op": "subscribe", "args": [{"channel",
"instId"}]}` acknowledged once per arg with `{"id", "event": "subscribe", "arg", "connId"}`;
errors `{"id", "event": "error", "code", "msg", "connId"}` (60012 invalid request, 60018 unknown
channel/instrument, 60019 invalid op); heartbeat: the client sends the text "ping" and gets
"pong"; the venue breaks a connection that has not subscribed, or to which nothing was pushed, for
30 s (scaled to IDLE). The tickers channel pushes on change, so the simulated market has quiet
spells longer than IDLE: only a client that pings survives them. `send_notice()` sends the 64008
service-upgrade notice; the venue closes the connection 30 s later (scaled to NOTICE_GRACE).
Scale: 1/50 (30 s -> 0.6 s).
"""

from __future__ import annotations

import secrets
import time
from typing import Any, ClassVar

from support.wait import past
from tests.venues._sim_a import Session, SimulationBase, Tick, dumps, loads

INSTRUMENTS = {"BTC-USDT": 60_000.0, "ETH-USDT": 3_000.0}
CHANNELS = {"tickers"}


class OkxSimulation(SimulationBase):
    name: ClassVar[str] = "okx"
    PATH: ClassVar[str] = "/ws/v5/public"
    IDLE: ClassVar[float] = 0.6  # 30 s: no subscription, or nothing pushed, for this long
    ACTIVE: ClassVar[float] = 1.2  # market moves for this long ...
    QUIET: ClassVar[float] = 0.9  # ... then is quiet for longer than IDLE
    NOTICE_GRACE: ClassVar[float] = 0.6  # 30 s between the 64008 notice and the close
    HEARTBEAT: ClassVar[float] = 0.3  # the client's ping interval: N < 30 s, 15 s here for margin

    def feed_overrides(self) -> dict[str, Any]:
        return {
            "url": self.url(),
            "heartbeat": {"send": "ping", "interval": self.HEARTBEAT, "expect": "pong",
                          "timeout": self.HEARTBEAT},
            "subscribe_ack": {"expect": {"event": "subscribe"}, "error": {"event": "error"},
                              "timeout": 1.0},
        }

    def bad_subscribe(self) -> dict[str, Any]:
        return {"subscribe": [{"id": "1", "op": "subscribe",
                               "args": [{"channel": "tickers", "instId": "BTC-USDX"}]}]}

    def is_data(self, data: Any) -> bool:
        return isinstance(data, dict) and "event" not in data and {"arg", "data"} <= set(data)

    def send_notice(self) -> None:
        def notice(session: Session) -> list[str | bytes]:
            session.state["notice_at"] = time.monotonic()
            return [dumps({"event": "notice", "code": "64008",
                           "msg": "The connection will soon be closed for a service upgrade. "
                                  "Please reconnect.",
                           "connId": session.state["conn_id"]})]

        self.send_to_all(notice)

    async def session(self, session: Session) -> None:
        session.state["conn_id"] = secrets.token_hex(4)
        await self.run(session, self._read(session), self._watch(session))

    async def _read(self, session: Session) -> None:
        async for message in session.ws:
            if message == "ping":
                self.client_heartbeats += 1
                await self.send(session, "pong")
                continue
            for reply in self._request(session, message):
                await self.send(session, dumps(reply))

    def _request(self, session: Session, message: str | bytes) -> list[dict[str, Any]]:
        request = loads(message)
        conn = {"connId": session.state["conn_id"]}
        if not isinstance(request, dict) or not isinstance(request.get("args"), list):
            text = message if isinstance(message, str) else message.decode(errors="replace")
            return [{"event": "error", "code": "60012", "msg": f"Invalid request: {text}", **conn}]
        ident = {"id": request["id"]} if "id" in request else {}
        op = request.get("op")
        if op not in ("subscribe", "unsubscribe"):
            return [{**ident, "event": "error", "code": "60019", "msg": f"Invalid op: {op}",
                     **conn}]
        replies = []
        for arg in request["args"]:
            channel, inst = (arg.get("channel"), arg.get("instId")) if isinstance(arg, dict) \
                else (None, None)
            if channel not in CHANNELS or inst not in INSTRUMENTS:
                replies.append({**ident, "event": "error", "code": "60018",
                                "msg": f"Wrong URL or channel:{channel},instId:{inst} doesn't "
                                       "exist. Please use the correct URL, channel and "
                                       "parameters referring to API document.", **conn})
                continue
            topic = (channel, inst)
            if op == "subscribe" and topic not in session.topics:
                session.topics.append(topic)
                self.subscriptions += 1
            elif op == "unsubscribe" and topic in session.topics:
                session.topics.remove(topic)
            replies.append({**ident, "event": op, "arg": {"channel": channel, "instId": inst},
                            **conn})
        return replies

    async def _watch(self, session: Session) -> None:
        # A notice comes while `past` sleeps; its grace ends no sooner than that sleep does.
        assert self.NOTICE_GRACE >= self.IDLE

        def closing_at() -> float:
            notice_at = session.state.get("notice_at")
            idle_since = session.last_sent if session.topics else session.opened
            return min(idle_since + self.IDLE,
                       float("inf") if notice_at is None else notice_at + self.NOTICE_GRACE)

        await past(closing_at)
        notice_at = session.state.get("notice_at")
        if notice_at is not None and time.monotonic() - notice_at >= self.NOTICE_GRACE:
            await session.ws.close(1001, "service upgrade")  # announced, not a violation
        elif not session.topics:
            await self.drop(session.ws, "no subscribe")
        else:
            await self.drop(session.ws, "nothing pushed (missed heartbeat)")

    def frames_for(self, session: Session, tick: Tick) -> list[str | bytes]:
        cycle = self.ACTIVE + self.QUIET
        if (tick.n / self.RATE) % cycle >= self.ACTIVE:
            return []  # a quiet spell: no trades, no book change, nothing pushed
        return [dumps({"arg": {"channel": channel, "instId": inst},
                       "data": [_ticker(inst, tick)]}) for channel, inst in session.topics]


def _ticker(inst: str, tick: Tick) -> dict[str, str]:
    last = INSTRUMENTS[inst] + (tick.n % 200) / 10
    return {"instType": "SPOT", "instId": inst, "last": f"{last:.1f}", "lastSz": "0.01",
            "askPx": f"{last + 0.1:.1f}", "askSz": "1.2", "bidPx": f"{last:.1f}", "bidSz": "0.8",
            "open24h": f"{INSTRUMENTS[inst]:.1f}", "high24h": f"{last + 50:.1f}",
            "low24h": f"{last - 50:.1f}", "sodUtc0": f"{INSTRUMENTS[inst]:.1f}",
            "sodUtc8": f"{INSTRUMENTS[inst]:.1f}", "volCcy24h": "123456789.5",
            "vol24h": "2057.3", "ts": str(tick.ms)}


SIMULATION = OkxSimulation
