"""A demo receiver for the service's output: `python -m app.demo.receiver`.

Accepts envelopes on a WebSocket (`ws://receiver:8766`), logs a one-line summary every few
seconds (rate, last seq per feed, gaps), and answers `GET /counts` (JSON) and `GET /healthz`
on the same port, so tests and operators can read what arrived. It acknowledges what it
processed (`{"ack": n}`), so the service can run with INGEST_SINK_CONFIRM=ack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response


class Tally:
    """What arrived, per feed: count, last seq, and gaps in seq (pure)."""

    def __init__(self) -> None:
        self.messages = 0
        self.invalid = 0
        self.sources: dict[str, dict[str, int]] = {}
        self.last: dict[str, Any] | None = None

    def add(self, frame: str | bytes) -> None:
        try:
            decoded = json.loads(frame)
        except ValueError:
            self.invalid += 1
            return
        for envelope in decoded if isinstance(decoded, list) else [decoded]:
            if not isinstance(envelope, dict) or "source" not in envelope or "seq" not in envelope:
                self.invalid += 1
                continue
            self.messages += 1
            self.last = envelope
            source = self.sources.setdefault(
                envelope["source"], {"count": 0, "last_seq": 0, "gaps": 0, "repeats": 0})
            source["count"] += 1
            seq = envelope["seq"]
            if seq > source["last_seq"] + 1 and source["last_seq"]:
                source["gaps"] += seq - source["last_seq"] - 1
            elif seq <= source["last_seq"]:
                source["repeats"] += 1
            source["last_seq"] = max(seq, source["last_seq"])

    def counts(self) -> dict[str, Any]:
        return {"messages": self.messages, "invalid": self.invalid, "sources": self.sources,
                "last": self.last}


def http_reply(tally: Tally, connection: ServerConnection, request: Request) -> Response | None:
    """Plain HTTP on the WebSocket port: /counts and /healthz; anything else is a WebSocket."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return None
    if request.path == "/healthz":
        body = b'{"ok": true}\n'
    elif request.path == "/counts":
        body = json.dumps(tally.counts()).encode() + b"\n"
    else:
        return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
    headers = Headers({"Content-Type": "application/json", "Content-Length": str(len(body))})
    return Response(HTTPStatus.OK, "OK", headers, body)


class Acknowledger:
    """Speaks INGEST_SINK_CONFIRM=ack: after processing frames, send `{"ack": n}`, n being the
    number of frames (WebSocket messages) processed on this connection so far. Frames processed
    in one turn of the event loop share one ack."""

    def __init__(self, ws: ServerConnection) -> None:
        self._ws = ws
        self._processed = 0
        self._scheduled = False

    def processed(self) -> None:
        self._processed += 1
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        self._scheduled = False
        asyncio.get_running_loop().create_task(self._ack(self._processed))

    async def _ack(self, count: int) -> None:
        with contextlib.suppress(ConnectionClosed):  # the service resends what has no ack
            await self._ws.send(json.dumps({"ack": count}))


async def receive(ws: ServerConnection, tally: Tally) -> None:
    acks = Acknowledger(ws)
    try:
        async for frame in ws:
            tally.add(frame)
            acks.processed()
    except ConnectionClosed:
        pass


async def report(tally: Tally, every: float) -> None:
    before, then = tally.messages, time.monotonic()
    while True:
        await asyncio.sleep(every)
        now = time.monotonic()
        rate = (tally.messages - before) / (now - then)
        before, then = tally.messages, now
        feeds = " ".join(f"{name}:seq={s['last_seq']},gaps={s['gaps']}"
                         for name, s in sorted(tally.sources.items()))
        print(f"receiver: {tally.messages} messages, {rate:.0f}/s | {feeds or 'nothing yet'}",
              flush=True)


async def main(host: str, port: int, every: float) -> None:
    tally = Tally()
    async with serve(lambda ws: receive(ws, tally), host, port,
                     process_request=lambda c, r: http_reply(tally, c, r)):
        print(json.dumps({"event": "demo_receiver_listening", "port": port}), flush=True)
        await report(tally, every)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("DEMO_RECEIVER_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int,
                        default=int(os.environ.get("DEMO_RECEIVER_PORT", 8766)))
    parser.add_argument("--every", type=float, default=5.0, help="seconds between summaries")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    asyncio.run(main(args.host, args.port, args.every))
