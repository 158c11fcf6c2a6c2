"""Plumbing shared by the Deribit, Coinbase, Kraken and Crypto.com simulations (venue set B).

Owns what is not venue protocol beyond `_sim.VenueServer` (server, loop thread, path check,
counters, dropping a connection): JSON frames out, and background tasks tied to one connection.
Each venue module owns only its protocol, in `session()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Coroutine
from datetime import datetime, timezone
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from tests.venues._sim import VenueServer


def iso_now() -> str:
    """The current time as RFC 3339 UTC with microseconds, e.g. 2026-11-26T06:13:50.123456Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class VenueSimulation(VenueServer):
    """A venue whose subclasses serve one connection in `session`."""

    async def handle(self, ws: ServerConnection) -> None:
        await self.session(ws)

    async def session(self, ws: ServerConnection) -> None:
        raise NotImplementedError

    async def send(self, ws: ServerConnection, message: dict[str, Any]) -> None:
        await ws.send(json.dumps(message, separators=(",", ":")))

    async def drop(self, ws: ServerConnection, why: str, code: int = 1000,
                   reason: str = "") -> None:
        """As `VenueServer.drop`, the reason given in the close frame being `why`."""
        await super().drop(ws, why, code, reason or why)


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

