"""TLS for feeds (`tls`) and the sink (INGEST_SINK_TLS) against real TLS WebSocket servers on
127.0.0.1, with a test CA and client certificates made by trustme (mutual TLS)."""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass

import pytest
import trustme
from websockets.asyncio.client import ClientConnection

from app.errors import ConfigError
from app.net import Endpoint, open_connection
from app.retry import Failure, classify_failure
from app.settings import Settings, TlsSettings, load_settings
from app.tls import check_tls, client_context
from support.servers import Sink, feed_handler
from support.wait import wait_until


@dataclass
class Pki:
    """A CA, the server certificate it signed for 127.0.0.1, and a client certificate; plus a
    second CA that signed nothing the servers use."""

    ca: trustme.CA
    server_cert: trustme.LeafCert
    ca_file: str
    cert_file: str
    key_file: str
    other_ca_file: str

    def server_context(self, client_auth: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(context)
        if client_auth:  # mutual TLS: the server demands a certificate signed by our CA
            context.verify_mode = ssl.CERT_REQUIRED
            self.ca.configure_trust(context)
        return context

    def tls(self, **changes: object) -> dict[str, object]:
        return {"ca_file": self.ca_file, "cert_file": self.cert_file,
                "key_file": self.key_file, **changes}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    client = ca.issue_cert("ingest-client@example.test")
    files = {"ca.pem": ca.cert_pem, "other-ca.pem": other.cert_pem,
             "client.pem": client.cert_chain_pems[0], "client.key": client.private_key_pem}
    for name, blob in files.items():
        blob.write_to_path(str(folder / name))
    return Pki(ca, ca.issue_cert("127.0.0.1"), str(folder / "ca.pem"),
               str(folder / "client.pem"), str(folder / "client.key"),
               str(folder / "other-ca.pem"))


def _feeds(url: str, tls: dict[str, object], name: str = "tls") -> str:
    return json.dumps([{"name": name, "url": url, "tls": tls}])


def test_a_feed_over_mutual_tls_reaches_the_sink(pki, servers, sink, dataflow):
    feed = servers(feed_handler(50), ssl=pki.server_context())
    app = dataflow({"INGEST_SOURCES": _feeds(f"wss://127.0.0.1:{feed.port}", pki.tls()),
                    "INGEST_SINK_URL": sink.url})
    assert sink.wait_for(lambda s: len(s.messages) == 50)
    assert [m["seq"] for m in sink.messages] == list(range(1, 51))
    assert app.metric("ingest_source_connect_failures_total", source="tls", reason="tls") == 0
    app.stop()


def test_a_server_certificate_that_does_not_verify_is_a_tls_failure_and_says_why(
        pki, servers, sink, dataflow):
    feed = servers(feed_handler(5), ssl=pki.server_context())
    app = dataflow({"INGEST_SOURCES": _feeds(f"wss://127.0.0.1:{feed.port}",
                                              pki.tls(ca_file=pki.other_ca_file)),
                    "INGEST_SINK_URL": sink.url})
    wait_until(lambda: (app.metric("ingest_source_connect_failures_total", source="tls",
                                   reason="tls") or 0) >= 2)
    failed = [line for line in app.logs() if line["event"] == "source_connect_failed"]
    assert failed[0]["log_level"] == "error" and failed[0]["reason"] == "tls"
    assert "certificate does not verify (self-signed certificate in certificate chain)" in (
        failed[0]["error"])
    assert not sink.messages
    app.stop()


@pytest.mark.parametrize(("host", "client", "detail"), [
    ("127.0.0.1", "other", "the server's certificate does not verify (unable to get local "
                           "issuer certificate): is its CA the one in ca_file?"),
    ("localhost", "ours", "the server's certificate does not verify (Hostname mismatch, "
                          "certificate is not valid for 'localhost'.)"),
])
def test_what_a_failed_verification_says(pki, servers, host, client, detail):
    feed = servers(feed_handler(1), ssl=pki.server_context(client_auth=False))
    ca_file = pki.other_ca_file if client == "other" else pki.ca_file
    endpoint = Endpoint(f"wss://{host}:{feed.port}/", proxy=None, open_timeout=5,
                        ssl=client_context(TlsSettings(ca_file=ca_file)))

    async def attempt() -> None:
        async with open_connection(endpoint, ClientConnection):
            raise AssertionError("the handshake must fail")

    with pytest.raises(ssl.SSLCertVerificationError) as raised:
        asyncio.run(attempt())
    assert classify_failure(raised.value) == Failure("tls", detail, needs_action=True)


def test_verify_false_connects_to_an_unknown_ca_and_warns_once_at_start(
        pki, servers, sink, dataflow):
    feed = servers(feed_handler(20), ssl=pki.server_context(client_auth=False))
    app = dataflow({"INGEST_SOURCES": _feeds(f"wss://127.0.0.1:{feed.port}",
                                              {"ca_file": pki.other_ca_file, "verify": False}),
                    "INGEST_SINK_URL": sink.url})
    assert sink.wait_for(lambda s: len(s.messages) == 20)
    warnings = [line for line in app.logs() if line["event"] == "tls_verify_disabled"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert warnings[0]["source"] == "tls"
    app.stop()


def test_the_sink_over_mutual_tls(pki, servers, dataflow):
    sink = Sink(ssl=pki.server_context())
    try:
        feed = servers(feed_handler(30))
        app = dataflow({"INGEST_SOURCE_URLS": feed.url,
                        "INGEST_SINK_URL": f"wss://127.0.0.1:{sink.server.port}",
                        "INGEST_SINK_TLS": json.dumps(pki.tls())})
        assert sink.wait_for(lambda s: len(s.messages) == 30)
        assert [m["seq"] for m in sink.messages] == list(range(1, 31))
        app.stop()
    finally:
        sink.close()


def test_the_sink_with_the_wrong_ca_logs_a_tls_failure_and_sends_nothing(pki, servers,
                                                                          dataflow):
    sink = Sink(ssl=pki.server_context())
    try:
        feed = servers(feed_handler(5))
        app = dataflow({"INGEST_SOURCE_URLS": feed.url,
                        "INGEST_SINK_URL": f"wss://127.0.0.1:{sink.server.port}",
                        "INGEST_SINK_TLS": json.dumps(pki.tls(ca_file=pki.other_ca_file)),
                        "INGEST_SHUTDOWN_TIMEOUT_MS": "200"})
        wait_until(lambda: any(line["event"] == "sink_connect_failed"
                               for line in app.logs()))
        failed = next(line for line in app.logs() if line["event"] == "sink_connect_failed")
        assert failed["reason"] == "tls" and "does not verify" in failed["error"]
        assert not sink.messages and sink.connections == 0
    finally:
        sink.close()


def test_sink_tls_is_read_from_the_environment_and_reaches_the_sink_options_only(pki):
    settings = Settings(_env_file=None, source_urls="ws://127.0.0.1:1/a",
                        sink_url="wss://127.0.0.1:2/out", on_invalid="dead-letter",
                        dead_letter_url="ws://127.0.0.1:3/dl",
                        sink_tls=json.dumps(pki.tls(verify=False)))
    options = settings.options()
    assert options.sink.tls == TlsSettings(**pki.tls(verify=False))
    assert options.dead_letter is not None and options.dead_letter.tls is None
    assert Settings(_env_file=None, source_urls="ws://127.0.0.1:1/a",
                    sink_url="ws://127.0.0.1:2/out").options().sink.tls is None


def test_sink_tls_from_the_environment(pki, monkeypatch):
    monkeypatch.setenv("INGEST_SOURCE_URLS", "ws://127.0.0.1:1/a")
    monkeypatch.setenv("INGEST_SINK_URL", "wss://127.0.0.1:2/out")
    monkeypatch.setenv("INGEST_SINK_TLS", json.dumps(pki.tls()))
    assert load_settings(_env_file=None).sink_tls == TlsSettings(**pki.tls())
    monkeypatch.setenv("INGEST_SINK_TLS", " ")
    assert load_settings(_env_file=None).sink_tls is None
    monkeypatch.setenv("INGEST_SINK_TLS", '{"verify": "maybe", "ca": "x"}')
    with pytest.raises(ConfigError) as raised:
        load_settings(_env_file=None)
    assert [line.split(":")[0] for line in raised.value.problems] == [
        "INGEST_SINK_TLS.verify", "INGEST_SINK_TLS"]
    assert "unknown key 'ca'" in raised.value.problems[1]


def test_client_context_from_settings(pki):
    assert client_context(None) is None
    strict = client_context(TlsSettings(ca_file=pki.ca_file))
    assert strict is not None and strict.verify_mode == ssl.CERT_REQUIRED
    assert strict.check_hostname
    loose = client_context(TlsSettings(verify=False))
    assert loose is not None and loose.verify_mode == ssl.CERT_NONE
    assert not loose.check_hostname


def test_certificate_files_that_do_not_load_stop_start_up_naming_the_variable(pki, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    settings = Settings(_env_file=None, sink_url="wss://127.0.0.1:2/out",
                        sources=_feeds("wss://127.0.0.1:1/a", {"ca_file": str(junk)}),
                        sink_tls=json.dumps({"cert_file": str(junk)}))
    with pytest.raises(ConfigError) as raised:
        check_tls(settings)
    problems = raised.value.problems
    assert len(problems) == 2
    assert problems[0].startswith("INGEST_SOURCES[0].tls: cannot load the CA or client "
                                  "certificate")
    assert problems[1].startswith("INGEST_SINK_TLS: cannot load")
    check_tls(Settings(_env_file=None, sink_url="wss://127.0.0.1:2/out",
                       sources=_feeds("wss://127.0.0.1:1/a", pki.tls())))  # loads: no error


def test_python_m_app_stops_with_status_2_on_a_bad_certificate_file(tmp_path, service):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    app = service({"INGEST_SOURCES": _feeds("wss://127.0.0.1:1/a", {"ca_file": str(junk)}),
                   "INGEST_SINK_URL": "ws://127.0.0.1:2/out"})
    assert app.process.wait(20) == 2
    assert app.stderr().startswith("INGEST_SOURCES[0].tls: cannot load the CA")

