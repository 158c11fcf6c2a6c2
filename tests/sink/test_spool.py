"""spool.py: order, confirmation, counters across reopen, SIGKILL durability, limits, full disk."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.errors import ConfigError
from app.sink.spool import Record, Spool, SpoolError, Stored
from support.wait import holds_for

REPO = Path(__file__).resolve().parents[2]


def records(source: str, first_seq: int, count: int, size: int = 100,
            received_at: float = 1000.0) -> list[Record]:
    return [Record(source, seq, received_at + seq, f"{source}:{seq}:".encode().ljust(size, b"x"))
            for seq in range(first_seq, first_seq + count)]


def everything(spool: Spool) -> list[Stored]:
    out: list[Stored] = []
    while batch := spool.peek(out[-1].id if out else 0, 100, 1 << 20):
        out.extend(batch)
    return out


def integrity(directory: Path) -> str:
    with sqlite3.connect(directory / "spool.db") as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def counted(spool: Spool) -> tuple[int, int]:
    """Bytes and messages counted from what is stored, to check the counters kept in memory."""
    stored = everything(spool)
    return sum(len(s.message) for s in stored), len(stored)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    opened = Spool(tmp_path / "spool", max_bytes=1 << 20)
    yield opened
    opened.close()


def test_records_come_back_in_append_order_across_feeds_and_batches(spool: Spool) -> None:
    appended = records("a", 1, 3) + records("b", 1, 2)
    assert spool.append(appended[:2])
    assert spool.append(appended[2:])
    got = everything(spool)
    assert [Record(s.source, s.seq, s.received_at, s.message) for s in got] == appended
    assert [s.id for s in got] == [1, 2, 3, 4, 5]


def test_peek_is_bounded_by_count_and_bytes_but_returns_at_least_one(spool: Spool) -> None:
    spool.append(records("a", 1, 10, size=100))
    assert [s.seq for s in spool.peek(0, 3, 1 << 20)] == [1, 2, 3]
    assert [s.seq for s in spool.peek(3, 100, 250)] == [4, 5, 6]  # stops once 250 bytes reached
    assert [s.seq for s in spool.peek(0, 100, 10)] == [1]  # one record larger than the bound
    assert spool.peek(10, 100, 1 << 20) == []


def test_confirm_deletes_only_up_to_the_id_and_updates_the_counters(spool: Spool) -> None:
    spool.append(records("a", 1, 5, size=100))
    assert spool.stats() == (500, 5, 1001.0)
    spool.confirm(3)
    assert [s.seq for s in everything(spool)] == [4, 5]
    assert spool.stats() == (200, 2, 1004.0)
    spool.confirm(3)  # again: nothing left at or below 3, nothing changes
    assert spool.stats() == (200, 2, 1004.0)
    spool.confirm(99)  # beyond the last id: everything
    assert spool.stats() == (0, 0, None)
    assert everything(spool) == []


def test_ids_keep_growing_after_the_spool_empties(spool: Spool) -> None:
    spool.append(records("a", 1, 3))
    spool.confirm(3)
    spool.append(records("a", 4, 1))
    assert [s.id for s in spool.peek(3, 10, 1 << 20)] == [4]


def test_counters_and_content_are_rebuilt_on_reopen(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    first = Spool(directory, max_bytes=1 << 20)
    first.append(records("a", 1, 4, size=50))
    first.append(records("b", 1, 2, size=70))
    first.confirm(2)
    before = first.stats()
    first.close()
    again = Spool(directory, max_bytes=1 << 20)
    try:
        assert again.stats() == before == (2 * 50 + 2 * 70, 4, 1003.0)
        assert [(s.id, s.source, s.seq) for s in everything(again)] == [
            (3, "a", 3), (4, "a", 4), (5, "b", 1), (6, "b", 2)]
        again.append(records("a", 5, 1, size=30))
        assert everything(again)[-1].id == 7  # numbering goes on after what is stored
        again.confirm(4)
        assert again.stats() == (2 * 70 + 30, 3, 1001.0) and counted(again) == (170, 3)
    finally:
        again.close()


def test_seq_floor_persists_and_never_goes_down(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    first = Spool(directory, max_bytes=1 << 20)
    assert first.seq_floor("a") == 0
    first.reserve_seq("a", 1000)
    first.reserve_seq("a", 500)
    first.reserve_seq("b", 7)
    first.close()
    again = Spool(directory, max_bytes=1 << 20)
    try:
        assert (again.seq_floor("a"), again.seq_floor("b"), again.seq_floor("c")) == (1000, 7, 0)
    finally:
        again.close()


def test_a_full_spool_refuses_the_whole_batch_and_keeps_the_rest(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1000)
    try:
        assert spool.append(records("a", 1, 8, size=100))
        assert not spool.append(records("a", 9, 3, size=100))  # 1100 > 1000: refused whole
        assert spool.append(records("a", 12, 2, size=100))  # exactly 1000 fits
        assert not spool.append(records("a", 14, 1, size=1))
        assert [s.seq for s in everything(spool)] == [*range(1, 9), 12, 13]
        assert spool.stats()[:2] == (1000, 10)
        spool.confirm(10)
        assert spool.append(records("a", 14, 1, size=5000))  # an empty spool takes any batch
    finally:
        spool.close()


def test_block_waits_until_confirm_frees_room(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1000)
    try:
        spool.append(records("a", 1, 10, size=100))
        assert not spool.append(records("a", 11, 5, size=100), timeout=0.05)
        assert not spool.wait_for_room(0.05, need=500)
        result: list[bool] = []
        waiter = threading.Thread(
            target=lambda: result.append(spool.append(records("a", 11, 5, size=100), timeout=10)))
        waiter.start()
        assert holds_for(lambda: not result, 0.1)  # still full: it can only be waiting
        spool.confirm(4)  # frees 400 bytes: not enough for 500
        spool.confirm(5)  # 500: enough
        waiter.join(timeout=10)
        assert result == [True]
        assert [s.seq for s in everything(spool)] == list(range(6, 16))
        assert spool.wait_for_room(0.0, need=0)
    finally:
        spool.close()


def test_a_drainer_thread_gets_everything_once_in_order_while_the_worker_appends(
        spool: Spool) -> None:
    def work() -> None:
        for b in range(100):
            assert spool.append(records("a", b * 20 + 1, 20, size=50))

    worker = threading.Thread(target=work)
    worker.start()
    drained: list[int] = []
    after = 0
    deadline = time.monotonic() + 10
    while len(drained) < 2000 and time.monotonic() < deadline:
        if not spool.wait_for_data(after, timeout=1.0):
            continue
        got = spool.peek(after, 64, 1 << 20)
        drained += [s.seq for s in got]
        after = got[-1].id
        spool.confirm(after)
    worker.join(timeout=10)
    assert drained == list(range(1, 2001))
    assert spool.stats() == (0, 0, None)


def test_wait_for_data_returns_once_a_record_past_the_id_is_waiting(spool: Spool) -> None:
    assert not spool.wait_for_data(0, timeout=0.02)
    spool.append(records("a", 1, 2))
    assert spool.wait_for_data(0, timeout=0.0) and spool.wait_for_data(1, timeout=0.0)
    assert not spool.wait_for_data(2, timeout=0.02)
    spool.confirm(2)
    assert not spool.wait_for_data(0, timeout=0.0)  # empty: ids below the head do not count
    woken: list[bool] = []
    waiter = threading.Thread(target=lambda: woken.append(spool.wait_for_data(2, timeout=10)))
    waiter.start()
    assert holds_for(lambda: not woken, 0.05)
    spool.append(records("a", 3, 1))
    waiter.join(timeout=10)
    assert woken == [True]


def test_a_full_disk_raises_spool_error_changes_nothing_and_the_store_recovers(
        tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory, max_bytes=1 << 30)
    try:
        for first in range(1, 400, 100):  # four batches: confirming 300 frees three
            spool.append(records("a", first, 100, size=1000))
        # A full disk, as SQLite sees one: no page may be added to the database (same error,
        # SQLITE_FULL "database or disk is full"). The limit is per connection: the writer's.
        with spool._write_lock:
            pages = spool._writer.execute("PRAGMA page_count").fetchone()[0]
            spool._writer.execute(f"PRAGMA max_page_count={pages}")
        before = spool.stats()
        with pytest.raises(SpoolError, match="full"):
            spool.append(records("a", 401, 200, size=1000))
        assert spool.stats() == before and counted(spool) == before[:2]
        assert [s.seq for s in everything(spool)] == list(range(1, 401))
        spool.reserve_seq("a", 5000)  # small writes that fit still work
        spool.confirm(300)  # room is made: freed pages are reused
        assert spool.append(records("a", 401, 200, size=1000))  # the same batch, retried
        stored = everything(spool)
        assert [s.seq for s in stored] == list(range(301, 601))
        assert [s.id for s in stored] == list(range(301, 601))  # no id lost to the failure
        assert spool.stats()[:2] == counted(spool) == (300 * 1000, 300)
    finally:
        spool.close()
    assert integrity(directory) == "ok"


def test_an_unwritable_directory_is_a_configuration_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError) as raised:
        Spool(blocker / "spool", max_bytes=1000)
    assert raised.value.problems[0].startswith(f"INGEST_SPOOL_DIR: cannot write {blocker}/spool (")


def test_one_spool_directory_serves_one_process_at_a_time(tmp_path: Path, spool: Spool) -> None:
    with pytest.raises(ConfigError, match=r"INGEST_SPOOL_DIR: .* in use"):
        Spool(spool.directory, max_bytes=1000)
    spool.close()
    Spool(spool.directory, max_bytes=1000).close()


def test_closed_spool_raises_spool_error(spool: Spool) -> None:
    spool.close()
    spool.close()
    with pytest.raises(SpoolError):
        spool.append(records("a", 1, 1))
    with pytest.raises(SpoolError):
        spool.peek(0, 1, 1)


WRITER = """
import sys
from app.sink.spool import Record, Spool
spool = Spool(sys.argv[1], max_bytes=1 << 30, synchronous=sys.argv[2])
for b in range(2000):
    batch = [Record("feed", b * 50 + i + 1, 1000.0 + b, b"%d:%d:" % (b, i) + b"x" * 200)
             for i in range(50)]
    assert spool.append(batch)
    print(b, flush=True)
"""


@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])
def test_every_batch_reported_committed_survives_sigkill_in_order(
        tmp_path: Path, synchronous: str) -> None:
    directory = tmp_path / "spool"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(directory), synchronous],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    reported: list[int] = []
    try:
        for line in writer.stdout:
            reported.append(int(line))
            if len(reported) == 40:
                os.kill(writer.pid, signal.SIGKILL)  # mid-way: it goes on appending until killed
                break
        reported += [int(line) for line in writer.stdout]  # committed before the kill
    finally:
        if writer.poll() is None:
            os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=10)
    assert writer.returncode == -signal.SIGKILL
    assert reported == list(range(len(reported))) and len(reported) < 2000

    assert integrity(directory) == "ok"
    spool = Spool(directory, max_bytes=1 << 30)
    try:
        stored = everything(spool)
        # Whole batches only (one transaction each), in order, every reported one included.
        assert len(stored) % 50 == 0 and len(stored) >= 50 * len(reported)
        assert [s.seq for s in stored] == list(range(1, len(stored) + 1))
        assert [s.id for s in stored] == list(range(1, len(stored) + 1))
        assert stored[-1].message.startswith(b"%d:49:" % (len(stored) // 50 - 1))
        assert spool.stats()[:2] == (sum(len(s.message) for s in stored), len(stored))
    finally:
        spool.close()


def test_a_reopened_spool_emptied_after_a_partial_confirm_never_hides_new_records(
        tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    first = Spool(directory, max_bytes=1 << 20)
    first.append(records("a", 1, 3))
    first.confirm(2)  # in part: the mark is written
    first.confirm(3)  # the whole row goes; the mark stays at 2
    first.close()
    again = Spool(directory, max_bytes=1 << 20)
    try:
        assert again.stats() == (0, 0, None)
        again.append(records("a", 4, 2))
        assert [s.seq for s in everything(again)] == [4, 5]
        assert everything(again)[0].id > 2  # above the mark: not taken for confirmed
        again.confirm(everything(again)[0].id)  # in part: the rest of the row stays waiting
        assert [s.seq for s in again.peek(0, 10, 1 << 20)] == [5]
    finally:
        again.close()


def test_a_batch_over_the_row_size_is_several_rows_committed_together(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import app.sink.spool as spool_module

    monkeypatch.setattr(spool_module, "ROW_BYTES", 250)  # rows of two 100-byte records
    directory = tmp_path / "spool"
    first = Spool(directory, max_bytes=1 << 20)
    first.append(records("a", 1, 7, size=100))
    with sqlite3.connect(directory / "spool.db") as db:
        assert db.execute("SELECT count(*) FROM batches").fetchone()[0] == 4
    assert [s.seq for s in first.peek(2, 3, 1 << 20)] == [3, 4, 5]  # across rows
    first.confirm(3)  # the first row goes, the second is confirmed in part
    assert first.stats() == (400, 4, 1004.0)
    first.close()
    again = Spool(directory, max_bytes=1 << 20)
    try:
        assert again.stats() == (400, 4, 1004.0)
        assert [(s.id, s.seq) for s in everything(again)] == [(4, 4), (5, 5), (6, 6), (7, 7)]
    finally:
        again.close()


def test_checkpoint_copies_the_wal_only_when_something_was_committed(spool: Spool) -> None:
    assert spool.checkpoint() is False
    spool.append(records("a", 1, 3))
    assert spool.checkpoint() is True
    assert spool.checkpoint() is False
    spool.confirm(3)
    assert spool.checkpoint() is True
    assert counted(spool) == (0, 0)
    spool.close()
    with pytest.raises(SpoolError):
        spool.checkpoint()
