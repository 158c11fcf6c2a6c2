"""WebSocket source: one `FixedPartitionedSource` partition per feed.

Each partition owns an event loop. In it, an async generator (`_FeedReader.chunks`) owns the
feed's connection: it starts the reading task on first poll and stops it when closed. The
reading task connects, subscribes, reads and reconnects forever with backoff; an exception never
escapes it, since one escaping the generator would end the partition for good. The generator
yields everything received since the last poll as one chunk, so `batch_async` (which costs
~10 µs per item it awaits) pays once per poll rather than once per message.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import structlog
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition, batch_async
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from app import metrics
from app.envelope import Chunk, Frame, PayloadMode, payload_size
from app.logs import current_worker
from app.settings import FeedSettings, mask_url, reveal
from app.status import ConnectionStatus
from app.wsconn import open_connection, reconnect_forever

FRAME_LIMIT_FACTOR = 16
"""The WebSocket library's own frame limit, as a multiple of max_message_bytes (memory guard)."""
MESSAGE_TOO_BIG = 1009


@dataclass(frozen=True)
class SourceOptions:
    """Settings shared by every feed's partition."""

    payload: PayloadMode
    batch_size: int
    batch_timeout: timedelta
    reconnect_min_s: float
    reconnect_max_s: float
    linger: timedelta = timedelta(0)


class _FeedReader:
    """Owns one feed's connection inside its partition's loop; gathers frames for polls."""

    def __init__(self, feed: FeedSettings, options: SourceOptions, status: ConnectionStatus,
                 log: structlog.typing.FilteringBoundLogger) -> None:
        self._feed = feed
        self._options = options
        self._status = status
        self._log = log
        self._decode = False if options.payload == "json" else None  # bytes for the JSON parser
        self._pending: list[Frame] = []
        self._has_data = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._seq = 0
        self._last_frame_at = 0.0
        self._task: asyncio.Task[None] | None = None

    async def chunks(self) -> AsyncIterator[list[Frame]]:
        """Yield the frames gathered since the last chunk, waiting while there are none."""
        self._task = asyncio.get_running_loop().create_task(self._run())
        while True:
            await self._has_data.wait()
            yield self.take()

    def take(self) -> list[Frame]:
        """The frames gathered so far, in order; the reader goes on into a fresh list."""
        frames, self._pending = self._pending, []
        self._has_data.clear()
        self._has_room.set()
        return frames

    async def stop(self) -> None:
        """Stop reading and close the connection (code 1000). Gathered frames stay for take()."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        options = self._options
        await reconnect_forever(
            self._connect, self._session, on_down=self._down, on_error=self._count_too_large,
            min_s=options.reconnect_min_s, max_s=options.reconnect_max_s, log=self._log,
            event_prefix="source")

    def _down(self) -> None:
        self._status.set_source(self._feed.name, False)

    def _count_too_large(self, exc: Exception) -> None:
        if isinstance(exc, ConnectionClosed) and exc.sent and exc.sent.code == MESSAGE_TOO_BIG:
            metrics.messages_invalid.labels(self._feed.name, "too_large").inc()

    def _connect(self) -> AbstractAsyncContextManager[ClientConnection]:
        feed = self._feed
        return open_connection(
            feed.url,
            additional_headers=reveal(feed.headers),
            subprotocols=feed.subprotocols or None,  # type: ignore[arg-type]
            open_timeout=feed.open_timeout,
            ping_interval=None,  # see _keepalive
            max_size=FRAME_LIMIT_FACTOR * feed.max_message_bytes,
        )

    async def _session(self, ws: ClientConnection) -> None:
        await self._opened(ws)
        await self._read(ws)

    async def _opened(self, ws: ClientConnection) -> None:
        """Subscribe, then count the feed as up."""
        for message in self._feed.subscribe_messages():
            await ws.send(message)
        self._status.set_source(self._feed.name, True)
        metrics.source_connects.labels(self._feed.name).inc()
        self._log.info("source_connected", subscribed=len(self._feed.subscribe),
                       subprotocol=ws.subprotocol)

    async def _read(self, ws: ClientConnection) -> None:
        recv, decode = ws.recv, self._decode
        batch_size, now = self._options.batch_size, time.time
        self._last_frame_at = now()
        loop = asyncio.get_running_loop()
        helpers = [loop.create_task(self._keepalive(ws))]
        if self._feed.idle_timeout:
            helpers.append(loop.create_task(self._watch_idle(ws)))
        try:
            while True:
                if len(self._pending) >= batch_size:
                    self._has_room.clear()
                    await self._has_room.wait()
                payload = await recv(decode)
                self._seq += 1
                self._last_frame_at = received_at = now()
                self._pending.append(Frame(self._seq, received_at, payload, payload_size(payload)))
                self._has_data.set()
        finally:
            for helper in helpers:
                helper.cancel()

    async def _keepalive(self, ws: ClientConnection) -> None:
        """Ping every ping_interval; no pong within ping_timeout: fail the connection at once.

        websockets' own keepalive would then wait close_timeout more for a closing handshake
        from a peer that has stopped answering; failing at once keeps the promise that
        ingest_source_up drops within ping_interval + ping_timeout.
        """
        feed = self._feed
        while True:
            await asyncio.sleep(feed.ping_interval)
            try:
                await asyncio.wait_for(await ws.ping(), feed.ping_timeout)
            except ConnectionClosed:
                return  # the reader sees it too, and reconnects
            except asyncio.TimeoutError:
                self._log.warning("source_ping_timeout", ping_timeout_s=feed.ping_timeout)
                ws.protocol.fail(1011, "keepalive ping timeout")
                ws.transport.abort()
                return

    async def _watch_idle(self, ws: ClientConnection) -> None:
        idle = self._feed.idle_timeout
        while True:
            await asyncio.sleep(max(0.0, self._last_frame_at + idle - time.time()))
            # After a stall of the worker, frames may wait in the socket's buffer: let the
            # reader take them before judging the feed idle.
            for _ in range(3):
                await asyncio.sleep(0)
            if time.time() - self._last_frame_at >= idle:
                self._log.warning("source_idle", idle_timeout_s=idle)
                await ws.close(code=1000, reason="idle timeout")
                return


class _FeedPartition(StatefulSourcePartition[Chunk, None]):
    def __init__(self, feed: FeedSettings, options: SourceOptions, status: ConnectionStatus,
                 stopping: threading.Event) -> None:
        self._name = feed.name
        self._options = options
        self._stopping = stopping
        self._log = structlog.get_logger("app.source").bind(
            source=feed.name, url=mask_url(feed.url), worker=current_worker())
        self._loop = asyncio.new_event_loop()
        self._reader = _FeedReader(feed, options, status, self._log)
        self._polls = batch_async(self._reader.chunks(), options.batch_timeout, 1, self._loop)
        self._next_awake: datetime | None = None
        self._stopped = False
        self._received = metrics.messages_received.labels(feed.name)
        self._bytes = metrics.bytes_received.labels(feed.name)
        self._batch_size = metrics.source_batch_size.labels(feed.name)
        self._last_message = metrics.source_last_message.labels(feed.name)
        status.add_source(feed.name)

    def next_batch(self) -> list[Chunk]:
        if self._stopping.is_set():
            return self._drain()
        chunks = next(self._polls)  # batch_async(..., 1): no chunk, or one
        frames = chunks[0] if chunks else []
        if not frames:
            # Sleep a little so an idle feed's linger does not take turns from busy ones.
            self._next_awake = datetime.now(timezone.utc) + self._options.batch_timeout
            return []
        # A short batch: let more arrive before the next poll, if the operator traded latency
        # for fewer, larger batches (each poll and sink write has a fixed cost).
        linger = self._options.linger
        self._next_awake = (datetime.now(timezone.utc) + linger
                            if linger and len(frames) < self._options.batch_size else None)
        return [self._hand_over(frames)]

    def _hand_over(self, frames: list[Frame]) -> Chunk:
        self._received.inc(len(frames))
        self._bytes.inc(sum(frame.size for frame in frames))
        self._batch_size.observe(len(frames))
        self._last_message.set(frames[-1].received_at)
        return Chunk(self._name, frames)

    def _drain(self) -> list[Chunk]:
        """On shutdown: close the connection, hand over what was read, then end."""
        if self._stopped:
            raise StopIteration
        self._stopped = True
        self._loop.run_until_complete(self._reader.stop())
        frames = self._reader.take()
        self._log.info("source_stopped", handed_over=len(frames))
        return [self._hand_over(frames)] if frames else []

    def next_awake(self) -> datetime | None:
        return self._next_awake

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        # The reader's task is among these; cancelled, it closes its connection with 1000.
        loop = self._loop
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


class WebSocketSource(FixedPartitionedSource[Chunk, None]):
    """Reads every feed, one partition per feed (keyed by its name), spread over all workers.

    Per feed, frames are handed over in the order received, numbered by `seq` from 1 across
    reconnects. A feed cannot be replayed: what upstream sends while no connection is open is
    lost; `ingest_source_up` and `ingest_source_connects_total` say when that happened. No
    resume state: a restarted process numbers from 1 again. On `stopping`, each partition
    closes its connection with code 1000, hands over what it read, and ends.
    """

    def __init__(self, feeds: list[FeedSettings], options: SourceOptions,
                 status: ConnectionStatus, stopping: threading.Event) -> None:
        self._feeds = {feed.name: feed for feed in feeds}
        self._options = options
        self._status = status
        self._stopping = stopping

    def list_parts(self) -> list[str]:
        return list(self._feeds)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _FeedPartition:
        return _FeedPartition(self._feeds[for_part], self._options, self._status, self._stopping)
