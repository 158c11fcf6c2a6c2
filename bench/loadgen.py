"""Benchmark load generator: a WebSocket feed server, run as its own process.

    python -m bench.loadgen --port P --count N [--rate R]

Each connection gets `count` messages of ~200 bytes of ticker JSON carrying their send time
(`ts`, Unix seconds). `--rate 0` sends as fast as the reader takes them: frames are built up
front and written straight to the transport in large chunks, so the generator itself is not
what limits the measured throughput. With a rate, each message is stamped when it is sent.
A connection's path may override both: `/idle7?count=0` stays silent, `/f3?rate=10&count=200`
sends 200 messages at 10 per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import struct
import time
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve

HIGH_WATER = 4 * 1024 * 1024


def message(seq: int, ts: float) -> bytes:
    return (
        b'{"type":"ticker","sequence":%d,"product_id":"BTC-USD","price":"97012.34",'
        b'"open_24h":"95000.00","volume_24h":"12345.67890123","best_bid":"97012.33",'
        b'"best_ask":"97012.35","side":"buy","trade_id":%d,"ts":%.6f}' % (seq, 9_000_000 + seq, ts)
    )


def text_frame(payload: bytes) -> bytes:
    """An unmasked server-to-client text frame (RFC 6455, 5.2)."""
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x81, n) + payload
    return struct.pack("!BBH", 0x81, 126, n) + payload


async def flood(ws: ServerConnection, count: int) -> None:
    transport = ws.transport
    chunk = 2000
    for start in range(1, count + 1, chunk):
        now = time.time()
        transport.write(b"".join(text_frame(message(seq, now))
                                 for seq in range(start, min(count, start + chunk - 1) + 1)))
        while transport.get_write_buffer_size() > HIGH_WATER:
            await asyncio.sleep(0.0005)


async def paced(ws: ServerConnection, count: int, rate: float) -> None:
    # Many paced connections start at once: spread their phases over one interval.
    await asyncio.sleep(random.random() / rate)
    started = time.monotonic()
    for seq in range(1, count + 1):
        ahead = started + seq / rate - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)
        await ws.send(message(seq, time.time()).decode())


async def main(port: int, count: int, rate: float, start_file: str | None) -> None:
    async def handle(ws: ServerConnection) -> None:
        query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
        n = int(query.get("count", [count])[0])
        per_s = float(query.get("rate", [rate])[0])
        # The benchmark starts the clock (and the relay's CPU count) before it creates this.
        while n and start_file and not os.path.exists(start_file):
            await asyncio.sleep(0.01)
        if n:
            await (paced(ws, n, per_s) if per_s else flood(ws, n))
        await ws.wait_closed()

    async with serve(handle, "127.0.0.1", port, max_queue=None) as server:
        print(json.dumps({"event": "loadgen_listening", "port": port}), flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--start-file", help="send nothing until this file exists")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.count, args.rate, args.start_file))
