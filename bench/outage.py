"""How long a sink outage a feed survives: `python -m bench.outage [--spool] [--hold-gb G]`.

Without a spool, while the sink is down the worker waits in write_batch; its feeds are read
(by the standby thread) until their buffers hold INGEST_BATCH_SIZE frames, then no frame is read
and no ping is answered. A feed server that pings with an interval P and a timeout T then drops
us. This runs a feed server with P = T = 2 s (real feeds
often use 20 s / 20 s: scale accordingly), takes the sink away for a range of durations, and
reports whether the feed connection survived, and how many messages the feed had sent that never
arrived. (This test feed pauses while no connection is open, so that count covers only what was
in flight when a connection dropped; a real feed would also lose what it sent meanwhile.)

`--spool`: the same with `INGEST_SPOOL_DIR` set, at 2 000 msg/s, up to a 60 s outage: the feed
is expected never to be dropped, and every message to arrive, in order, once the sink is back.
`--hold-gb G [--message-bytes B]`: spool G GiB of messages of B bytes (8 000) while the sink is
down, then send them: peak RSS, how fast the spool fills and drains, and the disk bytes written
per message. Peak RSS follows the bytes of a batch (INGEST_BATCH_SIZE x B), not the spool's size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from bench.run import memory_kib
from support.servers import Sink, WsServer, feed_handler
from support.service import ROOT, Service, free_port
from support.wait import wait_until

PING_S = 2.0
OUTAGES_S = (1.0, 2.5, 4.0, 6.0)
SPOOL_OUTAGES_S = (1.0, 2.5, 4.0, 6.0, 60.0)


def run(outage: float, spool: str | None = None, interval: float = 0.005) -> dict[str, object]:
    sent: list[int] = []
    sink = Sink()
    feed = WsServer(feed_handler(10**7, name="feed", interval=interval, sent=sent),
                    ping_interval=PING_S, ping_timeout=PING_S, close_timeout=1)
    env = {"INGEST_SOURCES": json.dumps([{"name": "feed", "url": feed.url}]),
           "INGEST_SINK_URL": sink.url, "INGEST_LOG_LEVEL": "warning"}
    if spool:
        env["INGEST_SPOOL_DIR"] = spool
    app = Service(env)
    try:
        app.wait_ready()
        time.sleep(PING_S * 2)
        sink.server.stop()
        time.sleep(outage)
        spooled = app.metric("ingest_spool_messages") if spool else None
        sink.server.start()
        time.sleep(PING_S * 3)
        # Before the feed goes away at the end (that closes the connection too, with 1001).
        disconnects = [e for e in app.logs() if e["event"] == "source_disconnected"]
        feed.stop()
        if spool:  # until the backlog is sent
            wait_until(lambda: app.metric("ingest_spool_messages") == 0, 600, interval=0.5)
        time.sleep(1)
        arrived = {m["data"]["n"] for m in sink.messages}
        seqs = sink.by_source().get("feed", [])
        first_seen = list(dict.fromkeys(seqs))
        connects = app.metric("ingest_source_connects_total", source="feed")
        in_flight_lost = len(set(sent) - arrived)
        result: dict[str, object] = {
            "outage_s": outage, "spool": bool(spool), "feed_reconnected": connects > 1,
            "close": disconnects[0].get("code") if disconnects else None,
            "messages_sent_by_feed": len(sent), "in_flight_lost": in_flight_lost}
        if spool:
            result.update({"spooled_at_end_of_outage": spooled,
                           "in_order_none_missing": first_seen == list(range(1, len(sent) + 1)),
                           "duplicates": len(seqs) - len(first_seen),
                           "peak_rss_mib": round(memory_kib(app.process.pid, "VmHWM") / 1024, 1)})
        return result
    finally:
        app.close()
        sink.close()
        feed.close()


def big_feed(count: int, size: int) -> WsServer:
    """A feed sending `count` JSON messages of about `size` bytes, as fast as they are read."""
    pad = "x" * size

    async def handle(ws: ServerConnection) -> None:
        try:
            for n in range(1, count + 1):
                await ws.send(f'{{"n":{n},"pad":"{pad}"}}')
                if n % 64 == 0:
                    await asyncio.sleep(0)
            await ws.wait_closed()
        except ConnectionClosed:
            pass

    return WsServer(handle)


def write_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/io") as io:
        for line in io:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def hold(gigabytes: float, spool: str, size: int = 8000) -> dict[str, object]:
    """Spool `gigabytes` GiB of `size`-byte messages while the sink is down, then send it all
    (to bench.receiver)."""
    count = int(gigabytes * 2**30 / (size + 100))
    feed = big_feed(count, size)
    sink_port = free_port()
    app = Service({"INGEST_SOURCES": json.dumps([{"name": "big", "url": feed.url}]),
                   "INGEST_SINK_URL": f"ws://127.0.0.1:{sink_port}/",
                   "INGEST_SPOOL_DIR": spool, "INGEST_SPOOL_MAX_BYTES": str(2 * 2**30),
                   "INGEST_LOG_LEVEL": "warning"})
    out = Path(tempfile.mkdtemp(prefix="outage-")) / "receiver.json"
    receiver: subprocess.Popen[bytes] | None = None
    try:
        started = time.monotonic()
        app.wait_ready()  # the sink is down, but the spool takes batches: ready
        wait_until(lambda: (app.metric("ingest_spool_messages") or 0) >= count, 1200,
                   interval=0.5)
        filled = time.monotonic() - started
        spooled_bytes = app.metric("ingest_spool_bytes")
        rss_full = memory_kib(app.process.pid, "VmHWM") / 1024
        disk_filling = write_bytes(app.process.pid)
        db = sum(f.stat().st_size for f in Path(spool).rglob("spool.db*"))
        receiver = subprocess.Popen(
            [sys.executable, "-m", "bench.receiver", "--port", str(sink_port), "--expect",
             str(count), "--out", str(out)], cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started = time.monotonic()
        wait_until(lambda: app.metric("ingest_spool_messages") == 0, 1200, interval=0.5)
        drained = time.monotonic() - started
        receiver.wait(60)
        arrived = json.loads(out.read_text())["count"]
        return {
            "messages": count, "message_bytes": size, "spooled_gib": round(
                (spooled_bytes or 0) / 2**30, 2), "spool_files_gib": round(db / 2**30, 2),
            "fill_s": round(filled, 1), "fill_mb_per_s": round((spooled_bytes or 0) / filled / 1e6),
            "drain_s": round(drained, 1), "drain_msg_per_s": round(count / drained),
            "arrived": arrived, "peak_rss_mib_spool_full": round(rss_full, 1),
            "peak_rss_mib_after_drain": round(memory_kib(app.process.pid, "VmHWM") / 1024, 1),
            "disk_bytes_written_per_message_filling": round(disk_filling / count),
            "disk_bytes_written_per_message_total": round(
                write_bytes(app.process.pid) / count),
        }
    finally:
        app.close()
        feed.close()
        if receiver is not None and receiver.poll() is None:
            receiver.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spool", action="store_true", help="with INGEST_SPOOL_DIR set")
    parser.add_argument("--outages", help="comma-separated outage lengths in seconds")
    parser.add_argument("--hold-gb", type=float, help="hold this many GiB in the spool instead")
    parser.add_argument("--message-bytes", type=int, default=8000,
                        help="with --hold-gb: size of each message")
    args = parser.parse_args()
    if args.hold_gb:
        with tempfile.TemporaryDirectory(prefix="spool-") as spool:
            print(json.dumps(hold(args.hold_gb, spool, args.message_bytes)), flush=True)
        return
    default = SPOOL_OUTAGES_S if args.spool else OUTAGES_S
    outages = [float(s) for s in args.outages.split(",")] if args.outages else default
    rate = 2000 if args.spool else 200
    print(f"feed server pings every {PING_S} s with a {PING_S} s timeout; "
          f"feed at {rate} msg/s; spool {'on' if args.spool else 'off'}")
    for outage in outages:
        with tempfile.TemporaryDirectory(prefix="spool-") as spool:
            print(json.dumps(run(outage, spool if args.spool else None, 1 / rate)), flush=True)


if __name__ == "__main__":
    main()
