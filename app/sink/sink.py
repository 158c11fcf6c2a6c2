"""WebSocket sink: one persistent outbound connection per worker.

Each partition runs its own event loop in a thread of its own, for as long as the partition
lives: the connection is bound to that loop, and the loop keeps answering the server's pings and
noticing closes while no data flows (a loop run only inside `write_batch` would not).
`write_batch` runs on the worker thread: it hands the batch to that loop and waits for the
result.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from websockets.frames import CloseCode
from websockets.protocol import State

from app.envelope import Encoded
from app.errors import ShutdownTimeout
from app.metrics import Metrics
from app.net import BatchingConnection, Endpoint, describe_close, open_connection, reconnect_forever
from app.settings import SinkOptions, mask_url
from app.sink.framing import frames_for
from app.status import ConnectionStatus

WAIT_STEP_S = 0.25
OnWritten = Callable[[list[Encoded], float], None]


class _SinkConnection:
    """Lives in the partition's loop: keeps one connection open and writes through it."""

    def __init__(self, options: SinkOptions, status: ConnectionStatus, status_key: str,
                 metrics: Metrics, stopping: threading.Event,
                 log: structlog.typing.FilteringBoundLogger) -> None:
        self._options = options
        self._endpoint = Endpoint(url=options.url, headers=options.headers, max_size=None)
        self._status = status
        self._status_key = status_key
        self._metrics = metrics
        self._stopping = stopping
        self._log = log
        self._ws: BatchingConnection | None = None
        self._changed = asyncio.Condition()
        self._keeper: asyncio.Task[None] | None = None
        self._stop_deadline: float | None = None

    def start(self) -> None:
        self._keeper = asyncio.get_running_loop().create_task(self._keep_open())

    async def _keep_open(self) -> None:
        options = self._options
        await reconnect_forever(
            lambda: open_connection(
                self._endpoint, BatchingConnection, ping_interval=options.ping_interval_s,
                ping_timeout=options.ping_timeout_s),
            self._session, backoff=options.reconnect, log=self._log, event_prefix="sink",
            on_down=lambda: self._status.set_sink(self._status_key, False))

    async def _session(self, ws: BatchingConnection) -> None:
        """Offer the connection to writers until it closes."""
        async with self._changed:
            self._ws = ws
            self._changed.notify_all()
        self._status.set_sink(self._status_key, True)
        self._log.info("sink_connected")
        await ws.wait_closed()
        raise ws.protocol.close_exc

    def _check_stop_deadline(self) -> None:
        """Once stopping, writes get shutdown_timeout_s in all; then ShutdownTimeout."""
        if not self._stopping.is_set():
            return
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + self._options.shutdown_timeout_s
        if time.monotonic() >= self._stop_deadline:
            raise ShutdownTimeout

    async def _open_connection(self) -> BatchingConnection:
        """The open connection, waiting for one (and for the stop deadline)."""
        def usable() -> bool:
            return self._ws is not None and self._ws.state is State.OPEN

        async with self._changed:
            while not usable():
                self._check_stop_deadline()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait_for(usable), WAIT_STEP_S)
        assert self._ws is not None
        return self._ws

    async def write(self, frames: list[bytes]) -> None:
        """Return once every frame is written (and confirmed, with ping); resend on failure.

        The batch goes to the socket in one write, so after a failure nothing tells which of
        its frames left: the whole batch is sent again.
        """
        confirm = self._options.confirm == "ping"
        while True:
            self._check_stop_deadline()
            ws = await self._open_connection()
            try:
                await ws.send_texts(frames)
                if confirm:
                    pong = await ws.ping()
                    await asyncio.wait_for(pong, self._options.ping_timeout_s)
                return
            except Exception as exc:
                self._metrics.sink_retries.inc()
                self._log.warning("sink_write_failed", unsent=len(frames), **describe_close(exc))
                if ws.state is State.OPEN:  # a pong that never came: the connection is unusable
                    await ws.close(CloseCode.INTERNAL_ERROR, "ping timeout")
                await ws.wait_closed()

    async def close(self) -> None:
        """Stop reconnecting and close the connection with code 1000."""
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)


class _SinkPartition(StatelessSinkPartition[Encoded]):
    def __init__(self, options: SinkOptions, status: ConnectionStatus, metrics: Metrics,
                 stopping: threading.Event, on_written: OnWritten, worker_index: int) -> None:
        self._framing = options.framing
        self._on_written = on_written
        self._metrics = metrics
        self._log = structlog.get_logger(f"app.{options.name}").bind(
            url=mask_url(options.url), worker=worker_index)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"{options.name}-{worker_index}", daemon=True)
        self._thread.start()
        self._connection = _SinkConnection(
            options, status, f"{options.name}-{worker_index}", metrics, stopping, self._log)
        self._loop.call_soon_threadsafe(self._connection.start)

    def _run(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run in the partition's loop and wait for the result (or its exception)."""
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def write_batch(self, items: list[Encoded]) -> None:
        messages = [message for item in items for message in item.messages]
        if not messages:
            return
        started = time.perf_counter()
        try:
            self._run(self._connection.write(frames_for(messages, self._framing)))
        except ShutdownTimeout:
            # Nothing more can be done: say exactly what did not reach the sink.
            self._log.error("sink_unsent_at_shutdown", messages=len(messages))
            return
        finished = time.time()
        self._metrics.sink_write_seconds.observe(time.perf_counter() - started)
        self._on_written(items, finished)

    def close(self) -> None:
        self._run(self._connection.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class WebSocketSink(DynamicSink[Encoded]):
    """Writes serialised envelopes to one outbound WebSocket, one connection per worker.

    Delivery: `write_batch` returns only after every frame of the batch was written to an open
    connection (and, with confirm=ping, a ping sent after them was answered); on failure it
    waits for a new connection and resends the batch, so a retry may repeat frames (`source` +
    `seq` identify them). While the sink is down, the worker does not read on.

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
