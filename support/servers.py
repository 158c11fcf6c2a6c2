"""Real WebSocket peers for the tests and the benchmarks: feeds and sinks on 127.0.0.1, each in
its own loop thread."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from app.demo.receiver import Acknowledger
from support.wait import until, wait_until

Handler = Callable[[ServerConnection], Awaitable[None]]


class LoopThread:
    """An asyncio loop running in a daemon thread; `call` runs a coroutine in it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coroutine: Awaitable[Any], timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class WsServer:
    """A websockets server on 127.0.0.1 that can be stopped and started again on its port."""

    def __init__(self, handler: Handler, port: int = 0, **options: Any) -> None:
        self._handler = handler
        self._options = options
        self._thread = LoopThread()
        self._server: Server | None = None
        self.port = port
        self.start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        async def start() -> Server:
            return await serve(self._handler, "127.0.0.1", self.port, **self._options)

        self._server = self._thread.call(start())
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self, close_connections: bool = True) -> None:
        """Stop listening; close open connections (code 1001) unless told not to."""
        server, self._server = self._server, None
        if server is None:
            return

        async def stop() -> None:
            server.close(close_connections=close_connections)
            await server.wait_closed()

        self._thread.call(stop(), timeout=15)

    def close(self) -> None:
        self.stop()
        self._thread.stop()


class TcpServer:
    """A TCP server on 127.0.0.1 in a loop thread of its own. `_handle` serves a connection (by
    default it holds it, saying nothing); every writer in `_writers` is aborted by `close`."""

    def __init__(self) -> None:
        self._thread = LoopThread()
        self._writers: list[asyncio.StreamWriter] = []

        async def start() -> asyncio.Server:
            return await asyncio.start_server(self._handle, "127.0.0.1", 0)

        self._server: asyncio.Server = self._thread.call(start())
        self.port: int = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for writer in self._writers:
                writer.transport.abort()

        self._thread.call(stop())
        self._thread.stop()


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
               dropping: Callable[[], bool] = lambda: False) -> None:
    """Copy `reader` to `writer` until either side ends (what arrives while `dropping()` is
    lost, as on a dead network path); then close `writer`."""
    try:
        while data := await reader.read(65536):
            if not dropping():
                writer.write(data)
                await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


class CuttingProxy(TcpServer):
    """A TCP proxy on 127.0.0.1 in front of `target_port` that can cut its connections.

    `cut()` stops forwarding what clients send (it is dropped, as on a dead network path), then
    aborts both sides `after_s` later. It works below the WebSocket library, so nothing in the
    peer's stack can read on past the cut.
    """

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._frozen: set[asyncio.StreamWriter] = set()
        super().__init__()

    async def _handle(self, client_r: asyncio.StreamReader,
                      client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self._target)
        self._pairs.append((client_w, server_w))
        self._writers += (client_w, server_w)
        await asyncio.gather(pump(client_r, server_w, lambda: server_w in self._frozen),
                             pump(server_r, client_w))

    def cut(self, after_s: float = 0.5) -> None:
        """Drop what every open connection's client sends from now on; abort them later."""
        def freeze() -> None:
            pairs = list(self._pairs)
            self._frozen.update(server for _, server in pairs)

            def abort() -> None:
                for client, server in pairs:
                    for writer in (client, server):
                        writer.transport.abort()

            self._thread.loop.call_later(after_s, abort)

        self._thread.loop.call_soon_threadsafe(freeze)


class Sink:
    """A sink server recording every envelope it receives, and how each connection closed."""

    def __init__(self, port: int = 0, cut_after: int = 0, close_after: int = 0,
                 ack: bool = False, **options: Any) -> None:
        """`cut_after`: once that many envelopes arrived on the first connection, the network
        path dies: what the service sends is dropped, and the connection is aborted half a
        second later (clients reach the sink through a `CuttingProxy`).
        `close_after`: close every connection (1000) after processing that many frames; frames
        its WebSocket stack took but the handler had not processed are lost, as with any
        application that stops reading. `ack`: acknowledge processed frames (confirm=ack)."""
        self._cut_after = cut_after
        self._close_after = close_after
        self._ack = ack
        self.messages: list[dict[str, Any]] = []
        self.arrived_at: list[float] = []  # time.time() of each message's arrival
        self.raw_frames: list[str] = []
        self.close_codes: list[int | None] = []
        self.connections = 0
        self._lock = threading.Lock()
        self.server = WsServer(self._handle, port, **options)
        self._proxy = CuttingProxy(self.server.port) if cut_after else None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._proxy.port}" if self._proxy else self.server.url

    async def _handle(self, ws: ServerConnection) -> None:
        with self._lock:
            self.connections += 1
        acks = Acknowledger(ws) if self._ack else None
        processed = 0
        try:
            async for frame in ws:
                assert isinstance(frame, str), "the service must send text frames"
                decoded = json.loads(frame)
                with self._lock:
                    self.raw_frames.append(frame)
                    envelopes = decoded if isinstance(decoded, list) else [decoded]
                    self.messages.extend(envelopes)
                    self.arrived_at.extend([time.time()] * len(envelopes))
                    cut = self.connections == 1 and len(self.messages) == self._cut_after
                processed += 1
                if acks is not None:
                    acks.processed()
                if processed == self._close_after:
                    await ws.close()
                    break
                if cut and self._proxy is not None:
                    # Frames the proxy has not forwarded yet, and the ping after them, never
                    # arrive; those already here are still consumed below.
                    self._proxy.cut()
        except ConnectionClosed:
            pass
        with self._lock:
            self.close_codes.append(ws.close_code)

    def by_source(self) -> dict[str, list[int]]:
        """seq numbers received per source, in arrival order."""
        result: dict[str, list[int]] = {}
        with self._lock:
            for message in self.messages:
                result.setdefault(message["source"], []).append(message["seq"])
        return result

    def wait_for(self, predicate: Callable[[Sink], bool], timeout: float = 20) -> bool:
        """Whether `predicate` came true within `timeout` (it is called with the lock held: it
        must not call by_source())."""
        def holds() -> bool:
            with self._lock:
                return predicate(self)

        try:
            wait_until(holds, timeout, interval=0.05)
        except AssertionError:
            return False
        return True

    def close(self) -> None:
        if self._proxy is not None:
            self._proxy.close()
        self.server.close()


def tick(feed: str, n: int) -> str:
    """A small market-data-like JSON message."""
    return json.dumps({"feed": feed, "n": n, "price": 100 + n % 50, "size": 0.5})


def feed_handler(
    count: int,
    *,
    name: str = "feed",
    interval: float = 0.0,
    require_subscribe: str | None = None,
    require_header: tuple[str, str] | None = None,
    drop_every: int = 0,
    sent: list[int] | None = None,
) -> Handler:
    """A feed sending `count` ticks in total across connections, numbered 1..count.

    `interval`: seconds between ticks, kept on average (asyncio's sleeps are coarser).
    `drop_every`: abort the TCP connection (no close frame) after that many ticks on it.
    `sent` collects the tick numbers that were written while a connection was open.
    """
    state = {"next": 1}

    async def handle(ws: ServerConnection) -> None:
        if require_header:
            header, value = require_header
            if ws.request.headers.get(header) != value:
                await ws.close(4001, "missing header")
                return
        if require_subscribe is not None:
            first = await ws.recv()
            if first != require_subscribe:
                await ws.close(4002, "bad subscribe")
                return
        on_this_connection = 0
        started = time.monotonic()
        try:
            while state["next"] <= count:
                n = state["next"]
                await ws.send(tick(name, n))
                state["next"] += 1
                on_this_connection += 1
                if sent is not None:
                    sent.append(n)
                if drop_every and on_this_connection >= drop_every:
                    # The last ones leave first (into the socket), then the abort.
                    with contextlib.suppress(AssertionError):
                        await until(lambda: not ws.transport.get_write_buffer_size(), 1)
                    ws.transport.abort()
                    return
                if interval:  # on schedule: sleep only when ahead of it
                    ahead = started + on_this_connection * interval - time.monotonic()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                if n % 100 == 0:
                    await asyncio.sleep(0)
            await ws.wait_closed()
        except ConnectionClosed:
            pass

    return handle


def script_handler(
    frames: list[str | bytes], close_codes: list[int | None] | None = None
) -> Handler:
    """A feed sending exactly these frames once per connection, then waiting for the close."""

    async def handle(ws: ServerConnection) -> None:
        try:
            for frame in frames:
                await ws.send(frame)
            await ws.wait_closed()
        except ConnectionClosed:
            pass
        if close_codes is not None:
            close_codes.append(ws.close_code)

    return handle


def deaf_handler(after: int = 5) -> Handler:
    """A feed that sends `after` ticks, then stops reading its socket (so answers no ping) while
    keeping the TCP connection open."""

    async def handle(ws: ServerConnection) -> None:
        for n in range(1, after + 1):
            await ws.send(tick("deaf", n))
        ws.transport.pause_reading()
        ws.transport.resume_reading = lambda: None  # type: ignore[method-assign]
        await ws.wait_closed()

    return handle


def contiguous(seqs: list[int], n: int) -> bool:
    """Exactly 1..n, in order."""
    return seqs == list(range(1, n + 1))


GARBAGE: list[str | bytes] = [  # a feed script: 2 good ticks, 3 decode errors, 1 too large
    tick("g", 1),
    "not json {",
    b"\xff\xfe\x00 not utf-8",
    json.dumps({"big": "x" * 2000}),  # over max_message_bytes=1000, under 16x
    "",
    tick("g", 6),
]



def garbage_env(url: str, sink_url: str, **extra: str) -> dict[str, str]:
    """Service settings for one feed `g` of GARBAGE with max_message_bytes=1000."""
    return {"INGEST_SOURCES": json.dumps([{"name": "g", "url": url, "max_message_bytes": 1000}]),
            "INGEST_SINK_URL": sink_url, **extra}
