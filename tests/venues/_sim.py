"""What every venue simulation shares and none of them is protocol.

A websockets server on 127.0.0.1 (port 0) in a loop thread of its own (`support.servers`), the
handshake's path check (a wrong path gets 404, as from a real venue), the counters the venue-
simulation spec names, and closing a connection for breaking a venue rule. `_sim_a` (OKX, HTX,
Binance, Bybit, KuCoin) and `_sim_b` (Deribit, Coinbase, Kraken, Crypto.com) build on it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, ClassVar
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from support.servers import LoopThread


class VenueServer:
    """A venue on 127.0.0.1:port/PATH; subclasses serve each connection in `handle`."""

    name: ClassVar[str] = ""
    PATH: ClassVar[str] = "/"
    SERVE_OPTIONS: ClassVar[dict[str, Any]] = {}  # more keywords for websockets' serve()

    def __init__(self) -> None:
        self.connections = 0
        self.dropped: list[str] = []
        self.pings_sent = 0
        self.pings_answered = 0
        self.client_heartbeats = 0
        self.data_sent = 0
        self.subscriptions = 0
        self.port = 0
        self._thread: LoopThread | None = None
        self._server: Server | None = None

    def start(self) -> str:
        self._thread = LoopThread()
        self._server = self.call(self._serve())
        self.port = self._server.sockets[0].getsockname()[1]
        return self.url()

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.PATH}"

    def call(self, coroutine: Any, timeout: float = 5) -> Any:
        """Run a coroutine in the simulation's loop and wait for its result."""
        assert self._thread is not None, "start() first"
        return self._thread.call(coroutine, timeout)

    def close(self) -> None:
        thread, server = self._thread, self._server
        self._thread = self._server = None
        if thread is None or server is None:
            return

        async def stop() -> None:
            server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)
            # Whatever is left (a handler stuck on a client that stopped reading, a market
            # clock) ends here.
            left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)

        try:
            with contextlib.suppress(Exception):
                thread.call(stop(), timeout=10)
        finally:
            thread.stop()

    async def _serve(self) -> Server:
        # ping_interval=None: the venues' own heartbeats are what the simulations enforce.
        return await serve(self._handle, "127.0.0.1", 0, process_request=self._check_request,
                           ping_interval=None, **self.SERVE_OPTIONS)

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        problem = self.check_request(request)
        return None if problem is None else connection.respond(*problem)

    def check_request(self, request: Request) -> tuple[int, str] | None:
        """(status, body) to refuse the handshake, as the venue does; None to accept it."""
        if urlsplit(request.path).path != self.PATH:
            return 404, "Not Found\n"
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionClosed):
            await self.handle(ws)

    async def handle(self, ws: ServerConnection) -> None:
        raise NotImplementedError

    async def drop(self, ws: ServerConnection, why: str, code: int = 1000,
                   reason: str = "") -> None:
        """Close a connection that broke a venue rule, recording why."""
        self.dropped.append(why)
        await ws.close(code, reason)
