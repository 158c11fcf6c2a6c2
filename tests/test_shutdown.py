"""`python -m app` stops within INGEST_SHUTDOWN_TIMEOUT_MS + 2 s after SIGTERM, whatever its peers
do: a sink that never reads, a sink that is down under busy feeds, a feed that never answers the
closing handshake. What could not be written is counted in the log."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from support.servers import WsServer, feed_handler, tick
from support.wait import wait_until

TIMEOUT_MS = 2000
BOUND_S = TIMEOUT_MS / 1000 + 2  # the bound: the shutdown timeout + 2 s


async def deaf_sink(ws: ServerConnection) -> None:
    """Accepts the connection, then never reads again: no frame, no ping is ever processed."""
    ws.transport.pause_reading()
    ws.transport.resume_reading = lambda: None  # type: ignore[method-assign]
    await ws.wait_closed()


def stop_and_time(app) -> float:
    started = time.monotonic()
    code = app.terminate(timeout=BOUND_S + 10)  # generous kill deadline: measure, then assert
    elapsed = time.monotonic() - started
    assert code == 0, app.stderr()
    print(f"exit {elapsed:.2f} s after SIGTERM")  # shown with -rP
    return elapsed


def unsent(app) -> int:
    lines = [e for e in app.logs() if e["event"] == "sink_unsent_at_shutdown"]
    assert all(0 < e["messages"] <= e["of"] for e in lines), lines
    return sum(e["messages"] for e in lines)


@pytest.mark.parametrize("confirm", ["ping", "none"])
def test_a_sink_that_never_reads_does_not_hold_the_shutdown(servers, service, confirm):
    sink = servers(deaf_sink, close_timeout=0.1)  # lets the test's teardown be quick
    feed = servers(feed_handler(1_000_000, name="f"))
    app = service({"INGEST_SOURCE_URLS": feed.url, "INGEST_SINK_URL": sink.url,
                   "INGEST_SINK_CONFIRM": confirm, "INGEST_SHUTDOWN_TIMEOUT_MS": str(TIMEOUT_MS)})
    app.wait_ready()
    # The worker is stuck in a write (pong or socket buffer) once reading stops for lack of room.
    seen: list[float] = []

    def stalled() -> bool:
        seen.append(app.metric("ingest_messages_received_total", source=feed.url[5:]) or 0)
        return len(seen) >= 2 and seen[-1] == seen[-2] >= 1

    wait_until(stalled, 60, interval=0.5)
    elapsed = stop_and_time(app)
    assert elapsed < BOUND_S, f"exit {elapsed:.1f} s after SIGTERM"
    assert unsent(app) >= 1


def test_the_sink_down_and_ten_busy_feeds(sink, servers, service):
    feeds = [servers(feed_handler(1_000_000, name=f"f{i}", interval=0.001)) for i in range(10)]
    app = service({"INGEST_SOURCE_URLS": ",".join(feed.url for feed in feeds),
                   "INGEST_SINK_URL": sink.url, "INGEST_SHUTDOWN_TIMEOUT_MS": str(TIMEOUT_MS)})
    app.wait_ready()
    assert sink.wait_for(lambda s: len(s.messages) >= 1000, 20)
    sink.server.stop()
    wait_until(lambda: app.metric("ingest_sink_up") == 0)
    elapsed = stop_and_time(app)
    assert elapsed < BOUND_S, f"exit {elapsed:.1f} s after SIGTERM"
    assert unsent(app) >= 1


def test_feeds_that_never_answer_the_closing_handshake(sink, servers, service):
    async def mute(ws: ServerConnection) -> None:
        """Stops reading, and sends on: our close frame is never answered."""
        ws.transport.pause_reading()
        ws.transport.resume_reading = lambda: None  # type: ignore[method-assign]
        with contextlib.suppress(ConnectionClosed):
            for n in range(1, 100_000):
                await ws.send(tick("mute", n))
                if n > 100:
                    await asyncio.sleep(0.01)

    feeds: list[WsServer] = [servers(mute, close_timeout=0.1) for _ in range(10)]
    app = service({"INGEST_SOURCE_URLS": ",".join(feed.url for feed in feeds),
                   "INGEST_SINK_URL": sink.url, "INGEST_SHUTDOWN_TIMEOUT_MS": str(TIMEOUT_MS)})
    app.wait_ready()
    assert sink.wait_for(lambda s: len(s.messages) >= 1000, 20)
    sink.server.stop()  # the flush uses the whole timeout; closing the feeds comes after it
    wait_until(lambda: app.metric("ingest_sink_up") == 0)
    elapsed = stop_and_time(app)
    assert elapsed < BOUND_S, f"exit {elapsed:.1f} s after SIGTERM"
