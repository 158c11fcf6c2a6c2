"""Holding a WebSocket connection, for the source and the sink alike.

Opening (headers, limits, compression), our keepalive, the reconnect loop, and closing with a
code from `websockets.frames.CloseCode`. The loop asks the pure `retry` module how long to wait
and what a failed attempt was. Everything here runs inside the event loop that owns the
connection: a feed partition's loop (source) or a sink partition's thread (sink).

`BatchingConnection` relies on three websockets internals (`send_context`, `protocol.send_text`,
`protocol.data_to_send`); the versions allowed in pyproject.toml are the ones tested, and
tests/test_net.py fails loudly if those internals change.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import CloseCode

from app.logs import RateLimiter
from app.retry import RESET_AFTER_S, Backoff, Failure, classify_failure

CLOSE_TIMEOUT_S = 2.0
STOP_CLOSE_TIMEOUT_S = 1.0
"""On a deliberate stop, the longest wait for a peer to finish the closing handshake: a feed that
floods a socket we no longer read cannot get its close frame to us, and a process must exit
within INGEST_SHUTDOWN_TIMEOUT_MS + 2 s whatever its peers do."""
MIN_CLOSE_S = 0.05
"""Even past a deadline, time to hand the close frame to the socket before aborting."""
C = TypeVar("C", bound=ClientConnection)
Logger = structlog.typing.FilteringBoundLogger


@dataclass(frozen=True)
class Endpoint:
    """Where and how to open one connection."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    subprotocols: tuple[str, ...] = ()
    open_timeout: float = 10.0
    max_size: int | None = 1_048_576
    compression: bool = True


@asynccontextmanager
async def open_connection(
    endpoint: Endpoint, connection_class: type[C], *, ping_interval: float | None = None,
    ping_timeout: float | None = None,
    stop_close_timeout: Callable[[], float] = lambda: STOP_CLOSE_TIMEOUT_S,
) -> AsyncIterator[C]:
    """`websockets.connect`, but a cancelled body (a deliberate stop) closes with 1000, waiting
    at most `stop_close_timeout()` seconds for the closing handshake.

    websockets closes with 1011 (internal error) whenever the body raises, cancellation included.
    """
    options: dict[str, Any] = {}
    if endpoint.subprotocols:
        options["subprotocols"] = list(endpoint.subprotocols)
    async with connect(
        endpoint.url, additional_headers=endpoint.headers, open_timeout=endpoint.open_timeout,
        max_size=endpoint.max_size, compression="deflate" if endpoint.compression else None,
        ping_interval=ping_interval, ping_timeout=ping_timeout, close_timeout=CLOSE_TIMEOUT_S,
        create_connection=connection_class, **options,
    ) as ws:
        try:
            yield cast(C, ws)  # websockets built it with connection_class
        except asyncio.CancelledError:
            await close_within(ws, stop_close_timeout())
            raise


async def close_within(ws: ClientConnection, timeout: float,
                       code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
    """Close with `code`; after `timeout` seconds, abort the TCP connection.

    `ws.close()` alone can wait forever: it first waits for the socket to take the close frame,
    which a peer that stopped reading never allows (close_timeout counts only after that).
    """
    try:
        await asyncio.wait_for(ws.close(code, reason), max(MIN_CLOSE_S, timeout))
    except asyncio.TimeoutError:
        ws.transport.abort()
    except asyncio.CancelledError:  # told to hurry (a stop's deadline): cut off now
        ws.transport.abort()
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


def fail_now(ws: ClientConnection, reason: str) -> None:
    """Fail the connection at once (1011), without waiting for a closing handshake from a peer
    that stopped answering."""
    ws.protocol.fail(CloseCode.INTERNAL_ERROR, reason)
    ws.transport.abort()


async def keepalive(ws: ClientConnection, interval: float, timeout: float, log: Logger) -> None:
    """Ping every `interval`; no pong within `timeout`: fail the connection at once.

    websockets' own keepalive would then wait close_timeout more for a closing handshake, so a
    dead peer would be noticed only after interval + timeout + close_timeout.
    """
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.wait_for(await ws.ping(), timeout)
        except ConnectionClosed:
            return  # the reader sees it too, and reconnects
        except asyncio.TimeoutError:
            log.warning("ping_timeout", ping_timeout_s=timeout)
            fail_now(ws, "keepalive ping timeout")
            return


async def reconnect_forever(
    connect: Callable[[], AbstractAsyncContextManager[C]],
    session: Callable[[C], Awaitable[None]],
    *,
    backoff: Backoff,
    log: Logger,
    event_prefix: str,
    on_down: Callable[[], None],
    on_failure: Callable[[Failure], None] = lambda failure: None,
    on_closed: Callable[[ConnectionClosed], None] = lambda exc: None,
) -> None:
    """Run `session` on a connection; whenever it ends, reconnect after a backoff delay.

    Only cancellation ends this (closing the connection with 1000): an exception escaping a
    source's generator would end its partition for good. Logs `<prefix>_disconnected` when an
    open connection ends, `<prefix>_connect_failed` (rate-limited per kind of failure; at error
    level when retrying alone will not mend it) when none could be opened.
    """
    delays = backoff.delays()
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
            if isinstance(exc, ConnectionClosed):
                on_closed(exc)
            if opened_at is not None:
                log.warning(f"{event_prefix}_disconnected", **describe_close(exc))
            else:
                failure = classify_failure(exc)
                on_failure(failure)
                if (suppressed := quiet.allow(failure.detail)) is not None:
                    emit = log.error if failure.needs_action else log.warning
                    emit(f"{event_prefix}_connect_failed", reason=failure.reason,
                         error=failure.detail, suppressed=suppressed, **_status_of(exc))
        finally:
            on_down()
        if opened_at is not None and time.monotonic() - opened_at >= RESET_AFTER_S:
            delays = backoff.delays()
        await asyncio.sleep(next(delays))


def _status_of(exc: BaseException) -> dict[str, int]:
    return {"http_status": exc.response.status_code} if isinstance(exc, InvalidStatus) else {}


def describe_close(exc: BaseException) -> dict[str, object]:
    """Log fields for why a connection ended: close code and reason, or the error."""
    if isinstance(exc, ConnectionClosed):
        frame = exc.rcvd or exc.sent
        if frame is None:
            return {"code": int(CloseCode.ABNORMAL_CLOSURE), "reason": ""}
        return {"code": int(frame.code), "reason": frame.reason}
    return {"error": repr(exc)}
