"""`python -m app` with a spool: SIGKILL and restart, the memory it holds, and a bad directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from app.feed.seqblocks import SEQ_BLOCK
from app.sink.spool import Spool
from support.servers import Sink, feed_handler, script_handler
from support.service import ROOT, Service
from support.wait import wait_until

SINK = "ws://127.0.0.1:9/out"


def env_for(feed_url: str, sink_url: str, directory: object, **extra: str) -> dict[str, str]:
    return {"INGEST_SOURCES": json.dumps([{"name": "f", "url": feed_url}]),
            "INGEST_SINK_URL": sink_url, "INGEST_SPOOL_DIR": str(directory), **extra}


def spooled(app: Service) -> float:
    """Messages waiting in the service's spool (0 until its HTTP server answers)."""
    assert app.process.poll() is None, app.stderr()
    try:
        return app.metric("ingest_spool_messages") or 0.0
    except OSError:
        return 0.0


def test_a_process_killed_during_an_outage_sends_its_spool_first_after_a_restart(
        service, servers, tmp_path):
    sink = Sink()
    try:
        sink.server.stop()
        before = servers(feed_handler(3000, name="f"))
        app = service(env_for(before.url, sink.url, tmp_path))
        wait_until(lambda: spooled(app) == 3000, 30)
        app.process.kill()  # SIGKILL: no flush, no close
        app.process.wait(10)
        assert (tmp_path / "0" / "spool.db").exists()  # a single process is process 0

        sink.server.start()
        after = servers(feed_handler(2000, name="f"))
        again = service(env_for(after.url, sink.url, tmp_path))
        assert sink.wait_for(lambda s: len(s.messages) >= 5000, 30)
        # Everything committed before the kill, in order, before anything read since; seq goes
        # on after the block the first run had reserved: no number is used twice.
        assert sink.by_source()["f"] == [*range(1, 3001), *range(SEQ_BLOCK + 1, SEQ_BLOCK + 2001)]
        assert [m["data"]["n"] for m in sink.messages] == [*range(1, 3001), *range(1, 2001)]
        opened = [e for e in again.logs() if e["event"] == "spool_opened"]
        assert [e["messages"] for e in opened] == [3000]
        wait_until(lambda: spooled(again) == 0)
        assert again.terminate() == 0
    finally:
        sink.close()


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_memory_stays_small_while_a_large_spool_is_held_and_sent(service, servers, tmp_path):
    # 48 MB of 8 KB envelopes spooled while the sink is down, then sent: the drainer reads a
    # bounded window at a time, so peak RSS does not grow with the spool (bench/outage.py
    # --hold-gb 1 holds 1 GiB). Batches of 200: what a batch holds in memory (batch size x
    # message size, in direct mode too) is not what this measures.
    count = 6000
    frames: list[str | bytes] = [json.dumps({"n": n, "pad": "x" * 8000})
                                 for n in range(1, count + 1)]
    sink = Sink()
    try:
        sink.server.stop()
        feed = servers(script_handler(frames))
        app = service(env_for(feed.url, sink.url, tmp_path, INGEST_BATCH_SIZE="200"))
        wait_until(lambda: spooled(app) == count, 60)
        assert app.metric("ingest_spool_bytes") > 48_000_000
        held = peak_rss_mib(app.process.pid)
        sink.server.start()
        wait_until(lambda: spooled(app) == 0, 60)
        assert sink.wait_for(lambda s: len(s.messages) >= count, 10)
        sent = peak_rss_mib(app.process.pid)
        assert held < 150 and sent < 150, (held, sent)
        assert app.terminate() == 0
    finally:
        sink.close()


def test_a_spool_directory_that_cannot_be_created_is_exit_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "BYTEWAX_"))}
    result = subprocess.run(
        [sys.executable, "-m", "app"],
        env={**clean, **env_for("ws://127.0.0.1:9/in", SINK, blocker / "spool")},
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"INGEST_SPOOL_DIR: cannot write {blocker / 'spool' / '0'} (")


def test_a_spool_directory_in_use_by_another_process_is_exit_2(tmp_path):
    holder = Spool(tmp_path / "0", 1_000_000)  # as another live process would hold it
    try:
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith(("INGEST_", "BYTEWAX_"))}
        result = subprocess.run(
            [sys.executable, "-m", "app"],
            env={**clean, **env_for("ws://127.0.0.1:9/in", SINK, tmp_path)},
            cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        holder.close()
    assert result.returncode == 2
    assert result.stderr.startswith(f"INGEST_SPOOL_DIR: {tmp_path / '0'} is in use")


@pytest.mark.parametrize(("process_id", "subdirectory"), [(None, "0"), (3, "3")])
def test_each_process_spools_under_its_own_subdirectory(tmp_path, process_id, subdirectory):
    from app.settings import SpoolOptions
    from app.sink.spooled import open_spool

    spool = open_spool(SpoolOptions(str(tmp_path), 1000, "block"), process_id)
    try:
        assert spool.directory == tmp_path / subdirectory
        assert (tmp_path / subdirectory / "spool.db").exists()
    finally:
        spool.close()


def test_spools_of_process_ids_a_shrunk_cluster_no_longer_has_are_reported(tmp_path):
    from app.settings import SpoolOptions
    from app.sink.spooled import leftover_spools

    for process_id in (0, 1, 3):
        Spool(tmp_path / str(process_id), 1000).close()
    (tmp_path / "7").mkdir()  # no spool in it
    (tmp_path / "notes").mkdir()
    options = SpoolOptions(str(tmp_path), 1000, "block")
    assert leftover_spools(options, 2) == [tmp_path / "3"]
    assert leftover_spools(options, 1) == [tmp_path / "1", tmp_path / "3"]
    assert leftover_spools(options, 4) == []
