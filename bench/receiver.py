"""Benchmark receiver: counts envelopes and their end-to-end latency, as its own process.

    python -m bench.receiver --port P --expect N --out results.json [--latency]

Exits after `expect` envelopes (or 120 s) and writes: first/last arrival times, count, and with
`--latency` the per-message latency from the `ts` in each payload to its arrival.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, serve

DEADLINE_S = 120


async def main(port: int, expect: int, out: str, latency: bool) -> None:
    done = asyncio.Event()
    state: dict[str, Any] = {"count": 0, "first": None, "last": None}
    latencies: list[float] = []

    async def handle(ws: ServerConnection) -> None:
        async for frame in ws:
            now = time.time()
            if state["first"] is None:
                state["first"] = now
            if latency:
                latencies.append(now - orjson.loads(frame)["data"]["ts"])
            state["count"] += 1
            if state["count"] == expect:
                state["last"] = now
                done.set()

    async with serve(handle, "127.0.0.1", port, max_queue=None, max_size=None):
        print(json.dumps({"event": "receiver_listening", "port": port}), flush=True)
        try:
            await asyncio.wait_for(done.wait(), DEADLINE_S)
        except asyncio.TimeoutError:
            state["last"] = time.time()
    with open(out, "w") as f:
        json.dump({**state, "latencies": latencies}, f)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--latency", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.expect, args.out, args.latency))
