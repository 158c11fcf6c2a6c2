"""Plumbing shared by the Deribit, Coinbase, Kraken and Crypto.com simulations (venue set B).

Owns what is not venue protocol: the server's own asyncio loop in a thread of its own, the
handshake path check (a wrong path gets 404, as from a real venue), the counters the venue-
simulation spec names, background tasks tied to one connection, and closing a connection for
breaking a venue rule. Each venue module owns only its protocol, in `session()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Coroutine
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any, ClassVar
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response


def iso_now() -> str:
    """The current time as RFC 3339 UTC with microseconds, e.g. 2026-11-26T06:13:50.123456Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class VenueSimulation:
    """A venue on 127.0.0.1:port/PATH; subclasses implement `session` for one connection."""

    name: ClassVar[str] = ""
    PATH: ClassVar[str] = "/"

    def __init__(self) -> None:
        self.connections = 0
        self.dropped: list[str] = []
        self.pings_sent = 0
        self.pings_answered = 0
        self.client_heartbeats = 0
        self.data_sent = 0
        self.subscriptions = 0
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None

    def start(self) -> str:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"sim-{self.name}", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        self._server = asyncio.run_coroutine_threadsafe(self._serve(), loop).result(5)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}{self.PATH}"
        return self.url

    def close(self) -> None:
        loop, server, thread = self._loop, self._server, self._thread
        self._loop = self._server = self._thread = None
        if loop is None or server is None or thread is None:
            return

        async def stop() -> None:
            server.close()
            await server.wait_closed()

        try:
            asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            if not thread.is_alive():
                loop.close()

    async def session(self, ws: ServerConnection) -> None:
        raise NotImplementedError

    async def _serve(self) -> Server:
        # ping_interval=None: none of these venues documents server protocol pings.
        return await serve(self._handle, "127.0.0.1", 0, process_request=self._check_path,
                           ping_interval=None)

    def _check_path(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != self.PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionClosed):
            await self.session(ws)

    async def send(self, ws: ServerConnection, message: dict[str, Any]) -> None:
        await ws.send(json.dumps(message, separators=(",", ":")))

    async def drop(self, ws: ServerConnection, why: str, code: int = 1000) -> None:
        """Close a connection for breaking a venue rule, recording why."""
        self.dropped.append(why)
        await ws.close(code, why)


class Tasks:
    """Background tasks of one connection (data, heartbeats), all cancelled when it ends."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(_quiet(coroutine)))

    async def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _quiet(coroutine: Coroutine[Any, Any, None]) -> None:
    # a closed connection ends the task quietly: the reader sees the close and ends the session
    with contextlib.suppress(ConnectionClosed):
        await coroutine

