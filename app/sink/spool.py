"""The crash-safe spool: an on-disk FIFO of serialised envelopes between the dataflow and the sink.

Owns one SQLite database (`spool.db`, WAL mode) in the spool directory, and nothing else: no
sockets, no metrics objects, no policy. It keeps

- the records waiting to be sent, in the order appended, each under an `id` that only grows (ids
  are assigned here, not by SQLite, so that emptying the table never makes an id come back while a
  drainer still remembers a larger one; a reopened spool goes on after its last record, or after
  the confirmed mark below if it is empty). Each `append` is stored as one row per up to 1 MiB of
  messages (concatenated, with their sources, seqs, receipt times and lengths packed beside
  them), so SQLite's work per row, not per message, is what a message costs; records keep ids
  of their own, and the id up to which records are confirmed is kept in a one-row table (a row
  confirmed in part stays stored until the rest of it is confirmed: bytes on disk, not in the
  counts);
- a per-feed `seq` high-water mark, so that a restarted process never reuses a number.

Threads (every method is thread-safe; this is who is expected to call what):

- the worker thread (`write_batch`): `append`, `wait_for_room`;
- the drainer (the sink's loop or its thread): `wait_for_data`, `peek`, `confirm`;
- the source, at start and then once per block of numbers: `seq_floor`, `reserve_seq`;
- anyone, often (metrics, `/readyz`): `stats`, which only reads counters kept in memory;
- the owner, once, at the end: `close`.

Writes (`append`, `confirm`, `reserve_seq`) go through one connection under one lock; `peek` reads
through a second connection, so the drainer reads while the worker commits (WAL readers never wait
for the writer). Waiting for room never holds either lock.

Durability. `append` returns once its transaction is committed. With `synchronous="NORMAL"` (the
default) a commit is durable against a crash or SIGKILL of the process, but a power loss or kernel
crash may lose the last transactions committed since the latest WAL checkpoint (the database stays
consistent: it rolls back to an earlier commit, never to a torn state). With `synchronous="FULL"`
each commit is also fsync'ed to the WAL before `append` returns, so it survives a power loss too,
at the price of one fsync per batch (see `bench/spool_store.py` for the figures).

Errors. Any SQLite error while writing (a full disk is `sqlite3.OperationalError: database or disk
is full`) rolls the whole transaction back and raises `SpoolError`; the store is left as it was
before the call, the in-memory counters too, so the caller logs the error and retries the same
call later. Nothing committed is ever lost by a failed call.

Size. `max_bytes` bounds the sum of the stored messages' lengths (the envelopes' bytes); the file
on disk is larger by SQLite's row and page overhead plus the WAL (capped after each checkpoint by
`journal_size_limit`), and it does not shrink when records are confirmed: freed pages are reused
by later appends. A batch that does not fit is refused whole; an empty spool takes any batch, so a
batch larger than `max_bytes` cannot wait forever.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import sqlite3
import tempfile
import threading
import time
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

from app.errors import ConfigError, IngestError

DB_NAME = "spool.db"
LOCK_NAME = "spool.lock"
ROW_BYTES = 1_048_576
"""Most message bytes stored in one row: a batch larger than that is several rows (one commit)."""
WAL_SIZE_LIMIT = 64 * 1024 * 1024
AUTO_CHECKPOINT_PAGES = 4_000
"""WAL pages (16 MB at 4 KiB) past which a commit checkpoints itself: `checkpoint()` from a
thread of its own usually comes first."""
"""Bytes the WAL file is truncated back to after a checkpoint (it grows past it only in bursts)."""

Synchronous = Literal["NORMAL", "FULL"]

# A batch's records are ids first_id .. first_id + count - 1. `end_offset` is the running total of
# message bytes appended, after this batch. Packed columns are native-endian arrays (the spool
# never leaves its machine): seqs int64, received float64, lengths uint32; sources is JSON
# [[source, run length], ...].
_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    first_id INTEGER PRIMARY KEY,
    count INTEGER NOT NULL,
    end_offset INTEGER NOT NULL,
    sources TEXT NOT NULL,
    seqs BLOB NOT NULL,
    received BLOB NOT NULL,
    lengths BLOB NOT NULL,
    messages BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS confirmed (
    only INTEGER PRIMARY KEY CHECK (only = 1),
    upto INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS seq_marks (
    source TEXT PRIMARY KEY,
    upto INTEGER NOT NULL
);
"""


class SpoolError(IngestError):
    """The store refused a call (full disk, I/O error...). Nothing changed; retry it later."""


class Record(NamedTuple):
    """One envelope to spool: `message` is the serialised envelope, sent as is."""

    source: str
    seq: int
    received_at: float  # Unix time, seconds
    message: bytes


class Stored(NamedTuple):
    """A record read back from the spool, under the id that `confirm` takes."""

    id: int
    source: str
    seq: int
    received_at: float
    message: bytes


class SpoolStats(NamedTuple):
    bytes: int
    messages: int
    oldest_received_at: float | None  # None when empty


class Spool:
    """A durable FIFO of `Record`s in `directory`, bounded by `max_bytes`.

    Opening creates the directory and the database if needed and rebuilds the counters from the
    first and last records stored (no scan). A directory that cannot be created or written, or that
    another live process has open as its spool, raises `ConfigError` naming `INGEST_SPOOL_DIR`.
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int,
                 synchronous: Synchronous = "NORMAL") -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        _check_writable(self.directory)
        self._lock_file = _lock_directory(self.directory)
        path = self.directory / DB_NAME
        try:
            self._writer = _connect(path, synchronous)
            try:
                self._writer.executescript(_SCHEMA)
                self._reader = _connect(path, synchronous)
                self._checkpointer = _connect(path, synchronous)
                confirmed_row = self._writer.execute(
                    "SELECT upto FROM confirmed WHERE only = 1").fetchone()
                confirmed = int(confirmed_row[0]) if confirmed_row else 0
                head = self._writer.execute(
                    "SELECT first_id, count, end_offset, received, lengths FROM batches"
                    " ORDER BY first_id LIMIT 1").fetchone()
                tail = self._writer.execute(
                    "SELECT first_id, count, end_offset FROM batches"
                    " ORDER BY first_id DESC LIMIT 1").fetchone()
            except BaseException:
                self._writer.close()
                raise
        except sqlite3.Error as e:
            self._lock_file.close()
            raise ConfigError([f"INGEST_SPOOL_DIR: cannot write {self.directory} ({e})"]) from e
        self._write_lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._writes = 0  # commits since the last checkpoint()
        self._read_lock = threading.Lock()
        # Guards the counters below; notified when append() adds or confirm() frees room.
        self._changed = threading.Condition(threading.Lock())
        self._closed = False
        # What is waiting is exactly ids head_id .. next_id - 1: ids are handed out here one after
        # the other and only ever confirmed from the front. `end_offset` is a running total of
        # the bytes appended, so the byte count takes two lookups, never a scan (open, confirm).
        # An empty spool goes on after the confirmed mark, so the mark never covers a new id.
        self._head_id = confirmed + 1
        self._confirmed_end = 0
        self._oldest: float | None = None
        if head:
            start = max(0, confirmed + 1 - head[0])  # records of the first batch confirmed
            self._head_id = head[0] + start
            self._confirmed_end = head[2] - sum(_unpack("I", head[4])[start:])
            self._oldest = _unpack("d", head[3])[start]
        self._next_id: int = tail[0] + tail[1] if tail else self._head_id
        self._appended_end: int = tail[2] if tail else 0

    # -- worker thread ---------------------------------------------------------------------------

    def append(self, records: Sequence[Record], timeout: float = 0.0) -> bool:
        """Commit `records` as one transaction, after the records already spooled.

        Returns True once committed. Returns False, having stored nothing, if the batch does not
        fit under `max_bytes` and no room was freed within `timeout` seconds (0: do not wait).
        `when_full` is the caller's: `drop_newest` counts a refused batch as dropped, `block`
        calls again (or `wait_for_room`) until it fits. Raises `SpoolError` if the store fails.
        """
        if not records:
            return True
        size = sum(len(r.message) for r in records)
        deadline = time.monotonic() + timeout
        while True:
            with self._write_lock:
                self._check_open()
                if self._fits(size):
                    self._insert(records)
                    return True
            if not self.wait_for_room(deadline - time.monotonic(), size):
                return False

    def wait_for_room(self, timeout: float, need: int = 1) -> bool:
        """Wait up to `timeout` seconds until `need` more bytes fit (or the spool is empty).

        True if they fit when it returns. Woken by `confirm`, so no polling.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._fits(need):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return False
                self._changed.wait(remaining)
            return True

    # -- drainer ---------------------------------------------------------------------------------

    def wait_for_data(self, after_id: int, timeout: float) -> bool:
        """Wait up to `timeout` seconds until a record with id > `after_id` is waiting.

        True if one is when it returns. Woken by `append`, so no polling. It blocks a thread:
        from an event loop, call it through `asyncio.to_thread` (or peek on a timer).
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (self._next_id > self._head_id and self._next_id - 1 > after_id):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return False
                self._changed.wait(remaining)
            return True

    def peek(self, after_id: int, limit: int, max_bytes: int) -> list[Stored]:
        """Up to `limit` records with id > `after_id`, in order, stopping after the record whose
        message brings the total to `max_bytes` or more (so at least one record if any is
        waiting, however large). Removes nothing; the drainer passes the last id it has sent to
        read on while earlier ones await confirmation.
        """
        out: list[Stored] = []
        total = 0
        with self._changed:
            after_id = max(after_id, self._head_id - 1)  # confirmed ones are not waiting
        with self._read_lock:
            self._check_open()
            try:
                self._reader.execute("BEGIN")  # one snapshot for both statements
                cursor = self._reader.cursor()
                try:
                    start = cursor.execute(
                        "SELECT max(first_id) FROM batches WHERE first_id <= ?",
                        (after_id + 1,)).fetchone()[0]
                    cursor.execute(
                        "SELECT first_id, sources, seqs, received, lengths, messages"
                        " FROM batches WHERE first_id >= ? ORDER BY first_id", (start or 0,))
                    for first_id, sources, seqs, received, lengths, messages in cursor:
                        for stored in _records(first_id, after_id, sources, seqs, received,
                                               lengths, messages):
                            out.append(stored)
                            total += len(stored.message)
                            if len(out) >= limit or total >= max_bytes:
                                return out
                finally:
                    # Ends the read transaction now, so checkpoints are not held back.
                    cursor.close()
                    self._reader.execute("COMMIT")
            except sqlite3.Error as e:
                raise SpoolError(f"spool read failed: {e}") from e
        return out

    def confirm(self, upto_id: int) -> None:
        """Delete every record with id <= `upto_id` (what the sink confirmed), in one commit."""
        with self._write_lock:
            self._check_open()
            upto = min(upto_id, self._next_id - 1)
            if upto < self._head_id:
                return  # nothing waiting at or below it
            with self._transaction("confirm"):
                first_id, count, end, lengths = self._writer.execute(
                    "SELECT first_id, count, end_offset, lengths FROM batches"
                    " WHERE first_id <= ? ORDER BY first_id DESC LIMIT 1", (upto,)).fetchone()
                done = upto - first_id + 1  # records of that batch now confirmed
                end -= sum(_unpack("I", lengths)[done:])
                # Batches wholly confirmed go; the one confirmed in part stays, behind the mark.
                below = first_id + 1 if done == count else first_id
                self._writer.execute("DELETE FROM batches WHERE first_id < ?", (below,))
                if done < count:
                    # Needed only for a row confirmed in part: a stale mark below every stored
                    # id is harmless, and not writing it saves a page per confirm.
                    self._writer.execute(
                        "INSERT INTO confirmed (only, upto) VALUES (1, ?)"
                        " ON CONFLICT (only) DO UPDATE SET upto = excluded.upto", (upto,))
                oldest = None
                if upto + 1 < self._next_id:
                    nxt = self._writer.execute(
                        "SELECT first_id, received FROM batches WHERE first_id <= ?"
                        " ORDER BY first_id DESC LIMIT 1", (upto + 1,)).fetchone()
                    oldest = _unpack("d", nxt[1])[upto + 1 - nxt[0]]
            with self._changed:
                self._head_id = upto + 1
                self._confirmed_end = end
                self._oldest = oldest
                self._changed.notify_all()

    # -- source ----------------------------------------------------------------------------------

    def seq_floor(self, source: str) -> int:
        """The highest `seq` reserved for `source` by an earlier run (0 if none): go on from it."""
        with self._write_lock:
            self._check_open()
            try:
                row = self._writer.execute(
                    "SELECT upto FROM seq_marks WHERE source = ?", (source,)).fetchone()
            except sqlite3.Error as e:
                raise SpoolError(f"spool read failed: {e}") from e
        return int(row[0]) if row else 0

    def reserve_seq(self, source: str, upto: int) -> None:
        """Durably record that `source` may use numbers up to `upto` (never lowers the mark).

        Call it before handing out a number above the last reservation, a block at a time.
        """
        with self._write_lock:
            self._check_open()
            with self._transaction("reserve_seq"):
                self._writer.execute(
                    "INSERT INTO seq_marks (source, upto) VALUES (?, ?)"
                    " ON CONFLICT (source) DO UPDATE SET upto = max(upto, excluded.upto)",
                    (source, upto))

    # -- anyone ----------------------------------------------------------------------------------

    def stats(self) -> SpoolStats:
        """Bytes and messages waiting, and the receipt time of the first one waiting (None if
        empty). From memory: cheap enough for every scrape."""
        with self._changed:
            return SpoolStats(self._appended_end - self._confirmed_end,
                              self._next_id - self._head_id, self._oldest)

    def close(self) -> None:
        """Close the database (idempotent). Later calls raise `SpoolError`; waiters return."""
        with self._write_lock, self._read_lock, self._checkpoint_lock:
            if self._closed:
                return
            with self._changed:
                self._closed = True
                self._changed.notify_all()
            self._reader.close()
            self._checkpointer.close()
            self._writer.close()
            self._lock_file.close()  # releases the directory for the next process

    def checkpoint(self) -> bool:
        """Copy what the WAL holds into the database, if anything was committed since the last
        call; True if it did. PASSIVE: it neither waits for nor blocks `append` and `confirm`.

        Commits run a checkpoint themselves only once the WAL passes AUTO_CHECKPOINT_PAGES;
        calling this from a thread of its own, every fraction of a second, keeps the worker's
        commits clear of the checkpoint's writes and fsyncs (the drainer does).
        """
        with self._checkpoint_lock:
            self._check_open()
            with self._changed:
                writes, self._writes = self._writes, 0
            if not writes:
                return False
            try:
                self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as e:
                raise SpoolError(f"spool checkpoint failed: {e}") from e
            return True

    # -- inside ----------------------------------------------------------------------------------

    def _fits(self, size: int) -> bool:
        waiting = self._appended_end - self._confirmed_end
        return self._next_id == self._head_id or waiting + size <= self.max_bytes

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError("spool is closed")

    def _insert(self, records: Sequence[Record]) -> None:
        first = self._next_id
        bounds = list(_row_bounds(records))
        ends = list(itertools.accumulate(
            (sum(len(r.message) for r in records[begin:stop]) for begin, stop in bounds),
            initial=self._appended_end))[1:]

        def rows() -> Iterator[tuple[object, ...]]:
            # One row at a time: a large batch is never copied whole.
            for (begin, stop), end in zip(bounds, ends, strict=True):
                part = records[begin:stop]
                runs = [(source, len(list(run)))
                        for source, run in itertools.groupby(r.source for r in part)]
                yield (first + begin, len(part), end, json.dumps(runs, separators=(",", ":")),
                       array("q", [r.seq for r in part]).tobytes(),
                       array("d", [r.received_at for r in part]).tobytes(),
                       array("I", [len(r.message) for r in part]).tobytes(),
                       b"".join([r.message for r in part]))

        with self._transaction("append"):
            self._writer.executemany(
                "INSERT INTO batches (first_id, count, end_offset, sources, seqs, received,"
                " lengths, messages) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows())
        end = ends[-1]
        with self._changed:
            if self._next_id == self._head_id:
                self._oldest = records[0].received_at
            self._next_id = first + len(records)
            self._appended_end = end
            self._changed.notify_all()

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[None]:
        """One write transaction on the writer connection: committed, or rolled back and
        reported as `SpoolError`. Caller holds the write lock."""
        try:
            self._writer.execute("BEGIN IMMEDIATE")
            yield
            self._writer.execute("COMMIT")
            with self._changed:
                self._writes += 1
        except BaseException as e:
            if self._writer.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._writer.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise SpoolError(f"spool {what} failed: {e}") from e
            raise


def _row_bounds(records: Sequence[Record]) -> Iterator[tuple[int, int]]:
    """(begin, end) of the rows a batch is stored as: at most ROW_BYTES of messages each (at
    least one record), so reading a row back never costs more memory than that."""
    begin, size = 0, 0
    for index, record in enumerate(records):
        if index > begin and size + len(record.message) > ROW_BYTES:
            yield begin, index
            begin, size = index, 0
        size += len(record.message)
    yield begin, len(records)


def _unpack(typecode: str, packed: bytes) -> array[Any]:
    values = array(typecode)
    values.frombytes(packed)
    return values


def _records(first_id: int, after_id: int, sources: str, seqs: bytes, received: bytes,
             lengths: bytes, messages: bytes) -> Iterator[Stored]:
    """The records of one stored batch with ids above `after_id`, in order."""
    seq_values, received_values = _unpack("q", seqs), _unpack("d", received)
    length_values = _unpack("I", lengths)
    index = offset = 0
    skip = after_id + 1 - first_id  # records of this batch at or below after_id
    for source, run in json.loads(sources):
        for _ in range(run):
            length = length_values[index]
            if index >= skip:
                yield Stored(first_id + index, source, seq_values[index],
                             received_values[index], messages[offset:offset + length])
            index += 1
            offset += length


def _check_writable(directory: Path) -> None:
    """Create `directory` and prove a file can be written in it, or raise `ConfigError`."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            pass
    except OSError as e:
        reason = e.strerror or str(e)
        raise ConfigError([f"INGEST_SPOOL_DIR: cannot write {directory} ({reason})"]) from e


def _lock_directory(directory: Path) -> IO[bytes]:
    """Take an exclusive lock on the directory for the life of the spool, or raise `ConfigError`.

    Two processes on one spool would interleave ids and each send the other's records; the lock
    dies with the process, SIGKILL included, so a restart is never locked out.
    """
    handle = open(directory / LOCK_NAME, "ab")  # noqa: SIM115 - held open until close()
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        handle.close()
        raise ConfigError([
            f"INGEST_SPOOL_DIR: {directory} is in use by another process ({e.strerror or e})"
        ]) from e
    return handle


def _connect(path: Path, synchronous: Synchronous) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), never implied.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        conn.close()
        raise sqlite3.OperationalError(f"journal_mode is {mode}, WAL refused")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    conn.execute(f"PRAGMA wal_autocheckpoint={AUTO_CHECKPOINT_PAGES}")
    # Debian's SQLite (so python:*-slim images) is built with SECURE_DELETE, which zeroes the
    # overflow pages of every confirmed record larger than a page: 16.7 KB written to delete one
    # 8 KB message, against 0.2 KB without (bench/spool_store.py's figures, same machine).
    conn.execute("PRAGMA secure_delete=OFF")
    return conn
