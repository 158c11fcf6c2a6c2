"""WebSocket connection helpers shared by the source and the sink."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypeVar

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.backoff import RESET_AFTER_S, backoff
from app.logs import RateLimiter

CLOSE_TIMEOUT_S = 2.0
C = TypeVar("C", bound=ClientConnection)


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


class BatchingConnection(ClientConnection):
    """A client connection that can write a whole batch of messages with one system call.

    `send()` hands each frame to the socket on its own (one write per message: a fifth of the
    service's CPU at saturation, by profile). `send_texts()` queues the batch in the Sans-I/O
    protocol, then `send_data()` passes everything queued to the transport at once.
    """

    async def send_texts(self, messages: list[bytes]) -> None:
        """Send each item (UTF-8 bytes) as a text message, in order."""
        async with self.send_context():
            for message in messages:
                self.protocol.send_text(message)

    def send_data(self) -> None:
        # As websockets' own send_data, but with one writelines() for all queued data.
        chunks = self.protocol.data_to_send()
        data = [chunk for chunk in chunks if chunk]
        if data:
            self.transport.writelines(data)
        if len(data) < len(chunks):  # an empty chunk asks for the end of the TCP stream
            if self.transport.can_write_eof():
                with contextlib.suppress(Exception):
                    self.transport.write_eof()
            else:
                self.transport.close()


async def reconnect_forever(
    connect: Callable[[], AbstractAsyncContextManager[C]],
    session: Callable[[C], Awaitable[None]],
    *,
    on_down: Callable[[], None],
    on_error: Callable[[Exception], None] = lambda exc: None,
    min_s: float,
    max_s: float,
    log: structlog.typing.FilteringBoundLogger,
    event_prefix: str,
) -> None:
    """Run `session` on a connection; whenever it ends, reconnect after a backoff delay.

    Only cancellation ends this (closing the connection with 1000): an exception escaping a
    source's generator would end its partition for good. Logs `<prefix>_disconnected` when an
    open connection ends, `<prefix>_connect_failed` (rate-limited) when none could be opened.
    """
    delays = backoff(min_s, max_s)
    quiet = RateLimiter()
    while True:
        opened_at = None
        try:
            async with connect() as ws:
                opened_at = time.monotonic()
                await session(ws)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure is a reason to reconnect, never to end
            on_error(exc)
            fields = describe_close(exc)
            if opened_at is not None:
                log.warning(f"{event_prefix}_disconnected", **fields)
            elif (suppressed := quiet.allow(repr(fields))) is not None:
                log.warning(f"{event_prefix}_connect_failed", suppressed=suppressed, **fields)
        finally:
            on_down()
        if opened_at is not None and time.monotonic() - opened_at >= RESET_AFTER_S:
            delays = backoff(min_s, max_s)
        await asyncio.sleep(next(delays))


def describe_close(exc: BaseException) -> dict[str, object]:
    """Log fields for why a connection ended: close code and reason, HTTP status, or error."""
    if isinstance(exc, ConnectionClosed):
        frame = exc.rcvd or exc.sent
        return {"code": frame.code if frame else 1006, "reason": frame.reason if frame else ""}
    if isinstance(exc, InvalidStatus):
        return {"http_status": exc.response.status_code}
    return {"error": repr(exc)}
