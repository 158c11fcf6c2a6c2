"""A feed that sends one large, compressible JSON message over and over, as fast as the reader
takes it, in a process of its own (compressing megabytes per message would starve the test
process's other threads): `python -m support.flood --port P --bytes N [--seconds S]`.

Prints `{"event": "flood_listening", "port": ...}` once listening; stops after `--seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


async def main(port: int, size: int, seconds: float) -> None:
    payload = json.dumps({"blob": "x" * size})

    async def handle(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.send(payload)

    async with serve(handle, "127.0.0.1", port, max_size=None, compression="deflate"):
        print(json.dumps({"event": "flood_listening", "port": port}), flush=True)
        await asyncio.sleep(seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bytes", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.bytes, args.seconds))
