"""The HTTP endpoints under hostile or greedy clients: idle connections, slow clients, concurrent
scrapes of a large registry; HEAD, and exact paths."""

from __future__ import annotations

import http.client
import resource
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from app.http import HttpLimits, HttpServer, start_http_server
from app.metrics import Metrics
from app.status import ConnectionStatus
from support.servers import feed_handler
from support.wait import wait_until


def request(port: int, method: str, path: str, timeout: float = 10) -> tuple[int, dict[str, str],
                                                                             bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


class CountingCollector(Collector):
    """Counts how often the registry is collected, i.e. how often /metrics is generated."""

    def __init__(self) -> None:
        self.collections = 0

    def collect(self):  # type: ignore[no-untyped-def]
        self.collections += 1
        return []


@pytest.fixture
def served() -> Iterator[tuple[HttpServer, ConnectionStatus, CountingCollector]]:
    status = ConnectionStatus()
    status.running = True
    status.set_sink("sink-0", True)  # a partition built: the dataflow runs
    registry = CollectorRegistry()
    Metrics(registry).feed("f")
    counting = CountingCollector()
    registry.register(counting)
    server = start_http_server("127.0.0.1", 0, status, registry,
                               HttpLimits(max_connections=16, idle_after_s=0.2,
                                          read_timeout_s=1.0))
    yield server, status, counting
    server.shutdown()


def test_head_get_and_exact_paths(served):
    server, _, _ = served
    code, headers, body = request(server.port, "GET", "/metrics?x=1")
    assert code == 200 and b"ingest_messages_received_total" in body
    assert headers["Content-Type"].startswith("text/plain; version=")
    code, head_headers, head_body = request(server.port, "HEAD", "/metrics")
    assert code == 200 and head_body == b"" and int(head_headers["Content-Length"]) > 1000
    assert request(server.port, "HEAD", "/healthz")[0] == 200
    assert request(server.port, "GET", "//metrics")[0] == 404
    assert request(server.port, "GET", "/metrics/")[0] == 404
    code, headers, _ = request(server.port, "POST", "/metrics")
    assert code == 405 and headers["Allow"] == "GET, HEAD"


def test_a_client_that_sends_nothing_is_cut_off_after_the_read_timeout(served):
    server, _, _ = served
    with socket.create_connection(("127.0.0.1", server.port)) as idle:
        idle.settimeout(5)
        started = time.monotonic()
        answer = idle.recv(1000)  # the server answers 408 and closes, unasked
        assert answer.startswith(b"HTTP/1.1 408")
        assert time.monotonic() - started < 3


def test_idle_connections_beyond_the_cap_do_not_lock_out_a_probe(served):
    server, status, _ = served
    status.set_sink("sink-0", True)
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]
    try:
        # Beyond the cap, a newcomer is refused only while no connection has been idle for
        # idle_after_s; then the idle ones make room, oldest first.
        wait_until(lambda: request(server.port, "GET", "/readyz", timeout=2)[0] == 200, 5)
        for _ in range(10):
            idle.extend(socket.create_connection(("127.0.0.1", server.port)) for _ in range(20))
            wait_until(lambda: request(server.port, "GET", "/readyz", timeout=2)[0] == 200, 5)
    finally:
        for sock in idle:
            sock.close()


def test_concurrent_scrapes_of_a_1000_feed_registry_share_generations():
    status = ConnectionStatus()
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for i in range(1000):
        metrics.feed(f"feed-{i}")
    counting = CountingCollector()
    registry.register(counting)
    server = start_http_server("127.0.0.1", 0, status, registry)
    try:
        results: list[tuple[int, bool]] = []
        start = threading.Barrier(200)

        def scrape() -> None:
            start.wait()
            code, _, body = request(server.port, "GET", "/metrics", timeout=60)
            results.append((code, b'feed-999"' in body))

        threads = [threading.Thread(target=scrape) for _ in range(200)]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        elapsed = time.monotonic() - began
        # Each is answered at once: the whole registry, or 503 beyond the connection cap.
        assert len(results) == 200 and set(results) <= {(200, True), (503, False)}
        assert results.count((200, True)) >= HttpLimits().max_connections
        # Scrapes arriving together share a generation: a handful, not one per scrape.
        assert counting.collections <= 10, (counting.collections, elapsed)
        assert elapsed < 30
    finally:
        server.shutdown()


def test_idle_connections_do_not_starve_the_service(sink, servers, service):
    # 600 idle connections against a process allowed 512 descriptors: one thread and one
    # descriptor each would leave none for the feed, the sink, or /readyz.
    feed = servers(feed_handler(1_000_000, name="f", interval=0.001))
    app = service({"INGEST_SOURCE_URLS": feed.url, "INGEST_SINK_URL": sink.url},
                  preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512)))
    app.wait_ready()
    idle = []
    try:
        for _ in range(600):
            idle.append(socket.create_connection(("127.0.0.1", app.port), timeout=5))
        # Newcomers are refused until the idle ones have been idle for idle_after_s (1 s).
        wait_until(lambda: app.get("/readyz")[0] == 200, 5)
        feed.stop()  # the feed reconnects while the idle connections are held
        wait_until(lambda: app.get("/readyz")[0] == 503)
        feed.start()
        app.wait_ready(timeout=10)
    finally:
        for sock in idle:
            sock.close()
    assert app.terminate() == 0


def test_a_client_that_does_not_take_its_reply_is_cut_off_after_the_write_timeout():
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for i in range(1000):  # a 7 MB body: more than the sockets' buffers hold
        metrics.feed(f"feed-{i}")
    server = start_http_server("127.0.0.1", 0, ConnectionStatus(), registry,
                               HttpLimits(write_timeout_s=0.5))
    try:
        with socket.socket() as slow:
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            slow.connect(("127.0.0.1", server.port))
            slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")

            def reset() -> bool:
                try:  # a byte more: refused once the server cut the connection
                    slow.send(b"\n")
                except (ConnectionResetError, BrokenPipeError):
                    return True
                return False

            wait_until(reset, 10)
        assert request(server.port, "GET", "/healthz")[0] == 503  # still serving
    finally:
        server.shutdown()
