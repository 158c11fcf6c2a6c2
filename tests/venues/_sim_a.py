"""The machinery shared by the OKX, HTX, Binance, Bybit and KuCoin simulations.

Owns what is not venue protocol beyond `_sim.VenueServer` (server, loop thread, path check,
counters): one `Session` per connection (an outbox drained by a sender task), one market clock
that numbers events for every subscriber alike (so two connections of one client see the same
upstream sequence, as on a real venue), and the few helpers the self-tests share (loading
`config/venues/<venue>.env`, waiting on a condition).
Each venue module supplies the protocol: `session()` (its reader, heartbeat rule and watchdogs)
and `frames_for()` (its data frames for one market event).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dotenv import dotenv_values
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection
from websockets.exceptions import ConnectionClosed

from tests.venues._sim import VenueServer

ROOT = Path(__file__).resolve().parents[2]
# Keys of a feed that FeedSettings takes today; the venue keys are being added (CONTRACT.md).
BASE_KEYS = frozenset({"name", "url", "headers", "subscribe", "subprotocols", "ping_interval",
                       "ping_timeout", "open_timeout", "idle_timeout", "max_message_bytes"})
VENUE_KEYS = frozenset({"heartbeat", "replies", "control", "subscribe_ack", "decompress",
                        "compression", "rotate_after", "rotate_on", "sequence", "event_time",
                        "connect_hook", "tls", "proxy"})


@dataclass
class Tick:
    """One market event: its number (consecutive, shared by all subscribers) and time."""

    n: int
    ms: int


@dataclass
class Session:
    """One client connection: what it subscribed to and when it last spoke or was spoken to."""

    ws: ServerConnection
    outbox: asyncio.Queue[tuple[str | bytes, bool]] = field(
        default_factory=lambda: asyncio.Queue(maxsize=10_000))
    topics: list[Any] = field(default_factory=list)
    opened: float = field(default_factory=time.monotonic)
    last_recv: float = field(default_factory=time.monotonic)
    last_sent: float = field(default_factory=time.monotonic)
    state: dict[str, Any] = field(default_factory=dict)


class SimulationBase(VenueServer):
    """Sessions, their senders and the market clock; venues subclass it."""

    RATE: ClassVar[float] = 25.0  # market events per second, each one frame per subscription
    SERVE_OPTIONS: ClassVar[dict[str, Any]] = {"compression": None, "close_timeout": 0.5}

    def __init__(self) -> None:
        super().__init__()
        self.sessions: list[Session] = []
        self._clock: asyncio.Task[None] | None = None  # cancelled by close() with the rest

    async def _serve(self) -> Server:
        self._clock = asyncio.get_running_loop().create_task(self._market())
        return await super()._serve()

    def send_to_all(self, frames: Callable[[Session], list[str | bytes]]) -> None:
        """Queue control frames (notices) on every open connection, from the test thread."""

        async def queue() -> None:
            for session in list(self.sessions):
                for frame in frames(session):
                    session.outbox.put_nowait((frame, False))

        self.call(queue())

    async def handle(self, ws: ServerConnection) -> None:
        session = Session(ws)
        self.sessions.append(session)
        try:
            await self.session(session)
        finally:
            self.sessions.remove(session)

    async def session(self, session: Session) -> None:
        raise NotImplementedError

    async def run(self, session: Session, *tasks: Awaitable[None]) -> None:
        """Run the reader, the sender and the venue's watchdogs until one ends; stop the rest."""
        running = [asyncio.ensure_future(task) for task in (*tasks, self._sender(session))]
        try:
            await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in running:
                task.cancel()
            for task in running:
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await task

    async def _sender(self, session: Session) -> None:
        while True:
            frame, is_data = await session.outbox.get()
            await self.send(session, frame)
            self.data_sent += is_data

    async def send(self, session: Session, frame: str | bytes) -> None:
        await session.ws.send(frame)
        session.last_sent = time.monotonic()

    async def _market(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(1 / self.RATE)
            n += 1
            tick = Tick(n, int(time.time() * 1000))
            for session in list(self.sessions):
                for frame in self.frames_for(session, tick):
                    with contextlib.suppress(asyncio.QueueFull):
                        session.outbox.put_nowait((frame, True))

    def frames_for(self, session: Session, tick: Tick) -> list[str | bytes]:
        """This connection's data frames for one market event ([] if it subscribed to nothing)."""
        raise NotImplementedError


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def loads(message: str | bytes) -> Any:
    """The JSON in a client frame, or None if it is not JSON."""
    try:
        return json.loads(message)
    except ValueError:
        return None


# -- helpers for the self-tests --------------------------------------------------------------


def env_feed(venue: str) -> dict[str, Any]:
    """The one feed of config/venues/<venue>.env, as json.loads reads its INGEST_SOURCES."""
    values = dotenv_values(ROOT / "config" / "venues" / f"{venue}.env")
    assert values.get("INGEST_SINK_URL"), "the env file sets INGEST_SINK_URL"
    feeds = json.loads(values["INGEST_SOURCES"] or "")
    assert isinstance(feeds, list) and len(feeds) == 1
    feed: dict[str, Any] = feeds[0]
    assert set(feed) <= BASE_KEYS | VENUE_KEYS, set(feed) - BASE_KEYS - VENUE_KEYS
    return feed


def _holds(pattern: Any, value: Any) -> bool:
    if pattern == "*":
        return True
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            key in value and _holds(item, value[key]) for key, item in pattern.items())
    return bool(pattern == value)


def matches(match: Any, text: str, value: Any) -> bool:
    """The contract's match: a string equals the text frame; an object is held by the JSON."""
    return text == match if isinstance(match, str) else _holds(match, value)


def control_matches(feed: dict[str, Any]) -> list[Any]:
    """Every match by which the service takes a frame of this feed for control, not data."""
    found = [feed["heartbeat"]["expect"]] if "heartbeat" in feed else []
    found += [reply["when"] for reply in feed.get("replies", [])]
    found += feed.get("control", [])
    if "subscribe_ack" in feed:
        found += [feed["subscribe_ack"]["expect"], feed["subscribe_ack"]["error"]]
    return found + ([feed["rotate_on"]] if "rotate_on" in feed else [])


def _point(value: Any, pointer: str) -> Any:
    for part in pointer.split("/")[1:]:
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


class Client:
    """A plain websockets client that does what the env file tells the service to do.

    It sends the feed's subscribe messages, its `heartbeat` every interval and its `replies`, and
    keeps every frame it receives (inflated as `decompress` says). Switch a part off to break a
    rule; `read=False` stops reading altogether, so even WebSocket pings go unanswered.
    """

    def __init__(self, feed: dict[str, Any], *, subscribe: bool = True, heartbeat: bool = True,
                 answer: bool = True, read: bool = True) -> None:
        self.feed = feed
        self.subscribe, self.heartbeat, self.answer, self.read = subscribe, heartbeat, answer, read
        self.raw: list[str | bytes] = []  # every frame as it arrived
        self.frames: list[tuple[str, Any]] = []  # inflated: (text, JSON value or None)
        self._tasks: list[asyncio.Task[None]] = []
        self.ws: ClientConnection | None = None

    async def __aenter__(self) -> Client:
        self.ws = ws = await connect(self.feed["url"], ping_interval=None, close_timeout=0.5,
                                     max_queue=16 if self.read else 1)
        if self.read:
            self._tasks.append(asyncio.ensure_future(self._read(ws)))
        if self.heartbeat and "heartbeat" in self.feed:
            self._tasks.append(asyncio.ensure_future(self._beat(ws)))
        # The venue may already have closed (a refused token): the reader records its frames.
        with contextlib.suppress(ConnectionClosed):
            for message in self.feed["subscribe"] if self.subscribe else []:
                await ws.send(message if isinstance(message, str) else dumps(message))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await task
        if self.ws is not None and not self.read:
            self.ws.transport.abort()  # a stalled client cannot take part in a close handshake
        elif self.ws is not None:
            await self.ws.close()

    @property
    def closed(self) -> bool:
        return self.ws is None or self.ws.close_code is not None

    async def _read(self, ws: ClientConnection) -> None:
        async for message in ws:
            self.raw.append(message)
            if isinstance(message, bytes) and self.feed.get("decompress") == "gzip":
                message = gzip.decompress(message)
            text = message.decode(errors="replace") if isinstance(message, bytes) else message
            value = loads(text)
            self.frames.append((text, value))
            for reply in self.feed.get("replies", []) if self.answer else []:
                if matches(reply["when"], text, value):
                    answer = json.loads(dumps(reply["send"]))
                    for target, source in reply.get("copy", {}).items():
                        answer[target.lstrip("/")] = _point(value, source)
                    await ws.send(dumps(answer))

    async def _beat(self, ws: ClientConnection) -> None:
        beat = self.feed["heartbeat"]
        while True:
            await asyncio.sleep(beat["interval"])
            send = beat["send"]
            await ws.send(send if isinstance(send, str) else dumps(send))

    def control(self) -> list[Any]:
        """Frames the service would take for control (decoded, or the text if not JSON)."""
        rules = control_matches(self.feed)
        return [value if value is not None else text for text, value in self.frames
                if any(matches(rule, text, value) for rule in rules)]

    def data(self) -> list[Any]:
        """Frames the service would forward as data (the text itself if it is not JSON)."""
        rules = control_matches(self.feed)
        return [value if value is not None else text for text, value in self.frames
                if not any(matches(rule, text, value) for rule in rules)]


def check_feed_settings(feed: dict[str, Any], *, venue_keys_landed: bool) -> None:
    """The feed validates with the service's own FeedSettings: its base keys now, every key
    once the venue keys have landed in app.settings (the test files switch that on)."""
    from app.settings import FeedSettings

    FeedSettings.model_validate({key: value for key, value in feed.items() if key in BASE_KEYS})
    if venue_keys_landed:
        dumped = FeedSettings.model_validate(feed).model_dump(mode="json")
        for key in set(feed) & VENUE_KEYS:
            assert dumped.get(key) is not None, f"FeedSettings dropped {key}"
