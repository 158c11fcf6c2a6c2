"""Memory is bounded per frame, not per feed (issue 11): a feed of huge compressible messages
cannot drive the process's memory up, nor starve a canary feed beside it.

Both cases run `python -m app` (peak RSS is the process's) for a few seconds against a feed
that sends as fast as the service reads, with permessage-deflate on (the default), and a canary
feed at 100 msg/s whose end-to-end latency is measured at the sink.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from support.service import ROOT, free_port
from support.wait import wait_until

RUN_S = 4.0


@pytest.fixture
def flood() -> Iterator[Callable[[int], str]]:
    """A large-message feed in a process of its own (support/flood.py); its URL."""
    started: list[subprocess.Popen[str]] = []

    def start(size: int) -> str:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "support.flood", "--port", str(port), "--bytes", str(size)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout is not None and "flood_listening" in process.stdout.readline()
        return f"ws://127.0.0.1:{port}"

    yield start
    for process in started:
        process.kill()
        process.wait()


async def canary(ws: ServerConnection) -> None:
    try:
        for n in range(1, 10_000):
            await ws.send(json.dumps({"n": n, "ts": time.time()}))
            await asyncio.sleep(0.01)
    except ConnectionClosed:
        pass


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


@pytest.mark.parametrize(("case", "size"), [
    # 15 MiB each, compressible to almost nothing: too_large (over max_message_bytes), every one
    ("15 MiB too large", 15 << 20),
    # 900 KB each, valid: forwarded, as fast as the sink takes them
    ("900 KB valid", 900_000),
])
def test_peak_rss_stays_bounded_and_the_canary_keeps_flowing(sink, servers, service, flood,
                                                              case, size):
    small = servers(canary)
    sources = [{"name": "big", "url": flood(size)}, {"name": "canary", "url": small.url}]
    app = service({"INGEST_SOURCES": json.dumps(sources), "INGEST_SINK_URL": sink.url})
    app.wait_ready()
    started = time.time()
    wait_until(lambda: time.time() - started >= RUN_S and app.process.poll() is None,
               RUN_S + 5, interval=0.2)
    peak = peak_rss_mib(app.process.pid)
    with sink._lock:
        latencies = sorted(arrived - message["data"]["ts"]
                           for message, arrived in zip(sink.messages, sink.arrived_at,
                                                       strict=True)
                           if message["source"] == "canary" and arrived - started > 1.0)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    big_seen = app.metric("ingest_messages_received_total", source="big")
    print(f"{case}: peak RSS {peak:.0f} MiB, canary p99 {p99 * 1000:.0f} ms over "
          f"{len(latencies)} messages, {big_seen:.0f} big frames read")
    assert big_seen and big_seen >= 2  # the big feed was really read
    assert len(latencies) >= 100
    assert peak < 200
    assert p99 < 1.0
    assert app.terminate() == 0
