"""Which store for the spool, and at which sync setting. `python -m bench.spool_store`.

Each case spools batches of 1000 envelopes of ~250 bytes (`--record-bytes`) as during a sink
outage, then drains them (peek / confirm, as the sink side does), then runs a steady state of
small batches (10 records, each appended then drained, as at 5 000 msg/s with a live sink).
Printed per case: records/s while spooling and while draining; disk bytes written per record
while spooling, while draining and in the steady state (/proc/self/io write_bytes, counted when
pages are dirtied, so WAL and checkpoint writes both count); and the p50 / p99 / max latency of
the steady state's appends (what `write_batch` waits for).

Cases: `app.sink.spool.Spool` (sqlite3, WAL) with synchronous NORMAL and FULL, the same with
SQLite's `secure_delete` back on (Debian's build default, which Spool turns off), and persist-queue
(if installed) as its API offers it: `SQLiteQueue` with one `put` per record (one commit each),
`SQLiteQueue` with one `put` per batch (the batch pickled as one item), and the file-based `Queue`.
The per-record cases are slow, so they run on fewer records (the printed rates are per record).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.sink.spool import Record, Spool, Synchronous

BATCH = 1000
SMALL_BATCH = 10


def envelope(seq: int, size: int) -> bytes:
    head = (b'{"source":"bench","seq":%d,"received_at":"2026-11-25T16:54:10.123456Z","data":'
            b'{"type":"trade","price":"43125.17","size":"0.0125","pad":"' % seq)
    return head + b"x" * max(0, size - len(head) - 3) + b'"}}'


def batch(start: int, count: int, size: int) -> list[Record]:
    now = time.time()
    return [Record("bench", seq, now, envelope(seq, size)) for seq in range(start, start + count)]


def write_bytes() -> int:
    with open("/proc/self/io") as io:
        for line in io:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


@dataclass
class Result:
    name: str
    records: int
    spool_rate: float
    drain_rate: float
    spool_bytes: float  # written per record
    drain_bytes: float
    steady_bytes: float
    latencies: list[float]

    def line(self) -> str:
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) * 1e3
        p99 = lat[int(len(lat) * 0.99) - 1] * 1e3
        return (f"{self.name:36} {self.records:>7} {self.spool_rate:>9,.0f} "
                f"{self.drain_rate:>9,.0f} {self.spool_bytes:>7,.0f} {self.drain_bytes:>7,.0f} "
                f"{self.steady_bytes:>7,.0f} {p50:>6.2f} {p99:>6.2f} {lat[-1] * 1e3:>6.2f}")


HEADER = (f"{'':36} {'':>7} {'rec/s':>9} {'rec/s':>9} {'B/rec':>7} {'B/rec':>7} {'B/rec':>7} "
          f"{'steady append ms':>20}\n"
          f"{'case':36} {'records':>7} {'spool':>9} {'drain':>9} {'spool':>7} {'drain':>7} "
          f"{'steady':>7} {'p50':>6} {'p99':>6} {'max':>6}")


class Store:
    """The three operations every case offers, on records of this benchmark."""

    def append(self, records: list[Record]) -> None:
        raise NotImplementedError

    def drain(self, up_to: int) -> int:
        """Take and delete up to `up_to` records, return how many."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SqliteSpool(Store):
    def __init__(self, directory: Path, synchronous: Synchronous,
                 secure_delete: bool = False) -> None:
        self.spool = Spool(directory, max_bytes=1 << 40, synchronous=synchronous)
        if secure_delete:  # what Spool turns off, back on, to show what it costs
            self.spool._writer.execute("PRAGMA secure_delete=ON")

    def append(self, records: list[Record]) -> None:
        assert self.spool.append(records)

    def drain(self, up_to: int) -> int:
        got = self.spool.peek(0, up_to, 1 << 20)
        if got:
            self.spool.confirm(got[-1].id)
        return len(got)

    def close(self) -> None:
        self.spool.close()


class PersistQueuePerRecord(Store):
    def __init__(self, directory: Path) -> None:
        import persistqueue  # type: ignore[import-not-found,unused-ignore]

        self.queue: Any = persistqueue.SQLiteQueue(str(directory), multithreading=True)

    def append(self, records: list[Record]) -> None:
        for r in records:
            self.queue.put(tuple(r))

    def drain(self, up_to: int) -> int:
        n = 0
        while n < up_to and self.queue.qsize():
            self.queue.get(block=False)
            n += 1
        return n

    def close(self) -> None:
        self.queue.close()


class PersistQueuePerBatch(PersistQueuePerRecord):
    def append(self, records: list[Record]) -> None:
        self.queue.put([tuple(r) for r in records])

    def drain(self, up_to: int) -> int:
        if not self.queue.qsize():
            return 0
        return len(self.queue.get(block=False))


class PersistQueueFile(PersistQueuePerRecord):
    def __init__(self, directory: Path) -> None:
        import persistqueue

        self.queue = persistqueue.Queue(str(directory), tempdir=str(directory))

    def drain(self, up_to: int) -> int:
        n = super().drain(up_to)
        self.queue.task_done()  # persists the read position
        return n

    def close(self) -> None:
        self.queue.task_done()


@contextmanager
def scratch(root: Path, name: str) -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run(name: str, make: Callable[[Path], Store], root: Path, batches: int,
        small: int, size: int) -> Result:
    with scratch(root, name.split()[0]) as directory:
        store = make(directory)
        try:
            records = batches * BATCH
            written = write_bytes()
            start = time.perf_counter()
            for b in range(batches):
                store.append(batch(b * BATCH + 1, BATCH, size))
            spooled = time.perf_counter() - start
            spool_bytes = write_bytes() - written
            written = write_bytes()
            start = time.perf_counter()
            drained = 0
            while drained < records:
                n = store.drain(BATCH)
                assert n, "store ran dry early"
                drained += n
            draining = time.perf_counter() - start
            drain_bytes = write_bytes() - written
            written = write_bytes()
            latencies = []
            for i in range(small):
                records_in = batch(i * SMALL_BATCH + 1, SMALL_BATCH, size)
                t0 = time.perf_counter()
                store.append(records_in)
                latencies.append(time.perf_counter() - t0)
                assert store.drain(SMALL_BATCH) == SMALL_BATCH
            steady_bytes = write_bytes() - written
        finally:
            store.close()
    return Result(name, records, records / spooled, records / draining, spool_bytes / records,
                  drain_bytes / records, steady_bytes / (small * SMALL_BATCH), latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200, help="batches of 1000 (sqlite)")
    parser.add_argument("--slow-batches", type=int, default=3,
                        help="batches of 1000 for the per-record persist-queue cases")
    parser.add_argument("--small", type=int, default=2000, help="small batches for latency")
    parser.add_argument("--record-bytes", type=int, default=250, help="bytes per envelope")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to create the stores (default: a temporary directory); "
                             "use the disk the spool will live on")
    args = parser.parse_args()

    cases: list[tuple[str, Callable[[Path], Store], int, int]] = [
        ("sqlite WAL synchronous=NORMAL", lambda d: SqliteSpool(d, "NORMAL"),
         args.batches, args.small),
        ("sqlite WAL synchronous=FULL", lambda d: SqliteSpool(d, "FULL"),
         args.batches, args.small),
        ("sqlite WAL NORMAL, secure_delete=ON", lambda d: SqliteSpool(d, "NORMAL", True),
         args.batches, args.small),
    ]
    try:
        import persistqueue  # noqa: F401
    except ImportError:
        print("persist-queue not installed: its cases are skipped")
    else:
        cases += [
            ("persist-queue SQLiteQueue/record", PersistQueuePerRecord,
             args.slow_batches, args.small // 10),
            ("persist-queue SQLiteQueue/batch", PersistQueuePerBatch,
             args.batches, args.small),
            ("persist-queue Queue (files)/record", PersistQueueFile,
             args.slow_batches, args.small // 10),
        ]
    root = args.dir or Path(tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    print(f"records of {len(envelope(1, args.record_bytes))} bytes, batches of {BATCH}; "
          f"steady state: batches of {SMALL_BATCH}, each appended then drained")
    print(HEADER)
    for name, make, batches, small in cases:
        print(run(name, make, root, batches, small, args.record_bytes).line(), flush=True)


if __name__ == "__main__":
    main()
