"""Why a connection attempt failed: every reason of ingest_source_connect_failures_total, seen
with real failures on 127.0.0.1 (and a name under the reserved `.invalid` TLD, which never
resolves), and a 429's Retry-After honoured by the reconnect loop."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
import structlog
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import InvalidMessage, InvalidProxyStatus, ProxyError
from websockets.http11 import Request, Response

from app.errors import ConnectHookError
from app.net import Endpoint, open_connection, reconnect_forever
from app.retry import (
    RETRY_AFTER_MAX_S,
    Backoff,
    Failure,
    classify_failure,
    parse_retry_after,
)
from support.servers import TcpServer
from support.service import free_port
from support.wait import wait_until

LOG = structlog.get_logger("test")


def _refusing(status: int, retry_after: str | None = None):
    """A process_request answering every handshake with `status` (and Retry-After)."""

    def process_request(ws: ServerConnection, request: Request) -> Response:
        response = ws.respond(status, "go away\n")
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        return response

    return process_request


async def _never_called(ws: ServerConnection) -> None:
    raise AssertionError("the handshake was refused: no session")


async def _no_session(ws: ClientConnection) -> None:
    raise AssertionError("every handshake is refused")


class Silent(TcpServer):
    """Accepts TCP connections and never answers the handshake."""


def test_every_reason_is_counted_per_feed_and_logged(servers, sink, dataflow):
    silent = Silent()
    try:
        unauthorized = servers(_never_called, process_request=_refusing(401))
        feeds = [
            {"name": "dns", "url": "ws://ingest-feed.invalid:9/ws"},
            {"name": "refused", "url": f"ws://127.0.0.1:{free_port()}/ws"},
            {"name": "timeout", "url": f"ws://127.0.0.1:{silent.port}/ws", "open_timeout": 0.2},
            {"name": "rejected", "url": unauthorized.url},
            {"name": "other", "url": unauthorized.url, "connect_hook": "tests.hooks:broken"},
        ]
        app = dataflow({"INGEST_SOURCES": json.dumps(feeds), "INGEST_SINK_URL": sink.url})

        def counted(name: str) -> float:
            return app.metric("ingest_source_connect_failures_total", source=name,
                              reason=name) or 0

        wait_until(lambda: all(counted(feed["name"]) >= 2 for feed in feeds),
                   message=lambda: str({feed["name"]: counted(feed["name"]) for feed in feeds}))
        for feed in feeds:  # each failure counts under its own reason only
            others = [app.metric("ingest_source_connect_failures_total", source=feed["name"],
                                 reason=reason)
                      for reason in ("dns", "refused", "timeout", "tls", "rejected", "other")
                      if reason != feed["name"]]
            assert others == [0] * 5, feed["name"]
        logs = {line["source"]: line for line in app.logs()
                if line["event"] == "source_connect_failed"}
        assert logs["rejected"]["log_level"] == "error"
        assert logs["rejected"]["http_status"] == 401
        assert logs["rejected"]["error"].startswith(
            "the server answered the handshake with HTTP 401 Unauthorized: ")
        assert logs["dns"]["log_level"] == "error"
        assert logs["dns"]["error"].startswith("the host name in the URL does not resolve")
        assert logs["refused"]["log_level"] == "warning"
        assert logs["timeout"]["error"].startswith("no answer within the open timeout")
        assert logs["other"]["error"] == "connect_hook raised RuntimeError: token service down"
        app.stop()
    finally:
        silent.close()


def _attempt_times(server_options: dict[str, object], attempts: int
                   ) -> tuple[list[float], list[dict[str, object]]]:
    """When each of the first `attempts` connection attempts failed (monotonic seconds), and
    what was logged."""
    failures: list[Failure] = []
    times: list[float] = []

    async def run() -> None:
        async with serve(_never_called, "127.0.0.1", 0, **server_options) as server:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"

            def failed(failure: Failure) -> None:
                failures.append(failure)
                times.append(time.monotonic())
                if len(times) == attempts:
                    task.cancel()

            task = asyncio.ensure_future(reconnect_forever(
                lambda: open_connection(Endpoint(url, proxy=None), ClientConnection),
                _no_session, backoff=Backoff(0.01, 0.02), log=LOG, event_prefix="test",
                on_down=lambda: None, on_failure=failed))
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)

    with structlog.testing.capture_logs() as logs:
        asyncio.run(run())
    assert all(failure.reason == "rejected" for failure in failures)
    return times, logs




def test_a_429_with_retry_after_waits_that_long():
    (first, second), logs = _attempt_times({"process_request": _refusing(429, "1")}, 2)
    assert second - first >= 1.0  # the backoff alone would be under 0.02 s
    assert logs[0]["event"] == "test_connect_failed" and logs[0]["log_level"] == "warning"
    assert (logs[0]["http_status"], logs[0]["retry_after_s"]) == (429, 1.0)


def test_a_429_without_retry_after_backs_off_as_usual():
    (first, second), logs = _attempt_times({"process_request": _refusing(429)}, 2)
    assert second - first < 0.9
    assert "retry_after_s" not in logs[0]


def _response(status: int) -> Response:
    return Response(status, "Refused", Headers())


@pytest.mark.parametrize(("exc", "reason", "detail", "needs_action"), [
    (InvalidProxyStatus(_response(407)), "rejected",
     "the proxy answered CONNECT with HTTP 407", True),
    (InvalidProxyStatus(_response(502)), "rejected",
     "the proxy answered CONNECT with HTTP 502", False),
    (ProxyError("failed to connect to SOCKS proxy"), "other",
     "the proxy failed (failed to connect to SOCKS proxy)", False),
    (ConnectHookError("connect_hook raised KeyError: 'token'"), "other",
     "connect_hook raised KeyError: 'token'", False),
])
def test_classify_proxy_and_hook_failures(exc, reason, detail, needs_action):
    assert classify_failure(exc) == Failure(reason, detail, needs_action)


def test_a_close_before_the_handshake_answer_is_explained():
    try:
        raise InvalidMessage("did not receive a valid HTTP response") from EOFError()
    except InvalidMessage as exc:
        failure = classify_failure(exc)
    assert failure.reason == "other"
    assert failure.detail.startswith("the server closed the connection before answering")


def test_parse_retry_after():
    now = datetime(2026, 11, 26, 7, 0, tzinfo=timezone.utc)
    assert parse_retry_after(None, now.timestamp()) is None
    assert parse_retry_after("7", now.timestamp()) == 7.0
    assert parse_retry_after(" 0 ", now.timestamp()) == 0.0
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(date, now.timestamp()) == pytest.approx(30.0)
    past = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(past, now.timestamp()) == 0.0
    assert parse_retry_after("86400000", now.timestamp()) == RETRY_AFTER_MAX_S
    assert parse_retry_after("soon", now.timestamp()) is None
    assert parse_retry_after("-5", now.timestamp()) is None
