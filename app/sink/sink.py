"""WebSocket sink: one persistent outbound connection per worker.

Each partition's connection lives in an event loop of its own (a `StandbyLoop`): the worker
thread runs it while it writes a batch, so `write_batch` goes from start to confirmation with
no hand-over to another thread; between batches a standby thread runs it, so the connection
keeps answering the server's pings and noticing closes while no data flows.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import orjson
import structlog
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.protocol import State

from app.envelope import Encoded
from app.errors import IngestError, ShutdownTimeout
from app.metrics import Metrics
from app.net import (
    CLOSE_TIMEOUT_S,
    BatchingConnection,
    Endpoint,
    close_within,
    describe_close,
    open_connection,
    reconnect_forever,
)
from app.settings import SinkOptions, mask_url
from app.shutdown import stopped_at
from app.sink.framing import chunks, frames_for
from app.standby_loop import StandbyLoop
from app.status import ConnectionStatus
from app.tls import client_context, warn_if_unverified

WAIT_STEP_S = 0.25
CHUNK_FRAMES = 500
"""Most frames confirmed together; a resend starts at the first chunk not confirmed."""
CHUNK_BYTES = 1_048_576
FRAME_HEADER_BYTES = 14
"""Most bytes a client frame adds to its payload (RFC 6455, 5.2)."""
OnWritten = Callable[[list[Encoded], float], None]
T = TypeVar("T")


class _Unconfirmed(IngestError):
    """A write failed after `confirmed` frames of the batch were confirmed."""

    def __init__(self, confirmed: int, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.confirmed = confirmed
        self.cause = cause


class _SinkConnection:
    """Lives in the partition's loop: keeps one connection open and writes through it."""

    def __init__(self, options: SinkOptions, status: ConnectionStatus, status_key: str,
                 metrics: Metrics, stopping: threading.Event,
                 log: structlog.typing.FilteringBoundLogger) -> None:
        self._options = options
        self._endpoint = Endpoint(url=options.url, headers=options.headers, max_size=None,
                                  ssl=client_context(options.tls))
        warn_if_unverified(options.tls, log)
        self._status = status
        self._status_key = status_key
        self._metrics = metrics
        self._stopping = stopping
        self._log = log
        self._ws: BatchingConnection | None = None
        self._changed = asyncio.Condition()
        self._keeper: asyncio.Task[None] | None = None
        self._stop_deadline: float | None = None
        self._chunk_frames = CHUNK_FRAMES
        # With confirm=ack: frames written on the current connection, and acknowledged.
        self._written = 0
        self._acked = 0

    def start(self) -> None:
        self._keeper = asyncio.get_running_loop().create_task(self._keep_open())

    async def _keep_open(self) -> None:
        options = self._options
        await reconnect_forever(
            lambda: open_connection(
                self._endpoint, BatchingConnection, ping_interval=options.ping_interval_s,
                ping_timeout=options.ping_timeout_s, stop_close_timeout=self._close_budget),
            self._session, backoff=options.reconnect, log=self._log, event_prefix="sink",
            on_down=lambda: self._status.set_sink(self._status_key, False))

    async def _session(self, ws: BatchingConnection) -> None:
        """Offer the connection to writers until it closes; read the sink's acks meanwhile."""
        async with self._changed:
            self._ws, self._written, self._acked = ws, 0, 0
            self._changed.notify_all()
        self._status.set_sink(self._status_key, True)
        self._log.info("sink_connected")
        try:
            async for message in ws:
                acked = _ack_count(message)
                if acked is not None:
                    async with self._changed:
                        self._acked = max(self._acked, acked)
                        self._changed.notify_all()
        finally:
            async with self._changed:  # writers waiting for an ack learn it will not come
                self._changed.notify_all()
        raise ws.protocol.close_exc

    def _remaining(self, wait_s: float) -> float:
        """How long a wait may last: `wait_s`, or less once stopping (ShutdownTimeout at the
        deadline): every wait of a stopping sink ends within shutdown_timeout_s in all."""
        if not self._stopping.is_set():
            return wait_s
        left = self._left()
        if left <= 0:
            raise ShutdownTimeout
        return min(wait_s, left)

    def _left(self) -> float:
        """Seconds to the stop deadline (stopping must be set): counted from the moment the
        stop was requested, shared with every other sink of the process."""
        if self._stop_deadline is None:
            started = stopped_at(self._stopping) or time.monotonic()
            self._stop_deadline = started + self._options.shutdown_timeout_s
        return self._stop_deadline - time.monotonic()

    def _close_budget(self) -> float:
        """How long closing may wait for the sink: CLOSE_TIMEOUT_S, less near the deadline."""
        if not self._stopping.is_set():
            return CLOSE_TIMEOUT_S
        return min(CLOSE_TIMEOUT_S, self._left())

    async def _bounded(self, awaitable: Awaitable[T], wait_s: float | None = None) -> T:
        """`awaitable`'s result; TimeoutError after `wait_s`; ShutdownTimeout at the stop
        deadline. Writes and pings wait for the socket to take their data, which a sink that
        stopped reading never does: only this bounds them."""
        task = asyncio.ensure_future(awaitable)
        limit = None if wait_s is None else time.monotonic() + wait_s
        try:
            while True:
                step = WAIT_STEP_S if limit is None else min(WAIT_STEP_S,
                                                             limit - time.monotonic())
                if step <= 0:
                    raise TimeoutError
                done, _ = await asyncio.wait({task}, timeout=self._remaining(step))
                if done:
                    return task.result()
        finally:
            if not task.done():
                task.cancel()

    async def _at_once_or_bounded(self, ws: BatchingConnection,
                                  sending: Coroutine[Any, Any, T], size: int) -> T:
        """`sending`'s result. A write the socket takes at once (the connection is open and
        its write buffer stays under the high-water mark, so websockets does not wait for it
        to drain) cannot hang: it runs inline, with none of `_bounded`'s task and loop turns
        (most of a small batch's CPU)."""
        transport = ws.transport
        if (ws.state is State.OPEN and not transport.is_closing()
                and transport.get_write_buffer_size() + size
                <= transport.get_write_buffer_limits()[1]):
            return await sending
        return await self._bounded(sending)

    async def _pong(self, pong: asyncio.Future[float]) -> None:
        """Until `pong` arrives: TimeoutError after ping_timeout_s, ShutdownTimeout at the stop
        deadline. The wait is the pong's own future, which a timer checking both limits every
        WAIT_STEP_S fails: no task and no loop turn of its own (as `_bounded` would cost)."""
        if not pong.done():
            loop = asyncio.get_running_loop()
            limit = time.monotonic() + self._options.ping_timeout_s
            timer: asyncio.TimerHandle | None = None

            def check() -> None:
                nonlocal timer
                if pong.done():
                    return
                try:
                    step = self._remaining(min(WAIT_STEP_S, limit - time.monotonic()))
                except ShutdownTimeout as timeout:
                    pong.set_exception(timeout)
                    return
                if step <= 0:
                    pong.set_exception(TimeoutError("no pong within ping_timeout"))
                else:
                    timer = loop.call_later(step, check)

            check()
            try:
                await pong
            finally:
                if timer is not None:
                    timer.cancel()
                # `check` holds itself and the timer through their cells: let go of both, or
                # every write leaves a cycle to the garbage collector, whose collections then
                # come every few dozen writes and pause every feed (measured: 1 000 feeds).
                timer = None
                del check
        pong.result()

    async def _open_connection(self) -> BatchingConnection:
        """The open connection, waiting for one (and for the stop deadline)."""
        def usable() -> bool:
            return self._ws is not None and self._ws.state is State.OPEN

        async with self._changed:
            while not usable():
                step = self._remaining(WAIT_STEP_S)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait_for(usable), step)
        assert self._ws is not None
        return self._ws

    async def write(self, frames: list[bytes]) -> None:
        """Return once every frame is written and confirmed; resend what was not confirmed.

        Frames go out in chunks, each confirmed on its own (a ping after it, or the sink's ack),
        so a resend starts from the first chunk not confirmed: every retry makes progress. A
        retry that confirmed nothing halves the chunk, down to one frame; a single frame the
        sink refuses as too big (1009) is logged and skipped rather than resent forever.
        """
        confirmed = 0
        while confirmed < len(frames):
            try:
                self._remaining(0)
                ws = await self._open_connection()
                confirmed = await self._send(ws, frames, confirmed)
            except ShutdownTimeout as timeout:
                timeout.unconfirmed = frames[confirmed:]
                raise
            except _Unconfirmed as failed:
                await self._after_failure(ws, frames, confirmed, failed)
                if failed.confirmed > confirmed:
                    confirmed = failed.confirmed
                elif _too_big(failed.cause):
                    confirmed += self._refused(frames, confirmed)
                else:
                    self._chunk_frames = max(1, self._chunk_frames // 2)
        self._chunk_frames = min(CHUNK_FRAMES, self._chunk_frames * 2)

    async def _send(self, ws: BatchingConnection, frames: list[bytes], start: int) -> int:
        """Send frames[start:] in chunks, then wait for each chunk's confirmation in order."""
        confirm = self._options.confirm
        pending: list[tuple[int, asyncio.Future[float] | int]] = []  # (end, pong or ack count)
        done = start
        try:
            for begin, end in chunks(frames, start, self._chunk_frames, CHUNK_BYTES):
                batch = frames[begin:end]
                size = sum(map(len, batch)) + FRAME_HEADER_BYTES * (len(batch) + 1)
                pong = await self._at_once_or_bounded(
                    ws, ws.send_texts(batch, ping=confirm == "ping"), size)
                if pong is not None:
                    pending.append((end, pong))
                elif confirm == "ack":
                    self._written += end - begin
                    pending.append((end, self._written))
                else:
                    done = end  # confirm=none: in the socket's hands is written
            for end, token in pending:
                if isinstance(token, int):
                    await self._wait_acked(ws, token)
                else:
                    await self._pong(token)
                done = end
        except (ShutdownTimeout, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise _Unconfirmed(self._confirmed(pending, done), exc) from exc
        return len(frames)

    def _confirmed(self, pending: list[tuple[int, asyncio.Future[float] | int]], done: int) -> int:
        """Where the confirmed prefix ends, counting confirmations that arrived while later
        chunks were being sent (a sink may close right after acknowledging)."""
        for end, token in pending:
            if end <= done:
                continue
            if isinstance(token, int):
                if self._acked < token:
                    break
            elif not (isinstance(token, asyncio.Future) and token.done()
                      and not token.cancelled() and token.exception() is None):
                break
            done = end
        return done

    async def _wait_acked(self, ws: BatchingConnection, count: int) -> None:
        """Until the sink acknowledged `count` frames of this connection; ConnectionError if
        the connection stops being open first, TimeoutError after ping_timeout_s."""
        deadline = time.monotonic() + self._options.ping_timeout_s
        async with self._changed:
            while self._acked < count:
                if ws.state is not State.OPEN:  # closing: its acks will not come
                    raise ConnectionError("the sink closed before acknowledging")
                if time.monotonic() >= deadline:
                    raise TimeoutError("no ack within ping_timeout")
                step = self._remaining(WAIT_STEP_S)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), step)

    async def _after_failure(self, ws: BatchingConnection, frames: list[bytes], confirmed: int,
                             failed: _Unconfirmed) -> None:
        self._metrics.sink_retries.inc()
        unsent = len(frames) - failed.confirmed
        self._log.warning("sink_write_failed", unsent=unsent,
                          confirmed=failed.confirmed - confirmed, **describe_close(failed.cause))
        # A confirmation that never came: the connection is unusable. A peer that does not
        # finish the closing handshake (or does not read at all) is cut off after the timeout.
        timeout = self._remaining(CLOSE_TIMEOUT_S)
        await close_within(ws, timeout, CloseCode.INTERNAL_ERROR, "confirmation timeout")

    def _refused(self, frames: list[bytes], index: int) -> int:
        """The sink closed with 1009 (message too big): find the frame it refuses by sending one
        frame at a time, and skip that one (1) rather than resend it forever."""
        if self._chunk_frames > 1:
            self._chunk_frames = 1
            self._log.error("sink_message_too_big", largest_bytes=max(map(len, frames[index:])),
                            limit_bytes=self._options.max_message_bytes,
                            hint="the sink takes less than INGEST_SINK_MAX_MESSAGE_BYTES: lower it")
            return 0
        self._log.error("sink_frame_refused", size_bytes=len(frames[index]),
                        limit_bytes=self._options.max_message_bytes)
        return 1

    async def close(self) -> None:
        """Stop reconnecting and close the connection with code 1000."""
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)


def _messages_in(last_frames: list[bytes], messages: list[bytes], framing: str) -> int:
    """How many of `messages` the frames at the end of their framing hold: a batch frame of k
    messages is `[` + the k joined by `,` + `]`, i.e. the sum of (len + 1) over them, + 1."""
    if framing == "message":
        return len(last_frames)
    remaining = sum(map(len, last_frames)) - len(last_frames)
    count = 0
    for message in reversed(messages):
        if remaining <= 0:
            break
        remaining -= len(message) + 1
        count += 1
    return count


def _too_big(cause: BaseException) -> bool:
    return (isinstance(cause, ConnectionClosed) and cause.rcvd is not None
            and cause.rcvd.code == CloseCode.MESSAGE_TOO_BIG)


def _ack_count(message: str | bytes) -> int | None:
    """n from a sink's `{"ack": n}` (confirm=ack), else None."""
    try:
        decoded = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    ack = decoded.get("ack") if isinstance(decoded, dict) else None
    return ack if isinstance(ack, int) else None


class _SinkPartition(StatelessSinkPartition[list[Encoded]]):
    def __init__(self, options: SinkOptions, status: ConnectionStatus, metrics: Metrics,
                 stopping: threading.Event, on_written: OnWritten, worker_index: int) -> None:
        self._framing = options.framing
        self._max_message_bytes = options.max_message_bytes
        self._on_written = on_written
        self._metrics = metrics
        self._log = structlog.get_logger(f"app.{options.name}").bind(
            url=mask_url(options.url), worker=worker_index)
        self._loop = StandbyLoop(f"{options.name}-{worker_index}")
        self._connection = _SinkConnection(
            options, status, f"{options.name}-{worker_index}", metrics, stopping, self._log)
        self._loop.loop.call_soon_threadsafe(self._connection.start)

    def write_batch(self, polls: list[list[Encoded]]) -> None:
        items = [item for poll in polls for item in poll]
        messages = [message for item in items for message in item.messages]
        if not messages:
            return
        started = time.perf_counter()
        try:
            self._loop.run(self._connection.write(
                frames_for(messages, self._framing, self._max_message_bytes)))
        except ShutdownTimeout as timeout:
            # Nothing more can be done: say exactly what did not reach the sink.
            unsent = _messages_in(timeout.unconfirmed, messages, self._framing)
            self._log.error("sink_unsent_at_shutdown", messages=unsent, of=len(messages))
            return
        finished = time.time()
        self._metrics.sink_write_seconds.observe(time.perf_counter() - started)
        self._on_written(items, finished)

    def close(self) -> None:
        self._loop.run(self._connection.close())
        self._loop.close()


class WebSocketSink(DynamicSink[list[Encoded]]):
    """Writes serialised envelopes to one outbound WebSocket, one connection per worker.

    Delivery: `write_batch` returns only after every frame of the batch was written to an open
    connection (and, with confirm=ping, a ping sent after them was answered); on failure it
    waits for a new connection and resends the batch, so a retry may repeat frames (`source` +
    `seq` identify them). While the sink is down, the worker waits: its feeds are read only
    until their buffers are full (backpressure).

    Order: the dataflow has no exchange step, so a feed's chunks stay on the worker that read
    them and reach this worker's connection in order: per-feed order holds with any number of
    workers and processes.
    """

    def __init__(self, options: SinkOptions, status: ConnectionStatus, metrics: Metrics,
                 stopping: threading.Event, on_written: OnWritten) -> None:
        self._options = options
        self._status = status
        self._metrics = metrics
        self._stopping = stopping
        self._on_written = on_written

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SinkPartition:
        return _SinkPartition(self._options, self._status, self._metrics, self._stopping,
                              self._on_written, worker_index)
