"""The baseline: a plain asyncio relay, no Bytewax, in its own process.

    python -m bench.baseline --sink ws://... --source ws://... [--source ws://... ...]

websockets clients, one per feed, in one event loop -> the same JSON parse (orjson, bytes
straight from the socket) and envelope -> one websockets client to the sink, one message at a
time: what a careful hand-written relay does.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.envelope import format_timestamp


async def read(source: str, name: str, out: ClientConnection) -> None:
    try:
        async with connect(source, max_size=None) as feed:
            seq = 0
            while True:
                payload = await feed.recv(decode=False)
                seq += 1
                envelope = {"source": name, "seq": seq,
                            "received_at": format_timestamp(time.time()),
                            "data": orjson.loads(payload)}
                await out.send(orjson.dumps(envelope), text=True)
    except ConnectionClosed:
        pass  # the end of a run


async def relay(sources: list[str], sink: str) -> None:
    async with connect(sink) as out:
        await asyncio.gather(*(read(url, f"feed{i}", out) for i, url in enumerate(sources)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", action="append", required=True)
    parser.add_argument("--sink", required=True)
    args = parser.parse_args()
    asyncio.run(relay(args.source, args.sink))
