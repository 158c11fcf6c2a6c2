"""One feed's connection, inside its partition's event loop: connect, subscribe, read, keep
alive, reconnect.

A `FeedReader` numbers every frame by `seq` (from 1, across reconnects) and keeps the frames in
order until its partition takes them. It stops reading while `batch_size` frames wait
(backpressure: the socket's buffers fill and upstream slows down, rather than memory growing).
Nothing escapes `run()` but cancellation: every failure is logged, counted and retried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from app.envelope import Frame, payload_size
from app.feed.seqblocks import SeqBlocks
from app.metrics import FeedMetrics
from app.net import Endpoint, keepalive, open_connection, reconnect_forever
from app.retry import Failure
from app.settings import FeedSettings, SourceOptions, mask_url, reveal
from app.status import ConnectionStatus

FRAME_LIMIT_FACTOR = 16
"""The WebSocket library's own frame limit, as a multiple of max_message_bytes (memory guard)."""


class FeedReader:
    """Owns one feed's connection; `take()` hands over what it read, in order."""

    def __init__(self, feed: FeedSettings, options: SourceOptions, status: ConnectionStatus,
                 metrics: FeedMetrics, on_data: Callable[[FeedReader], None],
                 log: structlog.typing.FilteringBoundLogger,
                 seq_blocks: SeqBlocks | None = None) -> None:
        self.feed = feed
        self.name = feed.name
        self._options = options
        self._status = status
        self._metrics = metrics
        self._on_data = on_data
        self._log = log.bind(source=feed.name, url=mask_url(feed.url))
        self._endpoint = Endpoint(
            url=feed.url, headers=reveal(feed.headers), subprotocols=tuple(feed.subprotocols),
            open_timeout=feed.open_timeout,
            max_size=FRAME_LIMIT_FACTOR * feed.max_message_bytes)
        self._decode = False if options.payload == "json" else None  # bytes for the JSON parser
        self._pending: list[Frame] = []
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._seq_blocks = seq_blocks or SeqBlocks()
        # Numbers above _reserved are reserved (durably, with a spool) before they are used.
        self._seq = self._reserved = self._seq_blocks.resume(feed.name)
        self._last_frame_at = 0.0
        status.set_source(feed.name, False)
        metrics.up.set_function(lambda: float(status.source_up(feed.name)))

    def take(self) -> list[Frame]:
        """The frames read so far, in order; reading goes on into a fresh list."""
        frames, self._pending = self._pending, []
        self._has_room.set()
        return frames

    async def run(self) -> None:
        """Connect, read and reconnect until cancelled (then close with 1000)."""
        await reconnect_forever(
            lambda: open_connection(self._endpoint, ClientConnection), self._session,
            backoff=self._options.reconnect, log=self._log, event_prefix="source",
            on_down=self._down, on_failure=self._failed, on_closed=self._closed)

    def _down(self) -> None:
        self._status.set_source(self.name, False)

    def _failed(self, failure: Failure) -> None:
        self._metrics.connect_failures[failure.reason].inc()

    def _closed(self, exc: ConnectionClosed) -> None:
        if exc.sent and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
            self._metrics.invalid["too_large"].inc()

    async def _session(self, ws: ClientConnection) -> None:
        for message in self.feed.subscribe_messages():
            await ws.send(message)
        self._status.set_source(self.name, True)
        self._metrics.connects.inc()
        self._log.info("source_connected", subscribed=len(self.feed.subscribe),
                       subprotocol=ws.subprotocol)
        loop = asyncio.get_running_loop()
        helpers = [loop.create_task(
            keepalive(ws, self.feed.ping_interval, self.feed.ping_timeout, self._log))]
        if self.feed.idle_timeout:
            helpers.append(loop.create_task(self._watch_idle(ws)))
        try:
            await self._read(ws)
        finally:
            for helper in helpers:
                helper.cancel()

    async def _read(self, ws: ClientConnection) -> None:
        recv, decode, on_data = ws.recv, self._decode, self._on_data
        batch_size, now = self._options.batch_size, time.time
        self._last_frame_at = now()
        while True:
            if len(self._pending) >= batch_size:
                self._has_room.clear()
                await self._has_room.wait()
            payload = await recv(decode)
            self._seq += 1
            if self._seq > self._reserved:
                self._reserved = self._seq_blocks.reserve(self.name, self._seq)
            self._last_frame_at = received_at = now()
            if not self._pending:
                on_data(self)
            self._pending.append(Frame(self._seq, received_at, payload, payload_size(payload)))

    async def _watch_idle(self, ws: ClientConnection) -> None:
        idle = self.feed.idle_timeout
        while True:
            await asyncio.sleep(max(0.0, self._last_frame_at + idle - time.time()))
            # After a stall of the worker, frames may wait in the socket's buffer: let the
            # reader take them before judging the feed idle.
            for _ in range(3):
                await asyncio.sleep(0)
            if time.time() - self._last_frame_at >= idle:
                self._log.warning("source_idle", idle_timeout_s=idle)
                await ws.close(CloseCode.NORMAL_CLOSURE, "idle timeout")
                return
