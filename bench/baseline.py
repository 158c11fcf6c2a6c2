"""The baseline: a plain asyncio relay, no Bytewax, in its own process.

    python -m bench.baseline --source ws://... --sink ws://...

websockets client -> the same JSON parse (orjson, bytes straight from the socket) and envelope
-> websockets client, one message at a time: what a careful hand-written relay does.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.envelope import format_timestamp


async def relay(source: str, sink: str, name: str) -> None:
    async with connect(sink) as out, connect(source, max_size=None) as feed:
        seq = 0
        try:
            while True:
                payload = await feed.recv(decode=False)
                seq += 1
                envelope = {"source": name, "seq": seq,
                            "received_at": format_timestamp(time.time()),
                            "data": orjson.loads(payload)}
                await out.send(orjson.dumps(envelope), text=True)
        except ConnectionClosed:
            pass  # the end of a run


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    parser.add_argument("--sink", required=True)
    parser.add_argument("--name", default="bench")
    args = parser.parse_args()
    asyncio.run(relay(args.source, args.sink, args.name))
