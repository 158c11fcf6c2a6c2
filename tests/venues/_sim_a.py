"""The machinery shared by the OKX, HTX, Binance, Bybit and KuCoin simulations.

Owns what is not venue protocol: a websockets server on 127.0.0.1 (port 0) in a thread of its own
with its own asyncio loop, one `Session` per connection (an outbox drained by a sender task), one
market clock that numbers events for every subscriber alike (so two connections of one client see
the same upstream sequence, as on a real venue), the counters of the common interface, and the few
helpers the self-tests share (loading `config/venues/<venue>.env`, waiting on a condition).
Each venue module supplies the protocol: `session()` (its reader, heartbeat rule and watchdogs)
and `frames_for()` (its data frames for one market event).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dotenv import dotenv_values
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

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


class SimulationBase:
    """Server, thread, loop, counters and market clock; venues subclass it."""

    name: ClassVar[str] = ""
    PATH: ClassVar[str] = "/"
    RATE: ClassVar[float] = 25.0  # market events per second, each one frame per subscription

    def __init__(self) -> None:
        self.connections = 0
        self.dropped: list[str] = []
        self.pings_sent = 0
        self.pings_answered = 0
        self.client_heartbeats = 0
        self.data_sent = 0
        self.subscriptions = 0
        self.port = 0
        self.sessions: list[Session] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._clock: asyncio.Task[None] | None = None

    # -- lifecycle (test thread) ---------------------------------------------------------------

    def start(self) -> str:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=f"sim-{self.name}",
                                        daemon=True)
        self._thread.start()
        self._server = self.call(self._serve())
        self.port = self._server.sockets[0].getsockname()[1]
        return self.url()

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.PATH}"

    def close(self) -> None:
        if self._loop is None or self._thread is None:
            return

        async def stop() -> None:
            if self._clock is not None:
                self._clock.cancel()
            if self._server is not None:
                self._server.close()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._server.wait_closed(), 5)
            # Whatever is left (a handler stuck on a client that stopped reading) ends here.
            left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.call(stop(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()
        self._loop = None

    def call(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 5) -> Any:
        """Run a coroutine in the simulation's loop and wait for its result."""
        assert self._loop is not None, "start() first"
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def send_to_all(self, frames: Callable[[Session], list[str | bytes]]) -> None:
        """Queue control frames (notices) on every open connection, from the test thread."""

        async def queue() -> None:
            for session in list(self.sessions):
                for frame in frames(session):
                    session.outbox.put_nowait((frame, False))

        self.call(queue())

    # -- the server (simulation loop) -------------------------------------------------------

    async def _serve(self) -> Server:
        self._clock = asyncio.get_running_loop().create_task(self._market())
        return await serve(self._handler, "127.0.0.1", 0, process_request=self._check_request,
                           ping_interval=None, compression=None, close_timeout=0.5)

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        problem = self.check_request(request)
        return None if problem is None else connection.respond(*problem)

    def check_request(self, request: Request) -> tuple[int, str] | None:
        """(status, body) to refuse the handshake, as the venue does; None to accept it."""
        if request.path.split("?")[0] != self.PATH:
            return 404, "Not Found\n"
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        session = Session(ws)
        self.sessions.append(session)
        try:
            await self.session(session)
        except ConnectionClosed:
            pass
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

    async def drop(self, session: Session, why: str, code: int = 1000, reason: str = "") -> None:
        """Close a connection that broke a venue rule, recording why."""
        self.dropped.append(why)
        await session.ws.close(code, reason)

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
