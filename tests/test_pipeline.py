"""Issue 2's acceptance, end to end: `python -m app` between real WebSocket servers."""

from __future__ import annotations

import json
import os
import signal
import time

from support.servers import feed_handler, script_handler, tick
from support.wait import holds_for


def contiguous(seqs: list[int], n: int) -> bool:
    return seqs == list(range(1, n + 1))


def test_three_feeds_with_header_and_subscribe_arrive_complete_and_in_order(
        sink, servers, service):
    plain = [servers(feed_handler(1500, name=f"plain{i}", interval=0.0005)) for i in range(2)]
    subscribe = {"type": "subscribe", "channels": ["ticker"]}
    guarded = servers(feed_handler(
        1500, name="guarded", require_header=("Authorization", "Bearer t0ken"),
        require_subscribe=json.dumps(subscribe, separators=(",", ":"))))
    sources = [
        {"name": "guarded", "url": guarded.url, "headers": {"Authorization": "Bearer t0ken"},
         "subscribe": [subscribe]},
        *({"name": f"plain{i}", "url": s.url} for i, s in enumerate(plain)),
    ]
    app = service({"INGEST_SOURCES": json.dumps(sources), "INGEST_SINK_URL": sink.url})
    assert sink.wait_for(lambda s: len(s.messages) >= 4500, 30), len(sink.messages)

    by_source = sink.by_source()
    assert sorted(by_source) == ["guarded", "plain0", "plain1"]
    for name, seqs in by_source.items():
        assert contiguous(seqs, 1500), name
    first = sink.messages[0]
    assert set(first) == {"source", "seq", "received_at", "data"}
    assert first["received_at"].endswith("Z") and len(first["received_at"]) == 27
    for message in sink.messages:  # one connection each: seq n carries tick n
        assert message["data"]["n"] == message["seq"]
        assert message["data"]["feed"] == message["source"]
    assert "t0ken" not in app.stdout() + app.stderr()
    assert app.terminate() == 0


def test_a_feed_that_drops_is_reconnected_and_resubscribed(sink, servers, service):
    sent: list[int] = []
    feed = servers(feed_handler(2000, drop_every=300, require_subscribe="hello", sent=sent))
    app = service({
        "INGEST_SOURCES": json.dumps([{"name": "flaky", "url": feed.url, "subscribe": ["hello"]}]),
        "INGEST_SINK_URL": sink.url,
    })
    assert sink.wait_for(lambda s: len(s.messages) >= 2000, 40), len(sink.messages)
    data = [m["data"]["n"] for m in sink.messages]
    assert data == sent == list(range(1, 2001))
    assert contiguous(sink.by_source()["flaky"], 2000)
    assert app.metric("ingest_source_connects_total", source="flaky") >= 7
    assert app.metric("ingest_source_up", source="flaky") == 1
    assert app.process.poll() is None
    disconnects = [e for e in app.logs() if e["event"] == "source_disconnected"]
    assert disconnects and disconnects[0]["code"] == 1006 and disconnects[0]["source"] == "flaky"
    assert app.terminate() == 0


def test_a_sink_outage_loses_nothing_that_was_read(sink, servers, service):
    feed = servers(feed_handler(6000, name="steady", interval=0.001))
    app = service({"INGEST_SOURCE_URLS": feed.url, "INGEST_SINK_URL": sink.url})
    assert sink.wait_for(lambda s: len(s.messages) >= 300, 20)
    sink.server.stop()
    time.sleep(3)
    assert app.metric("ingest_sink_up") == 0
    sink.server.start()
    assert sink.wait_for(lambda s: len({m["seq"] for m in s.messages}) >= 6000, 40)
    received = app.metric("ingest_messages_received_total", source=feed.url[5:])
    seqs = sink.by_source()[feed.url[5:]]
    assert sorted(set(seqs)) == list(range(1, int(received) + 1))
    # Resends come back in order, so the first appearances are in order too.
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == sorted(first_seen)
    assert sink.connections == 2
    assert app.metric("ingest_sink_up") == 1
    assert app.terminate() == 0


def test_frames_lost_with_a_broken_sink_connection_are_resent(servers, service):
    from support.servers import Sink

    # The sink stops reading after 517 envelopes, mid-batch, and its connection dies: what was
    # in flight is gone, and only the ping that was never answered tells the service so.
    sink = Sink(cut_after=517)
    try:
        feed = servers(feed_handler(20_000, name="steady", interval=0.0001))  # outlasts the cut
        app = service({"INGEST_SOURCE_URLS": feed.url, "INGEST_SINK_URL": sink.url})
        source = feed.url[5:]
        assert sink.wait_for(lambda s: len({m["seq"] for m in s.messages}) >= 20_000, 40)
        seqs = sink.by_source()[source]
        assert sorted(set(seqs)) == list(range(1, 20_001))
        first_seen = list(dict.fromkeys(seqs))
        assert first_seen == sorted(first_seen)
        assert app.metric("ingest_sink_retries_total") >= 1
        assert sink.connections == 2
        failed = [e for e in app.logs() if e["event"] == "sink_write_failed"]
        assert failed and failed[0]["unsent"] >= 1
        assert app.terminate() == 0
    finally:
        sink.close()


GARBAGE: list[str | bytes] = [
    tick("g", 1),
    "not json {",
    b"\xff\xfe\x00 not utf-8",
    json.dumps({"big": "x" * 2000}),  # over max_message_bytes=1000, under 16x
    "",
    tick("g", 6),
]


def garbage_env(url, sink_url, **extra):
    return {"INGEST_SOURCES": json.dumps([{"name": "g", "url": url, "max_message_bytes": 1000}]),
            "INGEST_SINK_URL": sink_url, **extra}


def test_garbage_is_counted_and_skipped_under_drop(sink, servers, service):
    feed = servers(script_handler(GARBAGE))
    app = service(garbage_env(feed.url, sink.url))
    assert sink.wait_for(lambda s: len(s.messages) >= 2)
    time.sleep(0.3)
    assert [(m["seq"], m["data"]["n"]) for m in sink.messages] == [(1, 1), (6, 6)]
    assert app.metric("ingest_messages_received_total", source="g") == 6
    assert app.metric("ingest_messages_invalid_total", source="g", reason="decode") == 3
    assert app.metric("ingest_messages_invalid_total", source="g", reason="too_large") == 1
    warnings = [e for e in app.logs() if e["event"] == "invalid_messages"]
    assert warnings and warnings[0]["source"] == "g"
    assert set(warnings[0]["counts"]) <= {"decode", "too_large"} and warnings[0]["example"]
    assert app.process.poll() is None
    assert app.terminate() == 0


def test_garbage_goes_to_the_dead_letter_socket(sink, servers, service):
    from support.servers import Sink

    dead = Sink()
    try:
        feed = servers(script_handler(GARBAGE))
        app = service(garbage_env(feed.url, sink.url, INGEST_ON_INVALID="dead-letter",
                                  INGEST_DEAD_LETTER_URL=dead.url))
        assert dead.wait_for(lambda s: len(s.messages) >= 4)
        assert sink.wait_for(lambda s: len(s.messages) >= 2)
        records = dead.messages
        assert [(r["seq"], r["reason"]) for r in records] == [
            (2, "decode"), (3, "decode"), (4, "too_large"), (5, "decode")]
        assert records[0]["raw"] == "not json {" and records[0]["source"] == "g"
        assert {m["seq"] for m in sink.messages} | {r["seq"] for r in records} == set(range(1, 7))
        assert app.terminate() == 0
        assert dead.close_codes == [1000]
    finally:
        dead.close()


def test_a_frame_over_the_library_limit_closes_with_1009_and_reconnects(sink, servers, service):
    codes: list[int | None] = []
    feed = servers(script_handler([tick("g", 1), "x" * 20_000, tick("g", 3)], codes))
    app = service(garbage_env(feed.url, sink.url))  # 16 x 1000 < 20000
    assert sink.wait_for(lambda s: len(s.messages) >= 2, 20)
    assert codes[0] == 1009
    assert app.metric("ingest_messages_invalid_total", source="g", reason="too_large") >= 1
    assert app.metric("ingest_source_connects_total", source="g") >= 2
    assert app.terminate() == 0


def test_fail_policy_stops_with_an_error(sink, servers, service):
    feed = servers(script_handler(GARBAGE))
    app = service(garbage_env(feed.url, sink.url, INGEST_ON_INVALID="fail"))
    assert app.process.wait(30) == 1
    failed = [e for e in app.logs() if e["event"] == "failed"]
    assert failed and "seq 2: decode" in failed[0]["error"]


def test_sigterm_while_flowing_flushes_and_closes_with_1000(sink, servers, service):
    codes: list[int | None] = []
    feed_codes: list[int | None] = []

    async def recording(ws):
        await feed_handler(100_000, name="f", interval=0.0002)(ws)
        feed_codes.append(ws.close_code)

    feed = servers(recording)
    app = service({"INGEST_SOURCE_URLS": feed.url, "INGEST_SINK_URL": sink.url})
    assert sink.wait_for(lambda s: len(s.messages) >= 1000, 20)
    started = time.monotonic()
    assert app.terminate(timeout=5) == 0
    assert time.monotonic() - started < 5
    assert sink.wait_for(lambda s: len(s.close_codes) == 1, 5)
    codes = sink.close_codes
    assert codes == [1000]
    assert feed_codes == [1000]
    seqs = sink.by_source()[feed.url[5:]]
    assert contiguous(seqs, len(seqs))  # what was read before the stop was written
    stopped = [e for e in app.logs() if e["event"] == "source_stopped"]
    assert len(stopped) == 1 and seqs[-1] >= 1000


def flowing_then_sink_down(sink, servers, service, shutdown_timeout_ms: int):
    """A service whose worker waits in write_batch, holding a batch it cannot write."""
    feed = servers(feed_handler(100_000, name="f", interval=0.001))
    app = service({"INGEST_SOURCE_URLS": feed.url, "INGEST_SINK_URL": sink.url,
                   "INGEST_SHUTDOWN_TIMEOUT_MS": str(shutdown_timeout_ms)})
    assert sink.wait_for(lambda s: len(s.messages) >= 100, 20)
    sink.server.stop()
    time.sleep(0.5)
    return app


def test_sigterm_with_the_sink_down_gives_up_after_the_shutdown_timeout(sink, servers, service):
    app = flowing_then_sink_down(sink, servers, service, 1000)
    started = time.monotonic()
    assert app.terminate(timeout=10) == 0
    assert time.monotonic() - started < 5
    unsent = [e for e in app.logs() if e["event"] == "sink_unsent_at_shutdown"]
    assert unsent and all(e["messages"] >= 1 for e in unsent)


def test_a_second_signal_aborts(sink, servers, service):
    app = flowing_then_sink_down(sink, servers, service, 30_000)
    app.stop()  # waits up to 30 s for the sink...
    assert holds_for(lambda: app.process.poll() is None, 0.5)
    app.process.send_signal(signal.SIGTERM)
    assert app.process.wait(5) == 130  # ...unless told twice
    assert any(e["event"] == "aborted" for e in app.logs())


def test_two_workers_four_feeds_keep_per_feed_order(sink, servers, service):
    feeds = [servers(feed_handler(2000, name=f"w{i}", interval=0.0003)) for i in range(4)]
    app = service({"INGEST_SOURCE_URLS": ",".join(f.url for f in feeds),
                   "INGEST_SINK_URL": sink.url, "INGEST_WORKERS": "2"})
    assert sink.wait_for(lambda s: len(s.messages) >= 8000, 40), len(sink.messages)
    by_source = sink.by_source()
    assert len(by_source) == 4
    for seqs in by_source.values():
        assert contiguous(seqs, 2000)
    assert sink.connections == 2  # one sink connection per worker
    partitions = {e["partition"] for e in app.logs() if e["event"] == "source_connected"}
    assert partitions == {"feeds-0", "feeds-1"}  # one partition per worker
    assert app.terminate() == 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_feeds_cost_little_cpu(sink, servers, service):
    feeds = [servers(script_handler([])) for _ in range(4)]
    app = service({"INGEST_SOURCE_URLS": ",".join(f.url for f in feeds),
                   "INGEST_SINK_URL": sink.url})
    app.wait_ready()
    time.sleep(1)
    before, started = cpu_seconds(app.process.pid), time.monotonic()
    time.sleep(5)
    share = (cpu_seconds(app.process.pid) - before) / (time.monotonic() - started)
    print(f"4 idle feeds: {share:.1%} of one core")
    assert share < 0.05
    assert app.terminate() == 0


def test_linger_makes_fewer_larger_batches_and_keeps_everything(sink, servers, service):
    counts = {}
    for linger in ("0", "20"):
        feed = servers(feed_handler(1000, name="l", interval=0.001))  # 1000 msg/s
        app = service({"INGEST_SOURCE_URLS": feed.url, "INGEST_SINK_URL": sink.url,
                       "INGEST_BATCH_LINGER_MS": linger})
        source = feed.url[5:]
        assert sink.wait_for(
            lambda s, source=source: sum(m["source"] == source for m in s.messages) >= 1000)
        assert sink.by_source()[source] == list(range(1, 1001))
        counts[linger] = app.metric("ingest_source_batch_size_count", source=source)
        assert app.terminate() == 0
    print("polls handing over 1000 messages at 1000 msg/s:", counts)
    assert counts["20"] * 3 < counts["0"]  # 20 ms of linger: ~20 per batch rather than ~1
