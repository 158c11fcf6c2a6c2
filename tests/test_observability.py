"""Issue 3's acceptance: metrics, endpoints, and a real Prometheus scraping the service."""

from __future__ import annotations

import json
import math
import time
import urllib.parse

from support.servers import deaf_handler, feed_handler, tick
from support.service import http_get
from support.wait import wait_until

HISTOGRAMS = {
    "ingest_batch_latency_seconds": ("source",),
    "ingest_message_latency_seconds": (),
    "ingest_source_batch_size": ("source",),
    "ingest_sink_write_seconds": (),
}
COUNTERS = {
    "ingest_messages_received_total": ("source",),
    "ingest_bytes_received_total": ("source",),
    "ingest_messages_sent_total": (),
    "ingest_messages_invalid_total": ("reason", "source"),
    "ingest_messages_dropped_total": ("source",),
    "ingest_source_connects_total": ("source",),
    "ingest_sink_retries_total": (),
}
GAUGES = {
    "ingest_source_up": ("source",),
    "ingest_source_last_message_timestamp_seconds": ("source",),
    "ingest_sink_up": (),
}


def test_every_contract_metric_is_exported_and_adds_up(sink, servers, service):
    n = 1200
    feeds = {f"m{i}": servers(feed_handler(n, name=f"m{i}", interval=0.0005)) for i in range(2)}
    sources = [{"name": name, "url": feed.url} for name, feed in feeds.items()]
    app = service({"INGEST_SOURCES": json.dumps(sources), "INGEST_SINK_URL": sink.url})
    assert sink.wait_for(lambda s: len(s.messages) >= 2 * n, 30)
    wait_until(lambda: app.metric("ingest_messages_sent_total") == 2 * n)
    samples = app.metrics()
    names = {name for name, _ in samples}
    labels_of = {}
    for name, labels in samples:
        labels_of.setdefault(name, set()).add(tuple(key for key, _ in labels if key != "le"))

    for family, labels in HISTOGRAMS.items():
        for suffix in ("_bucket", "_count", "_sum"):
            assert family + suffix in names, family + suffix
        assert labels_of[family + "_count"] == {labels}
        buckets = {dict(lab)["le"] for name, lab in samples if name == family + "_bucket"}
        if "latency" in family or "write" in family:
            assert {"0.001", "30.0", "+Inf"} <= buckets
    for family, labels in {**COUNTERS, **GAUGES}.items():
        assert family in names, family
        assert labels_of[family] == {labels}, family

    bytes_per_feed = {name: sum(len(tick(name, k).encode()) for k in range(1, n + 1))
                      for name in feeds}
    for name in feeds:
        assert app.metric("ingest_messages_received_total", source=name) == n
        assert app.metric("ingest_bytes_received_total", source=name) == bytes_per_feed[name]
        assert app.metric("ingest_source_batch_size_sum", source=name) == n
        assert app.metric("ingest_batch_latency_seconds_count", source=name) >= 1
        assert app.metric("ingest_source_up", source=name) == 1
        assert app.metric("ingest_source_connects_total", source=name) == 1
        assert time.time() - app.metric(
            "ingest_source_last_message_timestamp_seconds", source=name) < 60
        for reason in ("decode", "too_large", "transform"):
            assert app.metric("ingest_messages_invalid_total", source=name, reason=reason) == 0
    assert app.metric("ingest_messages_sent_total") == 2 * n
    assert app.metric("ingest_message_latency_seconds_count") == 2 * n
    writes = app.metric("ingest_sink_write_seconds_count")
    assert 1 <= writes <= 2 * n
    # A batch holds a feed's messages at most once: no more batch latencies than writes.
    assert sum(app.metric("ingest_batch_latency_seconds_count", source=name)
               for name in feeds) >= writes
    assert app.metric("ingest_sink_up") == 1
    assert app.get("/nothing-here")[0] == 404
    assert app.terminate() == 0


def test_readyz_follows_the_feeds_and_healthz_stays_up(sink, servers, service):
    steady = servers(feed_handler(100_000, name="steady", interval=0.01))
    flaky = servers(feed_handler(100_000, name="flaky", interval=0.01))
    sources = [{"name": "steady", "url": steady.url}, {"name": "flaky", "url": flaky.url}]
    app = service({"INGEST_SOURCES": json.dumps(sources), "INGEST_SINK_URL": sink.url})
    app.wait_ready()
    assert app.get("/healthz")[0] == 200

    flaky.stop()
    wait_until(lambda: app.get("/readyz")[0] == 503, 10)
    code, body = app.get("/readyz")
    assert code == 503
    assert json.loads(body) == {"ready": False, "sources_down": ["flaky"], "sink_up": True}
    assert app.get("/healthz")[0] == 200
    assert app.metric("ingest_source_up", source="flaky") == 0

    flaky.start()
    app.wait_ready(timeout=10)
    assert json.loads(app.get("/readyz")[1]) == {
        "ready": True, "sources_down": [], "sink_up": True}
    assert app.get("/healthz")[0] == 200
    assert app.metric("ingest_source_connects_total", source="flaky") == 2
    assert app.terminate() == 0


def test_readyz_names_a_sink_that_is_down(sink, servers, service):
    feed = servers(feed_handler(100_000, name="f", interval=0.01))
    app = service({"INGEST_SOURCES": json.dumps([{"name": "f", "url": feed.url}]),
                   "INGEST_SINK_URL": sink.url})
    app.wait_ready()
    sink.server.stop()
    wait_until(lambda: app.get("/readyz")[0] == 503, 10)
    assert json.loads(app.get("/readyz")[1]) == {
        "ready": False, "sources_down": [], "sink_up": False}
    sink.server.start()
    app.wait_ready(timeout=10)
    assert app.terminate() == 0


def test_source_up_drops_within_ping_interval_plus_timeout(sink, servers, service):
    feed = servers(deaf_handler(), close_timeout=0.5)
    ping_interval, ping_timeout = 1.0, 1.0
    sources = [{"name": "deaf", "url": feed.url, "ping_interval": ping_interval,
                "ping_timeout": ping_timeout}]
    app = service({"INGEST_SOURCES": json.dumps(sources), "INGEST_SINK_URL": sink.url,
                   "INGEST_RECONNECT_MIN_MS": "5000", "INGEST_RECONNECT_MAX_MS": "5000"})
    assert sink.wait_for(lambda s: len(s.messages) >= 5)
    went_deaf = time.monotonic()  # the feed stopped reading right after its 5th tick
    wait_until(lambda: app.metric("ingest_source_up", source="deaf") == 0, 10,
               message="ingest_source_up never dropped")
    took = time.monotonic() - went_deaf
    print(f"ingest_source_up dropped {took:.2f}s after the feed went deaf")
    assert took <= ping_interval + ping_timeout + 1.0  # 1 s: this test's polling, a busy machine
    # The gauge reads the evidence (nothing heard for ping_interval + ping_timeout); the
    # keepalive fails the connection about then too, and logs it.
    wait_until(lambda: any(e["event"] == "source_disconnected" for e in app.logs()), 5)
    closed = [e for e in app.logs() if e["event"] == "source_disconnected"]
    assert closed[0]["code"] == 1011
    assert app.terminate() == 0


def query(base: str, promql: str) -> list[dict]:
    status, body = http_get(f"{base}/api/v1/query?query={urllib.parse.quote(promql)}")
    assert status == 200, body
    return json.loads(body)["data"]["result"]


def test_a_real_prometheus_scrapes_batch_latency_per_feed(sink, servers, service, prometheus):
    names = ["alpha", "beta"]
    feeds = [servers(feed_handler(100_000, name=name, interval=0.002)) for name in names]
    sources = [{"name": name, "url": feed.url} for name, feed in zip(names, feeds, strict=True)]
    app = service({"INGEST_SOURCES": json.dumps(sources), "INGEST_SINK_URL": sink.url})
    app.wait_ready()
    base = prometheus([f"127.0.0.1:{app.port}"])
    p99 = ("histogram_quantile(0.99, sum by (le, source) "
           "(rate(ingest_batch_latency_seconds_bucket[1m])))")
    values: dict[str, float] = {}

    def both_feeds_have_a_p99() -> bool:
        values.clear()
        values.update({r["metric"]["source"]: float(r["value"][1]) for r in query(base, p99)})
        return sorted(values) == names and all(math.isfinite(v) for v in values.values())

    wait_until(both_feeds_have_a_p99, 30, interval=0.5, message=lambda: str(values))
    print("p99 batch latency per feed, from Prometheus:", values)
    assert sorted(values) == names
    assert all(math.isfinite(v) and 0 < v < 30 for v in values.values())
    up = {r["metric"]["source"]: float(r["value"][1]) for r in query(base, "ingest_source_up")}
    assert up == {"alpha": 1.0, "beta": 1.0}
    received = query(base, "sum(ingest_messages_received_total)")
    assert float(received[0]["value"][1]) > 0
    assert app.terminate() == 0
