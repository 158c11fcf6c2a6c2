"""The sink with a spool: workers commit batches to the spool; one drainer streams it to the sink.

One `Spool` per process (opened by the entry point, before the dataflow, so that a directory it
cannot use is a configuration error), shared by every worker of the process:

- each worker's `_SpooledPartition.write_batch` (worker thread) appends the batch's envelopes in
  one commit and returns: the worker reads on while the sink is away. A full spool blocks the
  worker (`block`, backpressure as without a spool) or refuses the batch, counted in
  `ingest_spool_dropped_total` (`drop_newest`). A store error (a full disk) is logged and the
  batch waits; nothing committed is ever lost.
- one `_Drainer` per process, in a loop thread of its own, peeks the spool in order, writes
  through `_SinkConnection.write` (the same chunked writes, confirmations and resends as without
  a spool) and deletes only what the sink confirmed. It starts with the first partition, so a
  restarted process sends what its spool holds before anything read since: the spool is one FIFO.

Order: a feed is read by exactly one worker, which appends its batches in order; the spool keeps
the order of appends and the one drainer sends in that order, so per-feed order holds with any
number of workers. The dead-letter socket has no spool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from app.envelope import Encoded
from app.errors import ShutdownTimeout
from app.logs import RateLimiter
from app.metrics import Metrics
from app.settings import SinkOptions, SpoolOptions, mask_url
from app.sink.framing import frames_for
from app.sink.sink import WAIT_STEP_S, OnWritten, _SinkConnection
from app.sink.spool import DB_NAME, Record, Spool, SpoolError, Stored
from app.status import ConnectionStatus, SpoolState

PEEK_RECORDS = 5_000
PEEK_BYTES = 1_048_576
"""Most envelopes (and bytes) the drainer reads and writes in one round: bounds its memory."""
CHECKPOINT_EVERY_S = 0.5
"""How often the drainer's checkpoint thread copies the spool's WAL into its database."""
STORE_RETRY_S = 1.0
"""Wait before retrying a batch the store refused (a full disk)."""


def _encoded(records: list[Stored]) -> list[Encoded]:
    """Records as `Encoded` runs of one source each, for the delivery metrics."""
    runs: list[Encoded] = []
    for record in records:
        if not runs or runs[-1].source != record.source:
            runs.append(Encoded(record.source))
        run = runs[-1]
        run.messages.append(record.message)
        run.received.append(record.received_at)
        run.seqs.append(record.seq)
    return runs


class _Drainer:
    """Streams the spool to the sink, oldest first, in a loop thread of its own."""

    def __init__(self, spool: Spool, options: SinkOptions, status: ConnectionStatus,
                 metrics: Metrics, stopping: threading.Event, on_written: OnWritten) -> None:
        self._spool = spool
        self._options = options
        self._on_written = on_written
        self._log = structlog.get_logger(f"app.{options.name}").bind(
            url=mask_url(options.url), spool=str(spool.directory))
        self._quiet = RateLimiter()
        self._finishing = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"{options.name}-drainer", daemon=True)
        self._connection = _SinkConnection(
            options, status, f"{options.name}-spool", metrics, stopping, self._log)
        self._done: concurrent.futures.Future[None] | None = None
        # Checkpoints (writes and fsyncs of the database file) in a thread of their own, so
        # that neither the worker's commits nor the drainer's writes wait for them.
        self._checkpoints = threading.Thread(
            target=self._checkpoint, name=f"{options.name}-checkpoints", daemon=True)

    def _checkpoint(self) -> None:
        while not self._finishing.wait(CHECKPOINT_EVERY_S):
            try:
                self._spool.checkpoint()
            except SpoolError as error:
                self._store_failed("spool_checkpoint_failed", error)

    def start(self) -> None:
        stats = self._spool.stats()
        self._log.info("spool_opened", messages=stats.messages, bytes=stats.bytes,
                       max_bytes=self._spool.max_bytes)
        self._thread.start()
        self._checkpoints.start()
        self._done = asyncio.run_coroutine_threadsafe(self._run(), self._loop)

    async def _run(self) -> None:
        self._connection.start()
        try:
            while True:
                try:
                    await self._drain()
                    break
                except (ShutdownTimeout, asyncio.CancelledError):
                    raise
                except Exception:  # a bug must not end the drainer: the spool would only grow
                    self._log.exception("spool_drainer_failed")
                    await asyncio.sleep(STORE_RETRY_S)
        except ShutdownTimeout:
            pass  # the sink stayed away for the whole grace period: the spool keeps the rest
        finally:
            await self._connection.close()
            stats = self._spool.stats()
            if stats.messages:
                self._log.warning("spool_kept_at_shutdown", messages=stats.messages,
                                  bytes=stats.bytes)

    async def _drain(self) -> None:
        spool, framing = self._spool, self._options.framing
        max_bytes = self._options.max_message_bytes
        after = 0  # the last id written and confirmed by the sink
        while True:
            try:
                batch = spool.peek(after, PEEK_RECORDS, PEEK_BYTES)
            except SpoolError as error:
                self._store_failed("spool_read_failed", error)
                if self._finishing.is_set():
                    return
                await asyncio.sleep(STORE_RETRY_S)
                continue
            if not batch:
                if self._finishing.is_set():
                    return
                await asyncio.to_thread(spool.wait_for_data, after, WAIT_STEP_S)
                continue
            await self._connection.write(
                frames_for([record.message for record in batch], framing, max_bytes))
            finished = time.time()
            after = batch[-1].id
            try:
                spool.confirm(after)
            except SpoolError as error:
                # Kept on disk: the next confirm (ids only grow) deletes these too; a restart
                # before it resends them, as any unconfirmed write.
                self._store_failed("spool_confirm_failed", error)
            self._on_written(_encoded(batch), finished)

    def _store_failed(self, event: str, error: SpoolError) -> None:
        suppressed = self._quiet.allow(event)
        if suppressed is not None:
            self._log.error(event, error=str(error), suppressed=suppressed)

    def close(self) -> None:
        """Send what is spooled until the spool is empty or the shutdown grace period (counted
        from `stopping`) ends; what is left stays on disk for the next start."""
        self._finishing.set()
        assert self._done is not None
        try:
            self._done.result(self._options.shutdown_timeout_s + 2 * WAIT_STEP_S + 1)
        except concurrent.futures.TimeoutError:
            self._done.cancel()  # closed without `stopping`: no deadline was running
        except concurrent.futures.CancelledError:
            pass
        self._checkpoints.join(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()


class _SpooledPartition(StatelessSinkPartition[list[Encoded]]):
    """One worker's side: commit each batch to the spool (worker thread)."""

    def __init__(self, spool: Spool, options: SpoolOptions, shutdown_timeout_s: float,
                 metrics: Metrics, stopping: threading.Event, release: Callable[[], None],
                 full: threading.Event, worker_index: int) -> None:
        self._spool = spool
        self._full = full
        self._block = options.when_full == "block"
        self._shutdown_timeout_s = shutdown_timeout_s
        self._metrics = metrics
        self._stopping = stopping
        self._release = release
        self._quiet = RateLimiter()
        self._log = structlog.get_logger("app.spool").bind(
            spool=str(spool.directory), worker=worker_index)

    def write_batch(self, polls: list[list[Encoded]]) -> None:
        items = [item for poll in polls for item in poll]
        records = [Record(item.source, seq, received_at, message) for item in items
                   for seq, received_at, message in zip(
                       item.seqs, item.received, item.messages, strict=True)]
        if not records:
            return
        started = time.perf_counter()
        self._store(records)
        self._metrics.sink_write_seconds.observe(time.perf_counter() - started)

    def _store(self, records: list[Record]) -> None:
        """Commit, or count as dropped (drop_newest); a full spool (block) or a failing store
        makes the batch wait, until the grace period after `stopping` ends."""
        deadline: float | None = None
        waited = False
        while True:
            try:
                if self._spool.append(records, WAIT_STEP_S if self._block else 0.0):
                    self._full.clear()
                    if waited:
                        self._log.info("spool_room_again")
                    return
                self._full.set()
                if not self._block:
                    self._dropped(len(records))
                    return
                if not waited:
                    self._log.warning("spool_full_blocking", max_bytes=self._spool.max_bytes)
                    waited = True
            except SpoolError as error:
                suppressed = self._quiet.allow("store")
                if suppressed is not None:
                    self._log.error("spool_write_failed", error=str(error),
                                    messages=len(records), suppressed=suppressed)
                self._stopping.wait(STORE_RETRY_S)
            if self._stopping.is_set():
                now = time.monotonic()
                deadline = deadline or now + self._shutdown_timeout_s
                if now >= deadline:
                    self._log.error("spool_unstored_at_shutdown", messages=len(records))
                    return

    def _dropped(self, count: int) -> None:
        self._metrics.spool_dropped.inc(count)
        suppressed = self._quiet.allow("dropped")
        if suppressed is not None:
            self._log.warning("spool_full_dropped", messages=count,
                              max_bytes=self._spool.max_bytes, suppressed_lines=suppressed)

    def close(self) -> None:
        self._release()


class SpooledSink(DynamicSink[list[Encoded]]):
    """Writes serialised envelopes to the spool; one drainer per process sends them on.

    Delivery: `write_batch` returns once the batch is committed to the spool (crash-safe: see
    `app.sink.spool` for what a power loss may cost). The drainer writes with the same
    confirmation and resend rules as `WebSocketSink` and deletes only what the sink confirmed,
    so a retry or a restart may repeat envelopes (`source` + `seq` identify them), never lose
    one the spool took. Latency metrics are recorded when the sink confirmed the write.
    """

    def __init__(self, spool: Spool, spool_options: SpoolOptions, options: SinkOptions,
                 status: ConnectionStatus, metrics: Metrics, stopping: threading.Event,
                 on_written: OnWritten) -> None:
        self._spool = spool
        self._spool_options = spool_options
        self._options = options
        self._status = status
        self._metrics = metrics
        self._stopping = stopping
        self._on_written = on_written
        self._lock = threading.Lock()
        self._drainer: _Drainer | None = None
        self._partitions = 0
        self._full = threading.Event()  # the latest batch found no room (until one does)

    def state(self) -> SpoolState:
        """For `/readyz`: bytes waiting, and whether the spool takes batches (a batch found no
        room and none has been committed since: blocked or dropping)."""
        return SpoolState(self._spool.stats().bytes, not self._full.is_set())

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SpooledPartition:
        with self._lock:
            if self._drainer is None:
                self._drainer = _Drainer(self._spool, self._options, self._status,
                                         self._metrics, self._stopping, self._on_written)
                self._drainer.start()
            self._partitions += 1
        return _SpooledPartition(self._spool, self._spool_options,
                                 self._options.shutdown_timeout_s, self._metrics,
                                 self._stopping, self._release, self._full, worker_index)

    def _release(self) -> None:
        """A partition closed: the last one closes the drainer."""
        with self._lock:
            self._partitions -= 1
            drainer = self._drainer if self._partitions == 0 else None
            if drainer is not None:
                self._drainer = None
        if drainer is not None:
            drainer.close()


def open_spool(options: SpoolOptions, process_id: int | None) -> Spool:
    """This process's spool, under `<INGEST_SPOOL_DIR>/<process id>` (0 for a single process);
    `ConfigError` naming INGEST_SPOOL_DIR if the directory cannot be created, written or
    locked."""
    own = options.for_process(process_id)
    return Spool(own.directory, own.max_bytes,
                 "FULL" if own.synchronous == "full" else "NORMAL")


def leftover_spools(options: SpoolOptions, processes: int) -> list[Path]:
    """Spools under INGEST_SPOOL_DIR of process ids this cluster no longer has (it shrank):
    no process reads them, so what they hold is not sent until a process with that id runs."""
    base = Path(options.directory)
    try:
        children = list(base.iterdir())
    except OSError:
        return []
    return sorted((child for child in children
                   if child.name.isdigit() and int(child.name) >= processes
                   and (child / DB_NAME).exists()), key=lambda child: int(child.name))
