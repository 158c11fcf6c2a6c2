"""Issue 15, messages: failed connections in words an operator acts on, and a quiet demo feed.

The failures are real ones (servers on 127.0.0.1), except DNS: resolving a name that does not
exist would ask a DNS server off this machine, so that one error is built by hand.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from app.retry import Failure, classify_failure
from support.servers import WsServer
from support.service import ROOT, free_port
from support.wait import holds_for, wait_until


def failure_of(url: str) -> Failure:
    """Open `url` as the service does and classify how that failed."""

    async def attempt() -> BaseException:
        try:
            async with connect(url, open_timeout=5):
                pass
        except Exception as exc:
            return exc
        raise AssertionError(f"{url} opened")

    return classify_failure(asyncio.run(attempt()))


def answering(status: int, headers: dict[str, str] | None = None) -> Callable[..., Response]:
    def process_request(connection: ServerConnection, request: Request) -> Response:
        return Response(status, "", Headers(headers or {}), b"")

    return process_request


async def accept(ws: ServerConnection) -> None:
    await ws.wait_closed()


@pytest.fixture
def plain_server() -> Iterator[WsServer]:
    server = WsServer(accept)
    yield server
    server.close()


def test_wss_to_a_plain_ws_server_says_the_tls_handshake_failed_and_suggests_ws(plain_server):
    failure = failure_of(plain_server.url.replace("ws://", "wss://"))
    assert failure.reason == "tls" and failure.needs_action
    assert "TLS handshake failed" in failure.detail
    assert "use ws://" in failure.detail


def test_a_refused_connection_says_what_to_check():
    failure = failure_of(f"ws://127.0.0.1:{free_port()}/")
    assert failure.reason == "refused"
    assert "nothing listens on that host and port" in failure.detail
    assert "is the server running, is the port right?" in failure.detail


def test_a_name_that_does_not_resolve_says_so():
    failure = classify_failure(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    assert failure.reason == "dns" and failure.needs_action
    assert failure.detail == ("the host name in the URL does not resolve (Name or service not "
                              "known): check its spelling, and that this machine's DNS knows it")


@pytest.mark.parametrize(("status", "headers", "advice", "needs_action"), [
    (401, {}, "HTTP 401 Unauthorized: the server wants credentials: check the headers", True),
    (403, {}, "HTTP 403 Forbidden: the server refused these credentials", True),
    (404, {}, "HTTP 404 Not Found: nothing serves WebSockets at that path: check the URL's path",
     True),
    (429, {"Retry-After": "30"}, "HTTP 429 Too Many Requests: the server limits how often "
     "clients connect: retrying with backoff; if it persists, raise INGEST_RECONNECT_MIN_MS",
     False),
])
def test_handshake_statuses_are_named_with_what_to_do(status, headers, advice, needs_action):
    server = WsServer(accept, process_request=answering(status, headers))
    try:
        failure = failure_of(server.url)
    finally:
        server.close()
    assert failure.reason == "rejected" and failure.needs_action is needs_action
    assert advice in failure.detail
    if headers:
        assert "(the server asks to wait 30 s)" in failure.detail


def test_the_service_logs_the_tls_advice_for_a_wss_feed_on_a_plain_server(plain_server,
                                                                           sink, service):
    app = service({"INGEST_SOURCE_URLS": plain_server.url.replace("ws://", "wss://"),
                   "INGEST_SINK_URL": sink.url})

    def failures() -> list[dict[str, object]]:
        return [e for e in app.logs() if e["event"] == "source_connect_failed"]

    wait_until(failures, 20, message=app.stdout)
    logged = failures()[0]
    assert logged["reason"] == "tls" and logged["level"] == "error"
    assert "use ws://" in str(logged["error"])
    assert "ConnectionResetError" not in str(logged["error"])


def test_the_demo_feed_is_quiet_when_a_client_leaves_before_subscribing(tmp_path):
    port = free_port()
    err = (tmp_path / "feed.err").open("w+")
    feed = subprocess.Popen([sys.executable, "-m", "app.demo.feed", "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert feed.stdout is not None
        assert json.loads(feed.stdout.readline())["event"] == "demo_feed_listening"

        async def leave_then_subscribe() -> str:
            async with connect(f"ws://127.0.0.1:{port}/alpha"):
                pass  # closes (1000) without subscribing
            async with connect(f"ws://127.0.0.1:{port}/alpha") as ws:
                await ws.send(json.dumps({"type": "subscribe", "channels": ["ticker"]}))
                await ws.recv()
                return str(await ws.recv())

        tick = json.loads(asyncio.run(leave_then_subscribe()))
        assert tick["venue"] == "alpha"
        assert holds_for(lambda: (tmp_path / "feed.err").read_text() == "", 0.5), \
            (tmp_path / "feed.err").read_text()
    finally:
        feed.terminate()
        feed.wait(10)
        err.close()
