"""Holding a WebSocket connection, for the source and the sink alike.

Opening (headers, limits, compression, the TLS context, the proxy), our keepalive, the reconnect
loop, and closing with a code from `websockets.frames.CloseCode`. The loop asks the pure `retry`
module how long to wait and what a failed attempt was. Everything here runs inside the event
loop that owns the connection: a feed partition's loop (source) or a sink partition's thread
(sink).

`BatchingConnection` relies on websockets internals (`send_context`, `protocol.writes`,
`protocol.data_to_send`, the permessage-deflate extension's `encoder`); the versions allowed in
pyproject.toml are the ones tested, and tests/test_net.py fails loudly if those internals
change.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from struct import pack
from types import GeneratorType
from typing import Any, Literal, TypeVar, cast

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidProxyStatus,
    InvalidStatus,
    PayloadTooBig,
    ProtocolError,
)
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import DATA_OPCODES, CloseCode, Frame, Opcode
from websockets.protocol import Event, Protocol, Side, State
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets installed without its C extension
    from websockets.utils import apply_mask

from app.logs import RateLimiter
from app.retry import RESET_AFTER_S, Backoff, Failure, classify_failure, parse_retry_after

CLOSE_TIMEOUT_S = 2.0
STOP_CLOSE_TIMEOUT_S = 1.0
"""On a deliberate stop, the longest wait for a peer to finish the closing handshake: a feed that
floods a socket we no longer read cannot get its close frame to us, and a process must exit
within INGEST_SHUTDOWN_TIMEOUT_MS + 2 s whatever its peers do."""
MIN_CLOSE_S = 0.05
"""Even past a deadline, time to hand the close frame to the socket before aborting."""
DEFLATE = ClientPerMessageDeflateFactory(compress_settings={"level": 1, "memLevel": 5})
"""permessage-deflate as websockets offers it, but compressing at zlib's level 1 instead of 6:
a third less CPU per message sent (a sink write compresses every envelope), frames ~1 % larger
(measured on envelopes of ticker JSON)."""
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
    max_queue: int = 16
    read_bytes: int | None = None
    """Bytes read from the socket at a time (asyncio reads 256 KiB). Every frame in a read is
    parsed, and inflated, at once: a small read bounds how many highly compressed frames one
    read can inflate into memory, and how long one read holds the event loop."""
    compression: bool = True
    ssl: ssl.SSLContext | None = None
    """For wss:// only; None: the system CAs, verification on."""
    proxy: str | Literal[True] | None = True
    """A proxy URL; True: the standard variables (https_proxy, no_proxy, ...); None: direct."""


def proxy_option(setting: str | None) -> str | Literal[True] | None:
    """A feed's `proxy` as websockets takes it: unset -> the standard variables, "none" ->
    direct, else the URL."""
    if setting is None:
        return True
    return None if setting == "none" else setting


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
    if endpoint.ssl is not None and endpoint.url.startswith("wss://"):
        options["ssl"] = endpoint.ssl  # on a ws:// URL, asyncio would speak TLS all the same
    async with connect(
        endpoint.url, additional_headers=endpoint.headers, open_timeout=endpoint.open_timeout,
        max_size=endpoint.max_size, max_queue=endpoint.max_queue,
        compression=None, extensions=[DEFLATE] if endpoint.compression else None,
        ping_interval=ping_interval, ping_timeout=ping_timeout, close_timeout=CLOSE_TIMEOUT_S,
        create_connection=connection_class, proxy=endpoint.proxy, **options,
    ) as ws:
        if endpoint.read_bytes is not None:
            limit_reads(ws.transport, endpoint.read_bytes)
        try:
            yield cast(C, ws)  # websockets built it with connection_class
        except asyncio.CancelledError:
            await close_within(ws, stop_close_timeout())
            raise


def limit_reads(transport: asyncio.BaseTransport, size: int) -> None:
    """Read at most `size` bytes per socket read: asyncio's `max_size` of its selector socket
    transport, or of the SSL protocol behind a TLS transport (tests/test_net.py checks both
    still exist)."""
    ssl_protocol = getattr(transport, "_ssl_protocol", None)
    for owner in (transport, ssl_protocol):
        if owner is not None and hasattr(owner, "max_size"):
            owner.max_size = size


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


def queue_text_frames(protocol: Protocol, messages: list[bytes]) -> bool:
    """Queue each message as a text frame in `protocol`, as its `send_text` would (masked,
    compressed when permessage-deflate was negotiated), and say True; or queue nothing and say
    False where `send_text` must do it (the connection is not open, a fragmented message is
    under way, debug logging, an extension other than permessage-deflate with context
    takeover).

    The same bytes as websockets' per-frame path, without its two `Frame` objects, extension
    loop and buffer per frame, and with one draw of random bytes for every mask key of the
    batch (websockets draws each key from the OS: RFC 6455 wants them unpredictable, and they
    still are). At saturation that path was a sixth of the service's CPU (by profile).
    tests/test_net.py compares the two byte for byte."""
    if (protocol.state is not State.OPEN or protocol.side is not Side.CLIENT
            or protocol.expect_continuation_frame or protocol.debug):
        return False
    encoder = None
    if protocol.extensions:
        (deflate, *others) = protocol.extensions
        if others or not isinstance(deflate, PerMessageDeflate) or (
                deflate.local_no_context_takeover):
            return False
        encoder = deflate.encoder
    keys = os.urandom(4 * len(messages))
    writes = protocol.writes
    for offset, message in zip(range(0, len(keys), 4), messages, strict=True):
        if encoder is None:
            head, data = 0x81, message  # FIN, text
        else:
            # A sync flush ends with 00 00 ff ff, which RFC 7692 strips.
            head, data = 0xC1, (encoder.compress(message) + encoder.flush(zlib.Z_SYNC_FLUSH))[:-4]
        key = keys[offset:offset + 4]
        length = len(data)
        if length < 126:
            header = pack("!BB", head, 0x80 | length)
        elif length < 65536:
            header = pack("!BBH", head, 0x80 | 126, length)
        else:
            header = pack("!BBQ", head, 0x80 | 127, length)
        writes.append(header + key + apply_mask(data, key))
    return True


class BatchingConnection(ClientConnection):
    """A client connection that can write a whole batch of messages with one system call.

    `send()` hands each frame to the socket on its own (one write per message: a fifth of the
    service's CPU at saturation, by profile). `send_texts()` queues the batch's frames in the
    Sans-I/O protocol, and a ping after them when asked, then `send_data()` passes everything
    queued to the transport at once.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pings_sent = 0

    async def send_texts(self, messages: list[bytes],
                         ping: bool = False) -> asyncio.Future[float] | None:
        """Send each item (UTF-8 bytes) as a text message, in order; with `ping`, a ping after
        them in the same write (a separate `ping()` costs another send context and system
        call), whose pong the returned future awaits as `ping()`'s would."""
        pong = None
        async with self.send_context():
            if not queue_text_frames(self.protocol, messages):
                for message in messages:
                    self.protocol.send_text(message)
            if ping:
                pong = self._queue_ping()
        return pong

    def _queue_ping(self) -> asyncio.Future[float]:
        # As websockets' ping() does in its send context: the pending ping's future is
        # completed by acknowledge_pings() or failed when the connection closes (both skip a
        # future already done). tests/test_net.py checks those internals. A counter makes the
        # payload unique; websockets' own pings are 4 random bytes, these 8.
        self._pings_sent += 1
        data = self._pings_sent.to_bytes(8, "big")
        pong: asyncio.Future[float] = self.loop.create_future()
        self.pending_pings[data] = (pong, self.loop.time())
        self.protocol.send_ping(data)
        return pong

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


class DirectConnection(ClientConnection):
    """A client connection that hands every data message to a callback as soon as it is
    received, inside `data_received`, instead of queueing it for `recv()`: no task switch and
    no flow-control bookkeeping per message (together a fifth of a busy feed's CPU, by
    profile). The receiver owns flow control: it pauses the transport's reading when it has
    enough. Messages that came with the handshake's response are kept until `deliver_to`.

    Whole data frames (final, unmasked, text or binary, compressed or not) are split off the
    stream here, and the frame parser of websockets, a generator per frame, is skipped for them
    (a quarter of the CPU of a saturated feed, by profile). Every other frame goes to websockets
    whole, so its parser always starts at a frame's boundary: control frames, fragments (joined
    in `process_event`), and anything it must refuse (too big, masked, bad opcode or bits),
    which it does as always. Inflating uses websockets' own permessage-deflate decoder, and a
    failure closes the connection with the code websockets would use.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._early: list[bytes] = []
        self._on_message: Callable[[bytes], None] = self._early.append
        self._fragments: list[bytes] = []
        self._splitting = False
        self._unsplit = bytearray()  # the start of a frame not yet received whole
        self._response_read = False
        self._response_tail = b""
        self._last_message = b""

    def deliver_to(self, on_message: Callable[[bytes], None]) -> None:
        """From now on, every data message (text as UTF-8 bytes, or binary) goes to
        `on_message`, in order; those that came before go first."""
        early, self._early = self._early, []
        self._on_message = on_message
        for message in early:
            on_message(message)

    def process_event(self, event: Event) -> None:
        if isinstance(event, Frame) and event.opcode in DATA_OPCODES:
            data = bytes(event.data)
            if event.fin and not self._fragments:
                self._on_message(data)
            elif event.fin:
                self._fragments.append(data)
                message, self._fragments = b"".join(self._fragments), []
                self._on_message(message)
            else:
                self._fragments.append(data)
            return
        super().process_event(event)

    def data_received(self, data: bytes) -> None:
        if not self._response_read:
            data = self._after_response(data)
            if not data:
                return
        protocol = self.protocol
        if not (self._splitting or self._may_split()):
            super().data_received(data)
            return
        self._splitting = True
        deflate = protocol.extensions[0] if protocol.extensions else None
        max_size = protocol.max_message_size
        buffer = self._unsplit
        buffer += data
        offset, end = 0, len(buffer)
        try:
            while end - offset >= 2:
                head, second = buffer[offset], buffer[offset + 1]
                length, start = second & 0x7F, offset + 2
                if length == 126:
                    length, start = int.from_bytes(buffer[start:start + 2], "big"), start + 2
                elif length == 127:
                    length, start = int.from_bytes(buffer[start:start + 8], "big"), start + 8
                if start > end:
                    break  # the rest of the header is still to come
                stop = start + length
                if max_size is not None and length > max_size:
                    self._hand_over(buffer, offset, end)  # websockets refuses it by its header
                    return
                if stop > end:
                    break  # the rest of the frame is still to come
                if second & 0x80 or protocol.current_size is not None or not (
                        head in (0x81, 0x82) or (head in (0xC1, 0xC2) and deflate is not None)):
                    # A frame for websockets, whole: control, fragment, any frame while a
                    # message is in fragments, or one it refuses (masked, reserved bits).
                    super().data_received(bytes(buffer[offset:stop]))
                    offset = stop
                    if protocol.state is not State.OPEN:  # closing: websockets takes it all
                        self._hand_over(buffer, offset, end)
                        return
                    continue
                message = bytes(buffer[start:stop])
                if head & 0x40:
                    assert deflate is not None
                    try:
                        message = bytes(deflate.decode(
                            Frame(Opcode(head & 0x0F), message, rsv1=True), max_size=max_size).data)
                    except Exception as exc:
                        self._fail_as_websockets_would(exc)
                        self._hand_over(buffer, stop, end)
                        return
                offset = stop
                self._on_message(message)
                # Held until the next one, as websockets' parser holds its last frame: when a
                # huge message's buffer was freed first, the next one's inflating ran ~40 %
                # slower (15 MiB messages: 41 ms instead of 29; the memory comes back from the
                # OS page by page), and a canary feed beside it waited that much longer.
                self._last_message = message
        finally:
            del buffer[:offset]

    def _after_response(self, data: bytes) -> bytes:
        """Hand websockets the handshake's response up to its blank line, and return what
        follows it (the first frames), so that websockets' frame parser starts with nothing
        buffered: a feed that floods from the start would otherwise keep it mid-frame."""
        seen = self._response_tail + data
        end = seen.find(b"\r\n\r\n")
        if end < 0:
            self._response_tail = seen[-3:]
            super().data_received(data)
            return b""
        self._response_read = True
        cut = end + 4 - len(self._response_tail)
        super().data_received(data[:cut])
        return data[cut:]

    def _may_split(self) -> bool:
        """Whether websockets' parser waits for a new frame with nothing buffered, on an open
        connection, with nothing about it that splitting skips (another extension, a fragment
        size limit, debug logging)."""
        protocol = self.protocol
        if (protocol.state is not State.OPEN
                or protocol.max_fragment_size is not None or protocol.debug
                or protocol.reader.buffer):
            return False
        if protocol.extensions and (len(protocol.extensions) > 1 or not isinstance(
                protocol.extensions[0], PerMessageDeflate)):
            return False
        parser: Any = protocol.parser
        while isinstance(parser.gi_yieldfrom, GeneratorType):  # down to where it waits
            parser = parser.gi_yieldfrom
        return parser.gi_code is StreamReader.at_eof.__code__

    def _hand_over(self, buffer: bytearray, offset: int, end: int) -> None:
        """Stop splitting: websockets gets the rest of the stream (the buffer is emptied)."""
        self._splitting = False
        rest = bytes(buffer[offset:end])
        del buffer[:]
        super().data_received(rest)

    def _fail_as_websockets_would(self, exc: Exception) -> None:
        # As websockets' Protocol.parse does for an error while parsing a frame.
        protocol = self.protocol
        if isinstance(exc, ProtocolError):
            protocol.fail(CloseCode.PROTOCOL_ERROR, str(exc))
        elif isinstance(exc, PayloadTooBig):
            exc.set_current_size(protocol.current_size)
            protocol.fail(CloseCode.MESSAGE_TOO_BIG, str(exc))
        else:
            protocol.logger.error("parser failed", exc_info=True)
            protocol.fail(CloseCode.INTERNAL_ERROR)
        protocol.parser_exc = exc


def fail_now(ws: ClientConnection, reason: str) -> None:
    """Fail the connection at once (1011), without waiting for a closing handshake from a peer
    that stopped answering."""
    ws.protocol.fail(CloseCode.INTERNAL_ERROR, reason)
    ws.transport.abort()


async def keepalive(ws: ClientConnection, interval: float, timeout: float, log: Logger,
                    on_pong: Callable[[], None] = lambda: None,
                    holding_back: Callable[[], bool] = lambda: False) -> None:
    """Ping every `interval`; no pong within `timeout`: fail the connection at once.

    websockets' own keepalive would then wait close_timeout more for a closing handshake, so a
    dead peer would be noticed only after interval + timeout + close_timeout. While
    `holding_back()` (we stopped reading: backpressure), a pong could not be read: no ping is
    sent, and one that went unanswered meanwhile is no failure.
    """
    while True:
        await asyncio.sleep(interval)
        if holding_back():
            continue
        try:
            await asyncio.wait_for(await ws.ping(), timeout)
            on_pong()
        except ConnectionClosed:
            return  # the reader sees it too, and reconnects
        except asyncio.TimeoutError:
            if holding_back():
                continue
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
    level when retrying alone will not mend it) when none could be opened. A handshake refused
    with a `Retry-After` header (429, 503) waits at least that long.
    """
    delays = backoff.delays()
    quiet = RateLimiter()
    while True:
        opened_at = None
        retry_after = 0.0
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
                retry_after = _retry_after(exc)
                if (suppressed := quiet.allow(failure.detail)) is not None:
                    emit = log.error if failure.needs_action else log.warning
                    emit(f"{event_prefix}_connect_failed", reason=failure.reason,
                         error=failure.detail, suppressed=suppressed, **_status_of(exc),
                         **({"retry_after_s": retry_after} if retry_after else {}))
        finally:
            on_down()
        if opened_at is not None and time.monotonic() - opened_at >= RESET_AFTER_S:
            delays = backoff.delays()
        await asyncio.sleep(max(next(delays), retry_after))


def _status_of(exc: BaseException) -> dict[str, int]:
    if isinstance(exc, (InvalidStatus, InvalidProxyStatus)):
        return {"http_status": exc.response.status_code}
    return {}


def _retry_after(exc: BaseException) -> float:
    """Seconds the server asked us to wait before the next attempt (0: it did not ask)."""
    if not isinstance(exc, InvalidStatus):
        return 0.0
    return parse_retry_after(exc.response.headers.get("Retry-After"), time.time()) or 0.0


def describe_close(exc: BaseException) -> dict[str, object]:
    """Log fields for why a connection ended: close code and reason, or the error."""
    if isinstance(exc, ConnectionClosed):
        frame = exc.rcvd or exc.sent
        if frame is None:
            return {"code": int(CloseCode.ABNORMAL_CLOSURE), "reason": ""}
        return {"code": int(frame.code), "reason": frame.reason}
    return {"error": repr(exc)}
