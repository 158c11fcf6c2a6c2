"""File descriptors: about one per feed, checked against RLIMIT_NOFILE at start."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

from app.fds import HTTP_BASE, PER_FEED, PER_SINK_PARTITION, PER_SOURCE_PARTITION, STDIO
from support.service import ROOT
from support.wait import wait_until


def limit(soft: int, hard: int):  # type: ignore[no-untyped-def]
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_too_low_a_hard_limit_is_exit_2_with_the_numbers():
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "BYTEWAX_"))}
    urls = ",".join(f"ws://127.0.0.1:9/{i}" for i in range(100))
    result = subprocess.run(
        [sys.executable, "-m", "app"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**clean, "INGEST_SOURCE_URLS": urls, "INGEST_SINK_URL": "ws://127.0.0.1:9/"},
        preexec_fn=limit(64, 64))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "RLIMIT_NOFILE: the feeds and workers need about 212 file descriptors, the limit is 64 "
        "(hard 64): raise it (ulimit -n 212) or run fewer feeds per process"]


def test_a_low_soft_limit_is_raised_and_every_feed_connects_with_one_descriptor(
        sink, servers, service):
    feeds, workers = 100, 2
    server = servers(lambda ws: ws.wait_closed())
    app = service({"INGEST_SOURCE_URLS": ",".join(f"{server.url}/{i}" for i in range(feeds)),
                   "INGEST_SINK_URL": sink.url, "INGEST_WORKERS": str(workers)},
                  preexec=limit(64, 4096))
    app.wait_ready()
    # /readyz can say ready before every partition registered its feeds: count them up.
    wait_until(lambda: sum(value for (name, _), value in app.metrics().items()
                           if name == "ingest_source_up") == feeds, 20)
    raised = [e for e in app.logs() if e["event"] == "fd_limit_raised"]
    assert [(e["was"], e["soft"]) for e in raised] == [(64, 4096)]
    with open(f"/proc/{app.process.pid}/limits") as limits:
        assert any(line.startswith("Max open files") and line.split()[3:5] == ["4096", "4096"]
                   for line in limits)
    # The formula's terms, without its margin and HTTP connections (this test holds none open
    # while counting): the real count stays within them.
    held = len(os.listdir(f"/proc/{app.process.pid}/fd"))
    assert held <= (PER_FEED * feeds + (PER_SOURCE_PARTITION + PER_SINK_PARTITION) * workers
                    + HTTP_BASE + STDIO), held
    assert held >= feeds
    assert app.terminate() == 0
