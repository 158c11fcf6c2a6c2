"""connect_hook end to end: a KuCoin-like venue whose connect tokens expire.

The venue hands out a token at `GET /api/v1/bullet-public` (KuCoin: POST; websockets' server
answers GET only, which changes nothing here); a WebSocket handshake must carry a valid token
in its query, else HTTP 401. After `PER_TOKEN` ticks a connection's token expires and the venue
closes the connection (1001, going away). A feed with the token written in its URL is refused
from then on; a feed whose hook fetches a token before every attempt carries on, gap-free.
"""

from __future__ import annotations

import json
import secrets
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from support.wait import wait_until

PER_TOKEN = 20
TOTAL = 60


class TokenVenue:
    """Ticks 1..TOTAL across connections, PER_TOKEN per token; needs a subscribe first."""

    def __init__(self) -> None:
        self.valid: set[str] = set()
        self.issued = 0
        self.refused = 0
        self.subscriptions: list[dict[str, Any]] = []
        self._next = 1
        self._lock = threading.Lock()
        self.port = 0

    def issue(self) -> str:
        with self._lock:
            token = secrets.token_urlsafe(12)
            self.valid.add(token)
            self.issued += 1
            return token

    def process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if parts.path == "/api/v1/bullet-public":
            body = {"code": "200000", "data": {"token": self.issue(), "instanceServers": [
                {"endpoint": f"ws://127.0.0.1:{self.port}/", "protocol": "websocket"}]}}
            response = ws.respond(200, json.dumps(body))
            response.headers["Content-Type"] = "application/json"
            return response
        token = parse_qs(parts.query).get("token", [""])[0]
        if token not in self.valid:
            self.refused += 1
            return ws.respond(401, "token is invalid\n")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        token = parse_qs(urlsplit(ws.request.path).query)["token"][0]
        try:
            self.subscriptions.append(json.loads(await ws.recv()))
            for _ in range(PER_TOKEN):
                if self._next > TOTAL:
                    break
                await ws.send(json.dumps({"type": "message", "topic": "/market/ticker:BTC-USDT",
                                          "data": {"sequence": self._next}}))
                self._next += 1
            if self._next > TOTAL:
                await ws.wait_closed()
                return
            self.valid.discard(token)  # expired: this token opens no connection any more
            await ws.close(1001, "token expired")
        except ConnectionClosed:
            pass


def _start(servers: Any) -> TokenVenue:
    venue = TokenVenue()
    server = servers(venue.handler, process_request=venue.process_request)
    venue.port = server.port
    return venue


def test_the_hook_supplies_a_fresh_token_and_data_resumes(servers, sink, dataflow):
    hooked, static = _start(servers), _start(servers)
    feeds = [
        {"name": "hooked", "url": f"ws://127.0.0.1:{hooked.port}/",
         "connect_hook": "tests.hooks:kucoin_token"},
        {"name": "static", "url": f"ws://127.0.0.1:{static.port}/?token={static.issue()}",
         "subscribe": [{"id": "s", "type": "subscribe", "topic": "/market/ticker:BTC-USDT"}]},
    ]
    app = dataflow({"INGEST_SOURCES": json.dumps(feeds), "INGEST_SINK_URL": sink.url})

    def sequences(source: str) -> list[int]:
        return [m["data"]["data"]["sequence"] for m in list(sink.messages)
                if m["source"] == source]

    wait_until(lambda: len(sequences("hooked")) == TOTAL,
               message=lambda: f"hooked received {sequences('hooked')}")
    assert sequences("hooked") == list(range(1, TOTAL + 1))  # no gap across three tokens
    assert hooked.issued == TOTAL // PER_TOKEN and hooked.refused == 0
    # Each connection subscribed with the hook's messages, naming its own connectId.
    assert [s["type"] for s in hooked.subscriptions] == ["subscribe"] * 3
    assert len({s["id"] for s in hooked.subscriptions}) == 3
    assert app.metric("ingest_source_connects_total", source="hooked") == 3

    # The same venue without the hook: its token expired, every attempt now refused (401).
    wait_until(lambda: (app.metric("ingest_source_connect_failures_total", source="static",
                                   reason="rejected") or 0) >= 2)
    assert sequences("static") == list(range(1, PER_TOKEN + 1))
    refused = next(line for line in app.logs()
                   if line["event"] == "source_connect_failed" and line["source"] == "static")
    assert refused["log_level"] == "error" and refused["http_status"] == 401
    app.stop()


def test_a_failing_hook_is_a_failed_attempt_that_backs_off_and_logs_no_secret(
        servers, sink, dataflow):
    venue = _start(servers)
    feeds = [{"name": "k", "url": f"ws://127.0.0.1:{venue.port}/",
              "headers": {"X-Api-Key": "secret-key-123"},
              "connect_hook": "tests.hooks:leaky"}]
    app = dataflow({"INGEST_SOURCES": json.dumps(feeds), "INGEST_SINK_URL": sink.url})
    wait_until(lambda: (app.metric("ingest_source_connect_failures_total", source="k",
                                   reason="other") or 0) >= 2)
    assert venue.issued == 0 and not sink.messages
    failed = [line for line in app.logs() if line["event"] == "source_connect_failed"]
    assert failed[0]["error"] == "connect_hook raised PermissionError: key *** was refused"
    assert "secret-key-123" not in json.dumps(app.logs())
    app.stop()
