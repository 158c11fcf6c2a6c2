"""WebSocket source: the feeds spread over a few partitions, each reading many feeds in one loop.

`WebSocketSource` is a `FixedPartitionedSource` with one partition per worker of the cluster
(`feeds-0` … `feeds-{n-1}`; Bytewax hands each worker one of them), feed `i` going to partition
`i mod n`. A partition owns one event loop (a `StandbyLoop`: the worker runs it while it polls,
a standby thread while the worker is busy elsewhere, e.g. waiting on the sink); in it, an async
generator (`_FeedsPartition._wakeups`, wrapped by `batch_async` as in Bytewax's async source
pattern) starts a `FeedReader` per feed and yields whatever any of them read since the last
poll. One loop waits on every socket at once, so an idle feed costs no poll time and a busy one
is served as soon as it has data.

Guarantees: per feed, frames are handed over in the order received, numbered by `seq` from 1
across reconnects. A feed cannot be replayed: what upstream sends while no connection is open is
lost; `ingest_source_up` and `ingest_source_connects_total` say when. No resume state but `seq`:
without a spool a restarted process numbers from 1 again; with one it goes on after the last
number reserved (`app.feed.seqblocks`). On `stopping`, a partition closes every connection with
code 1000 (all at once), hands over what was read, and ends.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from datetime import datetime, timezone

import structlog
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition, batch_async

from app.envelope import Chunk, Poll
from app.feed.reader import FeedReader
from app.feed.seqblocks import SeqBlocks
from app.metrics import Metrics
from app.net import MIN_CLOSE_S, STOP_CLOSE_TIMEOUT_S
from app.settings import FeedSettings, SourceOptions
from app.shutdown import time_left
from app.standby_loop import StandbyLoop
from app.status import ConnectionStatus


class _FeedsPartition(StatefulSourcePartition[Poll, None]):
    """Some feeds, read in one event loop; runs on the worker thread that owns the partition."""

    def __init__(self, key: str, feeds: list[FeedSettings], options: SourceOptions,
                 status: ConnectionStatus, metrics: Metrics, stopping: threading.Event,
                 seq_blocks: SeqBlocks | None = None) -> None:
        self._options = options
        self._stopping = stopping
        self._log = structlog.get_logger("app.source").bind(partition=key)
        self._loop = StandbyLoop(key)
        self._has_data = asyncio.Event()
        self._ready: dict[str, FeedReader] = {}  # feeds with frames waiting, in arrival order
        self._metrics = {feed.name: metrics.feed(feed.name) for feed in feeds}
        self._readers = [
            FeedReader(feed, options, status, self._metrics[feed.name], self._mark_ready,
                       self._log, seq_blocks)
            for feed in feeds]
        self._polls = batch_async(self._wakeups(), options.batch_timeout, 1, self._loop.loop)
        self._tasks: list[asyncio.Task[None]] = []
        self._next_awake: datetime | None = None
        self._stopped = False

    def _mark_ready(self, reader: FeedReader) -> None:
        self._ready[reader.name] = reader
        self._has_data.set()

    async def _wakeups(self) -> AsyncIterator[bool]:
        """Start every feed's reader, then yield whenever a feed has frames waiting. The frames
        are taken by `next_batch` itself: whatever `batch_async` returns (a wake-up, or nothing
        when its timeout fired in the same turn), frames are taken in one place, in order."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(reader.run(), name=f"feed {reader.name}")
                       for reader in self._readers]
        while True:
            await self._has_data.wait()
            yield True

    def _take(self) -> Poll:
        """Every feed's waiting frames, one chunk per feed."""
        ready, self._ready = self._ready, {}
        self._has_data.clear()
        chunks = []
        for reader in ready.values():
            frames = reader.take()
            if frames:
                chunks.append(Chunk(reader.name, frames))
                self._metrics[reader.name].polled(
                    len(frames), sum(frame.size for frame in frames), frames[-1].received_at)
        return chunks

    def next_batch(self) -> list[Poll]:
        if self._stopping.is_set():
            return self._drain()
        with self._loop:
            next(self._polls)  # runs the loop until a feed has frames, or the poll's timeout
            # Frames may also have arrived in the loop's last turn, after the timeout fired (one
            # slow turn, e.g. a large frame to inflate, is enough): they are taken all the same.
            chunks = self._take() if self._ready else []
        if not chunks:
            # Nothing within the poll's timeout: give the worker's other steps a turn.
            self._next_awake = datetime.now(timezone.utc) + self._options.batch_timeout
        elif self._options.linger and all(
                len(chunk.frames) < self._options.batch_size for chunk in chunks):
            # The operator traded latency for fewer, larger batches (each poll and sink write
            # has a fixed cost): let more arrive before the next poll.
            self._next_awake = datetime.now(timezone.utc) + self._options.linger
        else:
            self._next_awake = None  # polled again at once: no clock read on the busy path
        return [chunks] if chunks else []

    def _drain(self) -> list[Poll]:
        """On shutdown: close every connection at once, hand over what was read, then end."""
        if self._stopped:
            raise StopIteration
        self._stopped = True
        # Closing waits for no feed past the shutdown deadline (shared with the sink's flush).
        budget = STOP_CLOSE_TIMEOUT_S
        left = time_left(self._stopping)
        if left is not None:
            budget = max(MIN_CLOSE_S, min(budget, left))
        with self._loop as loop:
            loop.run_until_complete(self._cancel_all(budget))
            chunks = self._take()
        self._log.info("source_stopped", handed_over=sum(len(c.frames) for c in chunks))
        return [chunks] if chunks else []

    async def _cancel_all(self, timeout: float) -> None:
        """Cancel every task of this loop (readers close their connections with 1000); after
        `timeout`, cancel again: a reader still closing aborts its connection."""
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        if tasks:
            _, closing = await asyncio.wait(tasks, timeout=timeout)
            for task in closing:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def next_awake(self) -> datetime | None:
        return self._next_awake

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        self._loop.close()


class WebSocketSource(FixedPartitionedSource[Poll, None]):
    """Reads every feed; `partitions` should be the cluster's total number of workers."""

    def __init__(self, options: SourceOptions, partitions: int, status: ConnectionStatus,
                 metrics: Metrics, stopping: threading.Event,
                 seq_blocks: SeqBlocks | None = None) -> None:
        count = max(1, min(partitions, len(options.feeds)))
        self._groups = {f"feeds-{i}": list(options.feeds[i::count]) for i in range(count)}
        self._options = options
        self._status = status
        self._metrics = metrics
        self._stopping = stopping
        self._seq_blocks = seq_blocks

    def list_parts(self) -> list[str]:
        return list(self._groups)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _FeedsPartition:
        return _FeedsPartition(for_part, self._groups[for_part], self._options, self._status,
                               self._metrics, self._stopping, self._seq_blocks)
