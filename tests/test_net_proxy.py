"""Proxies: a feed reached through a local HTTP CONNECT proxy (its own `proxy`, or the standard
variables) or a SOCKS5 proxy (python-socks), `proxy: "none"` going direct, `no_proxy` honoured.

websockets reads the standard variables through urllib (`getproxies`, `proxy_bypass`): an
entry of no_proxy matching the host, or host:port, connects directly. A machine's own no_proxy
often lists 127.0.0.1, which would send our loopback feeds direct and make a proxy test pass
without the proxy: every test here sets no_proxy itself, and asserts the proxy saw the tunnel.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from support.servers import TcpServer, feed_handler, pump
from support.wait import wait_until

PROXY_VARIABLES = ("ws_proxy", "wss_proxy", "http_proxy", "https_proxy", "all_proxy",
                   "socks_proxy", "no_proxy")


class ConnectProxy(TcpServer):
    """An HTTP CONNECT proxy on 127.0.0.1 that records every target it was asked for; it
    tunnels to 127.0.0.1 only (anything else: 403), or refuses all with `refuse` (a status)."""

    scheme = "http"

    def __init__(self, refuse: int | None = None) -> None:
        self.targets: list[str] = []
        self._refuse = refuse
        super().__init__()
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"

    async def _handle(self, client_r: asyncio.StreamReader,
                      client_w: asyncio.StreamWriter) -> None:
        self._writers.append(client_w)
        head = await client_r.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        self.targets.append(target)
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or host != "127.0.0.1" or self._refuse:
            status = self._refuse or 403
            client_w.write(f"HTTP/1.1 {status} Refused\r\nContent-Length: 0\r\n\r\n".encode())
            client_w.close()
            return
        server_r, server_w = await asyncio.open_connection("127.0.0.1", int(port))
        self._writers.append(server_w)
        client_w.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(pump(client_r, server_w), pump(server_r, client_w))


class Socks5Proxy(ConnectProxy):
    """A SOCKS5 proxy (no authentication, CONNECT only) on 127.0.0.1, recording its targets;
    it tunnels to 127.0.0.1 only."""

    scheme = "socks5h"

    async def _handle(self, client_r: asyncio.StreamReader,
                      client_w: asyncio.StreamWriter) -> None:
        self._writers.append(client_w)
        _version, methods = await client_r.readexactly(2)
        await client_r.readexactly(methods)
        client_w.write(b"\x05\x00")  # no authentication
        _version, _command, _reserved, kind = await client_r.readexactly(4)
        if kind == 1:  # IPv4
            host = ".".join(str(part) for part in await client_r.readexactly(4))
        else:  # 3: a name, as socks5h sends it
            host = (await client_r.readexactly((await client_r.readexactly(1))[0])).decode()
        port = int.from_bytes(await client_r.readexactly(2), "big")
        self.targets.append(f"{host}:{port}")
        if host != "127.0.0.1":
            client_w.write(b"\x05\x02\x00\x01" + bytes(6))  # not allowed by ruleset
            client_w.close()
            return
        server_r, server_w = await asyncio.open_connection("127.0.0.1", port)
        self._writers.append(server_w)
        client_w.write(b"\x05\x00\x00\x01" + bytes(6))  # succeeded
        await asyncio.gather(pump(client_r, server_w), pump(server_r, client_w))


@pytest.fixture
def proxy():
    server = ConnectProxy()
    yield server
    server.close()


@pytest.fixture
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """This process's environment without any proxy variable (either spelling)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def _feed(url: str, **keys: object) -> str:
    return json.dumps([{"name": "proxied", "url": url, **keys}])


def test_a_feed_with_its_own_proxy_goes_through_it(proxy, servers, sink, dataflow,
                                                  no_proxy_variables):
    feed = servers(feed_handler(40))
    app = dataflow({"INGEST_SOURCES": _feed(feed.url, proxy=proxy.url),
                    "INGEST_SINK_URL": sink.url})
    assert sink.wait_for(lambda s: len(s.messages) == 40)
    assert proxy.targets == [f"127.0.0.1:{feed.port}"]  # the sink: no proxy variables, direct
    app.stop()


def test_a_feed_through_a_socks5_proxy(servers, sink, dataflow, no_proxy_variables):
    socks = Socks5Proxy()
    try:
        feed = servers(feed_handler(40))
        app = dataflow({"INGEST_SOURCES": _feed(feed.url, proxy=socks.url),
                        "INGEST_SINK_URL": sink.url})
        assert sink.wait_for(lambda s: len(s.messages) == 40)
        assert socks.targets == [f"127.0.0.1:{feed.port}"]
        app.stop()
    finally:
        socks.close()


def test_proxy_none_goes_direct_although_the_variables_name_a_proxy(
        proxy, servers, sink, dataflow, no_proxy_variables):
    feed = servers(feed_handler(40))
    no_proxy_variables.setenv("https_proxy", proxy.url)
    no_proxy_variables.setenv("http_proxy", proxy.url)
    no_proxy_variables.setenv("no_proxy", f"127.0.0.1:{sink.server.port}")  # the sink only
    app = dataflow({"INGEST_SOURCES": _feed(feed.url, proxy="none"),
                    "INGEST_SINK_URL": sink.url})
    assert sink.wait_for(lambda s: len(s.messages) == 40)
    assert proxy.targets == []
    app.stop()


def test_a_proxy_that_refuses_the_tunnel_is_a_rejected_attempt(servers, sink, dataflow,
                                                               no_proxy_variables):
    refusing = ConnectProxy(refuse=407)
    try:
        feed = servers(feed_handler(5))
        app = dataflow({"INGEST_SOURCES": _feed(feed.url, proxy=refusing.url),
                        "INGEST_SINK_URL": sink.url})
        wait_until(lambda: (app.metric("ingest_source_connect_failures_total",
                                       source="proxied", reason="rejected") or 0) >= 2)
        failed = next(line for line in app.logs() if line["event"] == "source_connect_failed")
        assert failed["log_level"] == "error" and failed["http_status"] == 407
        assert failed["error"] == "the proxy answered CONNECT with HTTP 407"
        assert not sink.messages
        app.stop()
    finally:
        refusing.close()


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "HTTP_PROXY"])
def test_python_m_app_honours_the_standard_proxy_variables(variable, proxy, servers, sink,
                                                           service, no_proxy_variables):
    feed = servers(feed_handler(30))
    # The subprocess inherits this environment, cleared of proxy variables by the fixture (an
    # empty lower-case https_proxy would cancel HTTPS_PROXY: urllib prefers lower case).
    app = service({variable: proxy.url,
                   # Loopback must not be exempted by the machine's no_proxy; the sink is, by
                   # host:port, so the proxy sees exactly the feed's tunnel.
                   "no_proxy": f"127.0.0.1:{sink.server.port}",
                   "INGEST_SOURCES": _feed(feed.url), "INGEST_SINK_URL": sink.url})
    app.wait_ready()
    assert sink.wait_for(lambda s: len(s.messages) == 30)
    assert proxy.targets == [f"127.0.0.1:{feed.port}"]
    assert app.terminate() == 0


def test_no_proxy_sends_a_feed_direct(proxy, servers, sink, dataflow, no_proxy_variables):
    feed = servers(feed_handler(20))
    no_proxy_variables.setenv("http_proxy", proxy.url)
    no_proxy_variables.setenv("no_proxy", "127.0.0.1")
    app = dataflow({"INGEST_SOURCES": _feed(feed.url), "INGEST_SINK_URL": sink.url})
    assert sink.wait_for(lambda s: len(s.messages) == 20)
    assert proxy.targets == []
    app.stop()
