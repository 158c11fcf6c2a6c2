"""/metrics, /healthz and /readyz, served from one thread beside the Bytewax workers.

prometheus-client's own server answers every path with metrics, so a probe against it would
prove nothing: this one serves the three paths (GET and HEAD) and 404s the rest.

It is built so that no client can starve it or the dataflow: one asyncio loop in one thread (an
idle connection costs a socket, not a thread); at most `max_connections` at once: beyond that,
the oldest connection that has sent no request for `idle_after_s` is closed to make room (so a
pile of idle connections cannot lock a probe out), else the newcomer gets 503 (a burst of real
clients is refused, not evicted); `read_timeout_s` to send the request head (else 408),
`write_timeout_s` to take the reply; one request per connection. /metrics is generated in a
helper thread, one generation at a time, and each scrape gets a body generated after it
arrived; scrapes that arrive together share one generation, and generating takes at most
`metrics_duty` of the time (the next one waits), so concurrent scrapes of a large registry cost
the dataflow a bounded share of the interpreter.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from app.status import ConnectionStatus

SEND_SLICE_BYTES = 65_536
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(frozen=True)
class HttpLimits:
    """What one client may take of the HTTP server."""

    max_connections: int = 64
    idle_after_s: float = 1.0
    read_timeout_s: float = 5.0
    write_timeout_s: float = 10.0
    max_head_bytes: int = 8192
    metrics_duty: float = 0.2


class _MetricsBody:
    """/metrics bodies, generated one at a time in a helper thread; see the module docstring."""

    def __init__(self, registry: CollectorRegistry, duty: float) -> None:
        self._registry = registry
        self._pause_factor = 1 / duty - 1  # idle time after a generation, per second it took
        self._next: asyncio.Future[bytes] | None = None
        self._lock = asyncio.Lock()
        self._earliest = 0.0

    async def get(self) -> bytes:
        if self._next is None:  # the next generation starts after this request arrived
            self._next = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().create_task(self._generate(self._next))
        return await asyncio.shield(self._next)

    async def _generate(self, future: asyncio.Future[bytes]) -> None:
        loop = asyncio.get_running_loop()
        async with self._lock:
            await asyncio.sleep(max(0.0, self._earliest - loop.time()))
            self._next = None  # from now on, a request waits for a later generation
            started = loop.time()
            try:
                body = await loop.run_in_executor(None, generate_latest, self._registry)
            except Exception as exc:  # a collector failed: this scrape fails, not the server
                future.set_exception(exc)
            else:
                future.set_result(body)
            finished = loop.time()
            self._earliest = finished + (finished - started) * self._pause_factor


class HttpServer:
    """The endpoints on `host:port` (port 0: any free one, see `.port`), in a daemon thread."""

    def __init__(self, host: str, port: int, status: ConnectionStatus,
                 registry: CollectorRegistry = REGISTRY, limits: HttpLimits = HttpLimits()) -> None:
        self._status = status
        self._limits = limits
        self._loop = asyncio.new_event_loop()
        self._metrics = _MetricsBody(registry, limits.metrics_duty)
        # Oldest first: when it was accepted (loop time), None once its request is in.
        self._connections: dict[asyncio.StreamWriter, float | None] = {}
        self._server = self._loop.run_until_complete(asyncio.start_server(
            self._serve, host, port, limit=limits.max_head_bytes, reuse_address=True,
            backlog=128))  # OSError (port taken) reaches the caller
        self.port: int = self._server.sockets[0].getsockname()[1]
        self._thread = threading.Thread(target=self._loop.run_forever, name="http", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop listening and close every connection."""
        async def stop() -> None:
            self._server.close()
            for writer in list(self._connections):
                writer.transport.abort()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._admit(writer):
            writer.write(self._head(503, "text/plain", len(b"too many connections\n")))
            writer.write(b"too many connections\n")
            writer.close()  # after the reply leaves; nothing more is read
            return
        try:
            code, content_type, body, head = await self._answer(reader, writer)
            if not writer.transport.is_closing():  # else closed to make room, or by the client
                writer.write(self._head(code, content_type, len(body)))
                await asyncio.wait_for(self._send(writer, b"" if head else body),
                                       self._limits.write_timeout_s)
                writer.close()
        except (ConnectionError, asyncio.TimeoutError):
            pass  # a client that went away, or does not take its reply
        finally:
            self._connections.pop(writer, None)
            if not writer.transport.is_closing():
                writer.transport.abort()

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        """Room for `writer`: close the connection idle longest if need be; False if none is."""
        now = self._loop.time()
        if len(self._connections) >= self._limits.max_connections:
            idle_since = now - self._limits.idle_after_s
            idle = next((w for w, accepted in self._connections.items()
                         if accepted is not None and accepted <= idle_since), None)
            if idle is None:
                return False
            del self._connections[idle]
            idle.transport.abort()  # its _serve ends on the reset
        self._connections[writer] = now
        return True

    async def _answer(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> tuple[int, str, bytes, bool]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                          self._limits.read_timeout_s)
        except asyncio.TimeoutError:
            return 408, "text/plain", b"request timeout\n", False
        except asyncio.LimitOverrunError:
            return 431, "text/plain", b"request head too large\n", False
        except (asyncio.IncompleteReadError, ConnectionError):
            return 400, "text/plain", b"", False
        if writer in self._connections:
            self._connections[writer] = None  # answering: not to be closed to make room
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return 400, "text/plain", b"bad request\n", False
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return 405, "text/plain", b"GET or HEAD\n", False
        code, content_type, body = await self._route(target)
        return code, content_type, body, method == b"HEAD"

    async def _route(self, path: bytes) -> tuple[int, str, bytes]:
        if path == b"/metrics":
            try:
                return 200, CONTENT_TYPE_LATEST, await self._metrics.get()
            except Exception as exc:
                return 500, "text/plain", f"metrics: {exc!r}\n".encode()
        if path == b"/healthz":
            running = self._status.running
            return 200 if running else 503, "application/json", json.dumps(
                {"running": running}).encode()
        if path == b"/readyz":
            body = self._status.readiness()
            return 200 if body["ready"] else 503, "application/json", json.dumps(body).encode()
        return 404, "text/plain", b"not found\n"

    @staticmethod
    def _head(code: int, content_type: str, length: int) -> bytes:
        lines = [f"HTTP/1.1 {code} {REASONS[code]}", f"Content-Type: {content_type}",
                 f"Content-Length: {length}", "Connection: close"]
        if code == 405:
            lines.append("Allow: GET, HEAD")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, body: bytes) -> None:
        """In slices, each once the socket took the last: what the kernel has not taken is
        copied into the transport's buffer, and a large body (7 MB for 1 000 feeds) to each of
        `max_connections` slow clients would otherwise be that many copies."""
        view = memoryview(body)
        for start in range(0, len(body), SEND_SLICE_BYTES):
            writer.write(view[start:start + SEND_SLICE_BYTES])
            await writer.drain()
        await writer.drain()

def start_http_server(host: str, port: int, status: ConnectionStatus,
                      registry: CollectorRegistry = REGISTRY,
                      limits: HttpLimits = HttpLimits()) -> HttpServer:
    """Start serving in a daemon thread; call .shutdown() to stop."""
    return HttpServer(host, port, status, registry, limits)

