"""WebSocket connection helpers shared by the source and the sink."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

CLOSE_TIMEOUT_S = 2.0


@asynccontextmanager
async def open_connection(url: str, **options: object) -> AsyncIterator[ClientConnection]:
    """`websockets.connect`, but a cancelled body (a deliberate stop) closes with 1000.

    websockets closes with 1011 (internal error) whenever the body raises, cancellation included.
    """
    async with connect(url, close_timeout=CLOSE_TIMEOUT_S, **options) as ws:  # type: ignore[arg-type]
        try:
            yield ws
        except asyncio.CancelledError:
            await ws.close(code=1000)
            raise


def describe_close(exc: BaseException) -> dict[str, object]:
    """Log fields for why a connection ended: close code and reason, HTTP status, or error."""
    if isinstance(exc, ConnectionClosed):
        frame = exc.rcvd or exc.sent
        return {"code": frame.code if frame else 1006, "reason": frame.reason if frame else ""}
    if isinstance(exc, InvalidStatus):
        return {"http_status": exc.response.status_code}
    return {"error": repr(exc)}
