"""One feed's connection, inside its partition's event loop: connect, subscribe, read, keep
alive (protocol pings and the venue's own heartbeats), answer the venue, reconnect.

A `FeedReader` numbers every data frame by `seq` (from 1, across reconnects) and keeps the frames
in order until its partition takes them. Control frames (the feed's `heartbeat`, `replies`,
`control`, `subscribe_ack` and `rotate_on` rules, see app/feed/control.py) are answered and
counted, never numbered nor handed over. Memory is bounded per feed: reading stops while
`batch_size` frames or `buffer_bytes` bytes wait (backpressure: the socket's buffers fill and
upstream slows down), and a frame over `max_message_bytes` keeps only its first KiB (for the
dead-letter record). Nothing escapes `run()` but cancellation: every failure is logged, counted
and retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import structlog
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from app.envelope import Frame, Payload, payload_size
from app.errors import IngestError
from app.feed.control import HeartbeatClock, SubscribeTracker, Verdict, describe_frame
from app.feed.hook import Connector
from app.feed.inflate import InflateError, TooLarge, inflate
from app.feed.seqblocks import SeqBlocks
from app.feed.sequence import SequenceTracker
from app.logs import RateLimiter
from app.metrics import FeedMetrics
from app.net import (
    DirectConnection,
    Endpoint,
    fail_now,
    keepalive,
    open_connection,
    proxy_option,
    reconnect_forever,
)
from app.retry import Failure
from app.settings import FeedSettings, SourceOptions, mask_url, reveal
from app.status import ConnectionStatus
from app.tls import client_context, warn_if_unverified

FRAME_LIMIT_FACTOR = 16
"""The WebSocket library's own frame limit, as a multiple of max_message_bytes (memory guard)."""
RECEIVE_QUEUE = 2
"""Frames websockets may hold for us before it stops reading the socket (its default is 16:
16 frames of up to 16 x max_message_bytes each would be the real memory bound)."""
READ_BYTES = 16 * 1024
"""Bytes per socket read: websockets inflates every frame of a read at once, so this bounds
what one read of highly compressed frames can cost (a 16 MiB frame compresses to no less than
~16 KB), and keeps one feed from holding the partition's loop."""
OVERLAP_S = 10.0
"""Longest a rotation's second connection may take to open, subscribe and deliver data."""
KEPT_OF_TOO_LARGE = 1024
"""Bytes kept of a frame over max_message_bytes: the dead-letter record shows no more."""


class SubscribeFailed(IngestError):
    """The venue refused the subscription: the connection is dropped and retried with backoff."""


class FeedReader:
    """Owns one feed's connection; `take()` hands over what it read, in order."""

    def __init__(self, feed: FeedSettings, options: SourceOptions, status: ConnectionStatus,
                 metrics: FeedMetrics, on_data: Callable[[FeedReader], None],
                 log: structlog.typing.FilteringBoundLogger,
                 seq_blocks: SeqBlocks | None = None) -> None:
        self.feed = feed
        self.name = feed.name
        self._options = options
        self._metrics = metrics
        self._on_data = on_data
        self._log = log.bind(source=feed.name, url=mask_url(feed.url))
        self._endpoint = Endpoint(
            url=feed.url, headers=reveal(feed.headers), subprotocols=tuple(feed.subprotocols),
            open_timeout=feed.open_timeout, max_size=FRAME_LIMIT_FACTOR * feed.max_message_bytes,
            max_queue=RECEIVE_QUEUE, read_bytes=READ_BYTES,
            compression=feed.compression == "deflate",
            ssl=client_context(feed.tls), proxy=proxy_option(feed.proxy))
        warn_if_unverified(feed.tls, self._log)
        self._connector = Connector(feed, self._endpoint)
        self._subscribe: list[str] = []  # this attempt's (the connect_hook may change them)
        self._health = status.feed(feed.name, stale_after=feed.ping_interval + feed.ping_timeout)
        metrics.up.set_function(lambda: float(self._health.up(time.monotonic())))
        self._buffer_bytes = max(2 * feed.max_message_bytes, options.buffer_bytes)
        self._rules = feed.control_rules()
        self._sequence = feed.sequence_tracker()
        self._event_time = feed.event_time_reader()
        # bytes for the JSON parser; str/bytes by frame type where binary frames get inflated
        self._decode = (None if options.payload == "text" or feed.decompress != "none"
                        else False)
        # Every frame is data, as bytes: read without recv(), see `_read_direct`. The rest is
        # read with recv() by `_read`; so is a rotating feed (its second connection is).
        self._direct = not (self._rules or self._sequence or self._event_time or feed.heartbeat
                            or self._decode is not False or feed.rotate_after)
        self._paused: ClientConnection | None = None  # its reading paused: our buffer is full
        self._pending: list[Frame] = []
        self._pending_bytes = 0
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._seq_blocks = seq_blocks or SeqBlocks()
        # Numbers above _reserved are reserved (durably, with a spool) before they are used.
        self._seq = self._reserved = self._seq_blocks.resume(feed.name)
        self._last_frame_at = 0.0
        self._quiet = RateLimiter()
        # Make before break: the rotation under way, the switch it made, the connection left.
        self._rotation: _Rotation | None = None
        self._switch: _Switch | None = None
        self._retired: ClientConnection | None = None
        self._catching_up = False
        self._closing: set[asyncio.Task[object]] = set()

    def take(self) -> list[Frame]:
        """The frames read so far (at most batch_size), in order; reading goes on."""
        frames, limit = self._pending, self._options.batch_size
        if len(frames) > limit:  # the rest of a socket read that filled the buffer
            frames, self._pending = frames[:limit], frames[limit:]
            self._pending_bytes = sum(len(frame.payload) for frame in self._pending)
            self._on_data(self)
            return frames
        self._pending, self._pending_bytes = [], 0
        self._has_room.set()
        if self._paused is not None:
            self._paused.transport.resume_reading()
            self._paused = None
        return frames

    async def run(self) -> None:
        """Connect, read and reconnect until cancelled (then close with 1000)."""
        await reconnect_forever(
            self._connect, self._session,
            backoff=self._options.reconnect, log=self._log, event_prefix="source",
            on_down=self._down, on_failure=self._failed, on_closed=self._closed)

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[ClientConnection]:
        attempt = await self._connector.resolve()  # a failed hook is a failed attempt
        self._subscribe = attempt.subscribe
        async with open_connection(
                attempt.endpoint, DirectConnection if self._direct else ClientConnection) as ws:
            yield ws

    def _down(self) -> None:
        self._health.connected = False

    def _failed(self, failure: Failure) -> None:
        self._metrics.connect_failures[failure.reason].inc()

    def _closed(self, exc: ConnectionClosed) -> None:
        if exc.sent and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
            self._metrics.invalid["too_large"].inc()

    async def _session(self, ws: ClientConnection) -> None:
        """Serve this connection, then each one a rotation switched to, until one ends (its
        exception goes to reconnect_forever: a plain reconnect, with backoff)."""
        switched = await self._serve(ws, None)
        while True:
            try:
                following = await self._serve(switched.ws, switched.session)
            finally:
                # Closing it waits for its closing handshake: not on the feed's time.
                self._in_background(switched.opened.__aexit__(None, None, None))
            switched = following

    def _in_background(self, coroutine: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def rotate(self, ws: ClientConnection, reason: Literal["age", "notice"]) -> None:
        """Make before break: open a second connection beside `ws`, switch to it once it
        delivers data (see `_Rotation`). A rotation already under way is not started again."""
        if self._rotation is None and self._retired is not ws:
            self._rotation = _Rotation(self, ws, reason)

    async def _rotate_when_old(self, ws: ClientConnection) -> None:
        await asyncio.sleep(self.feed.rotate_after)
        self.rotate(ws, "age")

    def _switched(self, switch: _Switch) -> None:
        """The rotation's second connection delivered data: it is the feed's connection now."""
        self._rotation = None
        self._switch = switch
        self._retired = switch.old
        self._metrics.rotations[switch.reason].inc()

    async def _serve(self, ws: ClientConnection, session: _Session | None) -> _Switch:
        """Read `ws` until it ends (its exception propagates) or a rotation replaced it (the
        new connection is returned). `session` is None for a connection just opened: subscribe
        first."""
        feed = self.feed
        if session is None:
            messages = self._subscribe
            for message in messages:
                await ws.send(message)
            self._metrics.connects.inc()
            self._health.seen()
            self._log.info("source_connected", subscribed=len(messages),
                           subprotocol=ws.subprotocol)
            if self._sequence is not None:
                self._sequence.reset()  # a new connection: a jump is not a gap
            session = _Session(self, ws, len(messages))
        loop = asyncio.get_running_loop()
        helpers = [loop.create_task(keepalive(
            ws, feed.ping_interval, feed.ping_timeout, self._log, on_pong=self._health.seen,
            holding_back=lambda: not self._has_room.is_set()))]
        if feed.idle_timeout:
            helpers.append(loop.create_task(self._watch_idle(ws)))
        if feed.heartbeat is not None or feed.subscribe_ack is not None:
            helpers.append(loop.create_task(session.keep_time()))
        if feed.rotate_after:
            helpers.append(loop.create_task(self._rotate_when_old(ws)))
        if session.subscribed:
            self._health.connected = True
        try:
            if isinstance(ws, DirectConnection):
                await self._read_direct(ws)
            else:
                await self._read(ws, session)
        except (ConnectionClosed, _Retired):
            if self._switch is not None and self._switch.old is ws:
                switched, self._switch = self._switch, None
                self._in_background(_drain(ws))
                return switched
            raise
        finally:
            for helper in helpers:
                helper.cancel()
            if self._rotation is not None and self._rotation.old is ws:
                self._rotation.cancel()  # the first ended before the second took over
                self._rotation = None
        raise AssertionError("unreachable: the read loops only end by raising")

    async def _wait_for_room(self) -> None:
        if len(self._pending) >= self._options.batch_size or (
                self._pending_bytes >= self._buffer_bytes):
            self._has_room.clear()
            await self._has_room.wait()

    def _keep(self, payload: Payload, size: int, received_at: float) -> None:
        """Number a data frame and keep it for the next poll."""
        if size > self.feed.max_message_bytes:  # invalid anyway: keep what a dead letter shows
            payload = payload[:KEPT_OF_TOO_LARGE]
        self._seq += 1
        if self._seq > self._reserved:
            self._reserved = self._seq_blocks.reserve(self.name, self._seq)
        if not self._pending:
            self._on_data(self)
        self._pending.append(Frame(self._seq, received_at, payload, size))
        self._pending_bytes += len(payload)

    async def _read_direct(self, ws: DirectConnection) -> None:
        """A feed whose every frame is data, as bytes (see `_direct`), with no task switch per
        frame: websockets hands each data frame to `keep` as it parses it (see
        `DirectConnection`), and this waits for the connection's end. While the feed's buffer
        is full, the socket is not read."""
        self._last_frame_at = time.time()
        max_frames, max_bytes = self._options.batch_size, self._buffer_bytes
        health, keep = self._health, self._keep

        def hold_back_if_full() -> None:
            if len(self._pending) >= max_frames or self._pending_bytes >= max_bytes:
                self._has_room.clear()
                self._paused = ws
                ws.transport.pause_reading()

        def on_message(payload: bytes) -> None:
            self._last_frame_at = received_at = time.time()
            health.alive_at = time.monotonic()
            keep(payload, len(payload), received_at)
            if self._paused is None:
                hold_back_if_full()

        hold_back_if_full()
        ws.deliver_to(on_message)
        try:
            await ws.wait_closed()
        finally:
            if self._paused is ws:
                self._paused = None  # the next connection is paused anew if still full
        raise ws.protocol.close_exc

    async def _read(self, ws: ClientConnection, session: _Session) -> None:
        """Frames read with recv(), through the feed's rules if it has any: inflate, classify,
        answer control, track data (feeds with none but text payloads or rotation read here
        too; the rest in `_read_direct`). The loop is written out, no helper per frame where a
        feed does not need it: it runs for every frame."""
        recv, decode, health, keep = ws.recv, self._decode, self._health, self._keep
        classify = self._rules.classify if self._rules else None
        inflating = self.feed.decompress != "none"
        tracked = bool(self._sequence or self._event_time)
        clock = session.clock
        self._last_frame_at = time.time()
        while True:
            await self._wait_for_room()
            payload = await recv(decode)
            if self._retired is ws:
                raise _Retired
            self._last_frame_at = received_at = time.time()
            health.alive_at = now = time.monotonic()
            if inflating:
                payload, size, verdict = self._inspect(payload)
            else:
                verdict = classify(payload) if classify is not None else None
                size = 0 if verdict is not None else payload_size(payload)
            if verdict is not None:
                await session.on_control(verdict, payload, now)
                continue
            if clock is not None:
                clock.received(now)
            if tracked:
                self._take_data(payload, size, received_at)
            else:
                keep(payload, size, received_at)

    def _inspect(self, payload: Payload) -> tuple[Payload, int, Verdict | None]:
        """Inflate (if the feed says so) and classify a frame: (payload, size, verdict); a
        verdict means a control frame, and a size over max_message_bytes a frame too large."""
        feed = self.feed
        if isinstance(payload, bytes) and feed.decompress != "none":
            try:
                payload = inflate(payload, feed.decompress, feed.max_message_bytes)
            except TooLarge:
                # how far it got: never inflated past
                return payload, feed.max_message_bytes + 1, None
            except InflateError:
                pass  # left as received: the envelope step counts it as `decode`
        verdict = self._rules.classify(payload) if self._rules else None
        return payload, payload_size(payload), verdict

    def _take_data(self, payload: Payload, size: int, received_at: float) -> None:
        """A data frame: track its sequence and event time, then keep it (or, just after a
        rotation, drop it if the connection before already forwarded its number)."""
        tracked = self._sequence or self._event_time
        if tracked and size <= self.feed.max_message_bytes and not self._track(
                payload, received_at):
            return
        self._keep(payload, size, received_at)

    def _track(self, payload: Payload, received_at: float) -> bool:
        """The venue's sequence (gaps) and event time (lag) of a data frame; False for a frame
        to drop: a number already forwarded, while a rotated connection catches up."""
        try:
            frame = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return True  # invalid: the envelope step counts it
        if self._sequence is not None and self._catching_up:
            if not self._sequence.is_new(frame):
                return False
            self._catching_up = False
        if self._event_time is not None:
            event_time = self._event_time.seconds(frame)
            if event_time is not None:
                self._metrics.upstream_lag.observe(max(0.0, received_at - event_time))
        if self._sequence is not None:
            step = self._sequence.observe(frame)
            if step is None or step.kind in ("first", "in_order"):
                return True
            if step.kind == "gap":
                self._metrics.upstream_gaps.inc()
                self._metrics.upstream_missing.inc(step.missing)
            if (suppressed := self._quiet.allow(("sequence", step.kind))) is not None:
                self._log.warning(f"upstream_{step.kind}", scope=step.scope,
                                  expected=step.expected, received=step.received,
                                  suppressed=suppressed)
        return True

    async def _watch_idle(self, ws: ClientConnection) -> None:
        idle = self.feed.idle_timeout
        while True:
            await asyncio.sleep(max(0.0, self._last_frame_at + idle - time.time()))
            # After a stall of the worker, frames may wait in the socket's buffer: let the
            # reader take them before judging the feed idle.
            for _ in range(3):
                await asyncio.sleep(0)
            if time.time() - self._last_frame_at >= idle:
                self._log.warning("source_idle", idle_timeout_s=idle)
                await ws.close(CloseCode.NORMAL_CLOSURE, "idle timeout")
                return


class _Retired(IngestError):
    """Raised in a connection's read loop once a rotation replaced it."""


@dataclass
class _Switch:
    """A rotation's outcome: the connection switched to, and the one it replaced."""

    old: ClientConnection
    ws: ClientConnection
    opened: AbstractAsyncContextManager[ClientConnection]
    session: _Session
    reason: Literal["age", "notice"]


class _Rotation:
    """Make before break, for one feed: a second connection is opened and subscribed (and
    acknowledged, with subscribe_ack) while the first still delivers; the first is closed with
    1000 once the second delivers data.

    Without `sequence`, the switch is the second connection's first data frame: what the first
    would have delivered after it is not forwarded, and what the second delivered before it
    (nothing: it is its first) cannot repeat; frames the two sent in different order around
    that instant may be missed or repeated. With `sequence`, the second's data frames wait
    until the first has forwarded a number at or just before theirs (the two overlap, per
    scope), then only numbers not yet forwarded are kept: each upstream number once, `seq`
    continuous. A second connection that cannot be opened, subscribed, or does not deliver
    within OVERLAP_S leaves the first as it is (logged `source_rotation_failed`); when the
    first ends, the feed reconnects as usual.
    """

    def __init__(self, reader: FeedReader, old: ClientConnection,
                 reason: Literal["age", "notice"]) -> None:
        self._reader, self.old, self._reason = reader, old, reason
        self._log = reader._log.bind(rotation=reason)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def cancel(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        reader = self._reader
        self._log.info("source_rotating")
        opened: AbstractAsyncContextManager[ClientConnection] | None = None
        try:
            attempt = await reader._connector.resolve()
            opened = open_connection(attempt.endpoint, ClientConnection)
            ws = await opened.__aenter__()
            for message in attempt.subscribe:
                await ws.send(message)
            session = _Session(reader, ws, len(attempt.subscribe))
            frames = await self._overlap(ws, session, time.monotonic() + OVERLAP_S)
        except Exception as exc:  # the first connection goes on; a reconnect follows its end
            self._log.warning("source_rotation_failed", error=repr(exc))
            reader._rotation = None
            if opened is not None:
                await opened.__aexit__(None, None, None)
            return
        reader._switched(_Switch(self.old, ws, opened, session, self._reason))
        if reader._sequence is not None:
            reader._catching_up = True  # the second may still trail: drop what was forwarded
        for payload, size, received_at in frames:
            reader._take_data(payload, size, received_at)
        self._log.info("source_rotated", handed_over=len(frames))
        # The first's read loop stops at its next frame, or at this close, and drains it.
        await self.old.close(CloseCode.NORMAL_CLOSURE, "rotated to a new connection")

    async def _overlap(self, ws: ClientConnection, session: _Session,
                       deadline: float) -> list[tuple[Payload, int, float]]:
        """Read the second connection until it is time to switch; its data frames so far.
        TimeoutError if it delivered none by the deadline."""
        reader = self._reader
        sequence = reader._sequence
        waiting: list[tuple[Payload, int, float]] = []
        first: dict[object, int] = {}  # per scope, the second's first number
        while True:
            try:
                payload = await asyncio.wait_for(ws.recv(reader._decode),
                                                 max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                if waiting and session.subscribed:
                    return waiting  # the first never caught up: switch, the gap is counted
                raise
            received_at = time.time()
            payload, size, verdict = reader._inspect(payload)
            if verdict is not None:
                if verdict.kind != "notice":
                    await session.on_control(verdict, payload, time.monotonic())
                continue
            waiting.append((payload, size, received_at))
            if sequence is None or not session.subscribed:
                if sequence is None:
                    return waiting  # its first data frame: switch now
                continue
            scope, number = _position(sequence, payload)
            if number is None:
                return waiting
            first.setdefault(scope, number)
            if all(_reached(sequence.last(s), n) for s, n in first.items()):
                return waiting  # the first has forwarded up to where the second begins
            if len(waiting) >= reader._options.batch_size:
                return waiting  # the first lags too far behind: switch, the gap is counted


async def _drain(ws: ClientConnection) -> None:
    """Read (and drop) what a retired connection still receives until it is closed: websockets
    stops reading the socket when its queue is full, which would leave the peer's closing frame
    unread until the close timeout."""
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass


def _reached(last: int | None, number: int) -> bool:
    """Whether the first connection forwarded up to just before `number` (or nothing in that
    scope: nothing to overlap with)."""
    return last is None or last >= number - 1


def _position(sequence: SequenceTracker, payload: Payload) -> tuple[object, int | None]:
    """(scope, number) of a frame for the sequence tracker; (None, None) if it has none."""
    try:
        return sequence.position(orjson.loads(payload))
    except orjson.JSONDecodeError:
        return None, None


class _Session:
    """What one connection of a feed with venue rules keeps: its heartbeat clock, its
    subscription round, and how to answer control frames."""

    def __init__(self, reader: FeedReader, ws: ClientConnection, subscribed: int) -> None:
        feed = reader.feed
        now = time.monotonic()
        self._reader, self._ws, self._log = reader, ws, reader._log
        self._control = reader._metrics.control
        heartbeat = feed.heartbeat
        self._heartbeat = heartbeat.message() if heartbeat else None
        self.clock = (HeartbeatClock(heartbeat.interval, heartbeat.timeout, now,
                                     any_frame_is_reply=heartbeat.expect is None)
                      if heartbeat else None)
        ack = feed.subscribe_ack
        self.tracker = SubscribeTracker(subscribed, ack.timeout, now) if ack else None

    @property
    def subscribed(self) -> bool:
        return self.tracker is None or self.tracker.state == "done"

    async def on_control(self, verdict: Verdict, payload: Payload, now: float) -> None:
        kind = verdict.kind
        self._control["ack" if kind == "ack_error" else kind].inc()
        if self.clock is not None:
            self.clock.received(now)
            if kind == "heartbeat":
                self.clock.replied(now)
        if verdict.answer is not None:
            await self._ws.send(verdict.answer)
        elif kind in ("ack", "ack_error") and self.tracker is not None:
            state = (self.tracker.acked() if kind == "ack" else self.tracker.refused(payload))
            self._subscription(state)
        elif kind == "notice":
            self._log.info("source_notice", frame=describe_frame(payload))
            self._reader.rotate(self._ws, "notice")

    def _subscription(self, state: str) -> None:
        reader = self._reader
        if state == "done" and not reader._health.connected:
            reader._health.connected = True
            self._log.info("source_subscribed")
        elif state == "failed" and self.tracker is not None:
            self._failed()
            raise SubscribeFailed(self.tracker.failure)

    def _failed(self) -> None:
        assert self.tracker is not None
        self._log.error("source_subscribe_failed", error=self.tracker.failure)
        self._reader._metrics.subscribe_failures.inc()
        self._reader._health.connected = False

    async def keep_time(self) -> None:
        """Send heartbeats when due; fail the connection when the venue stops answering them or
        leaves the subscription unacknowledged."""
        while True:
            now = time.monotonic()
            tracker = self.tracker
            if tracker is not None and tracker.state == "pending" and (
                    tracker.check(now) == "failed"):
                self._failed()
                await self._ws.close(CloseCode.NORMAL_CLOSURE, "subscription failed")
                return
            if self.clock is not None:
                if self.clock.dead(now):
                    self._log.warning("source_heartbeat_timeout",
                                      timeout_s=self.clock.timeout)
                    fail_now(self._ws, "heartbeat timeout")
                    return
                if self.clock.due(now) and self._heartbeat is not None:
                    await self._ws.send(self._heartbeat)
                    self.clock.sent(now)
            await asyncio.sleep(max(0.0, self._next_wake() - time.monotonic()))

    def _next_wake(self) -> float:
        wakes = []
        if self.clock is not None:
            wakes.append(self.clock.wake_at())
        if self.tracker is not None and self.tracker.state == "pending":
            wakes.append(self.tracker.deadline)
        return min(wakes) if wakes else time.monotonic() + 3600

