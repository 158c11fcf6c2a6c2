"""The source partitions in process: real feeds on 127.0.0.1, the real dataflow, a real sink."""

from __future__ import annotations

import base64
import json
import socket

from support.servers import GARBAGE, contiguous, feed_handler, garbage_env, script_handler, tick
from support.wait import wait_until


def test_three_feeds_with_header_and_subscribe_arrive_complete_and_in_order(
        sink, servers, dataflow):
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
    app = dataflow({"INGEST_SOURCES": json.dumps(sources), "INGEST_SINK_URL": sink.url})
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
    assert "t0ken" not in repr(app.logs())
    app.stop()



def test_a_feed_that_drops_is_reconnected_and_resubscribed(sink, servers, dataflow):
    sent: list[int] = []
    feed = servers(feed_handler(2000, drop_every=300, require_subscribe="hello", sent=sent))
    app = dataflow({
        "INGEST_SOURCES": json.dumps([{"name": "flaky", "url": feed.url, "subscribe": ["hello"]}]),
        "INGEST_SINK_URL": sink.url,
    })
    assert sink.wait_for(lambda s: len(s.messages) >= 2000, 40), len(sink.messages)
    data = [m["data"]["n"] for m in sink.messages]
    assert data == sent == list(range(1, 2001))
    assert contiguous(sink.by_source()["flaky"], 2000)
    assert app.metric("ingest_source_connects_total", source="flaky") >= 7
    assert app.metric("ingest_source_up", source="flaky") == 1
    assert app.running
    disconnects = [e for e in app.logs() if e["event"] == "source_disconnected"]
    assert disconnects and disconnects[0]["code"] == 1006 and disconnects[0]["source"] == "flaky"
    app.stop()





def test_garbage_is_counted_and_skipped_under_drop(sink, servers, dataflow):
    feed = servers(script_handler(GARBAGE))
    app = dataflow(garbage_env(feed.url, sink.url))
    wait_until(lambda: app.metric("ingest_messages_invalid_total", source="g",
                                  reason="too_large") == 1)
    assert sink.wait_for(lambda s: len(s.messages) >= 2)
    assert [(m["seq"], m["data"]["n"]) for m in sink.messages] == [(1, 1), (6, 6)]
    assert app.metric("ingest_messages_received_total", source="g") == 6
    assert app.metric("ingest_messages_invalid_total", source="g", reason="decode") == 3
    assert app.metric("ingest_messages_invalid_total", source="g", reason="too_large") == 1
    warnings = [e for e in app.logs() if e["event"] == "invalid_messages"]
    assert warnings and warnings[0]["source"] == "g"
    assert set(warnings[0]["counts"]) <= {"decode", "too_large"} and warnings[0]["example"]
    assert app.running
    app.stop()



def test_a_frame_over_the_library_limit_closes_with_1009_and_reconnects(sink, servers, dataflow):
    codes: list[int | None] = []
    feed = servers(script_handler([tick("g", 1), "x" * 20_000, tick("g", 3)], codes))
    app = dataflow(garbage_env(feed.url, sink.url))  # 16 x 1000 < 20000
    assert sink.wait_for(lambda s: len(s.messages) >= 2, 20)
    assert codes[0] == 1009
    assert app.metric("ingest_messages_invalid_total", source="g", reason="too_large") >= 1
    assert app.metric("ingest_source_connects_total", source="g") >= 2
    app.stop()



def test_two_workers_four_feeds_keep_per_feed_order(sink, servers, dataflow):
    feeds = [servers(feed_handler(2000, name=f"w{i}", interval=0.0003)) for i in range(4)]
    app = dataflow({"INGEST_SOURCE_URLS": ",".join(f.url for f in feeds),
                    "INGEST_SINK_URL": sink.url}, workers=2)
    assert sink.wait_for(lambda s: len(s.messages) >= 8000, 40), len(sink.messages)
    by_source = sink.by_source()
    assert len(by_source) == 4
    for seqs in by_source.values():
        assert contiguous(seqs, 2000)
    assert sink.connections == 2  # one sink connection per worker
    partitions = {e["partition"] for e in app.logs() if e["event"] == "source_connected"}
    assert partitions == {"feeds-0", "feeds-1"}  # one partition per worker
    app.stop()



def test_linger_makes_fewer_larger_batches_and_keeps_everything(sink, servers, dataflow):
    counts = {}
    for linger in ("0", "20"):
        feed = servers(feed_handler(1000, name="l", interval=0.001))  # 1000 msg/s
        app = dataflow({"INGEST_SOURCE_URLS": feed.url, "INGEST_SINK_URL": sink.url,
                       "INGEST_BATCH_LINGER_MS": linger})
        source = feed.url[5:]
        assert sink.wait_for(
            lambda s, source=source: sum(m["source"] == source for m in s.messages) >= 1000)
        assert sink.by_source()[source] == list(range(1, 1001))
        counts[linger] = app.metric("ingest_source_batch_size_count", source=source)
        app.stop()
    print("polls handing over 1000 messages at 1000 msg/s:", counts)
    assert counts["20"] * 3 < counts["0"]  # 20 ms of linger: ~20 per batch rather than ~1



def test_no_poll_hands_over_more_than_batch_size_of_a_feed(sink, servers, dataflow):
    # A fast feed: one socket read holds many frames, more than INGEST_BATCH_SIZE; the rest of
    # the read waits for the next poll (and reading pauses meanwhile).
    feed = servers(feed_handler(3000, name="fast"))
    app = dataflow({"INGEST_SOURCES": json.dumps([{"name": "fast", "url": feed.url}]),
                    "INGEST_SINK_URL": sink.url, "INGEST_BATCH_SIZE": "5"})
    assert sink.wait_for(lambda s: len(s.messages) >= 3000, 30), len(sink.messages)
    assert sink.by_source()["fast"] == list(range(1, 3001))
    polls = app.metric("ingest_source_batch_size_count", source="fast")
    assert polls is not None and polls >= 600
    assert app.metric("ingest_source_batch_size_bucket", source="fast", le="5.0") == polls
    app.stop()


def test_a_silent_feed_is_reconnected_after_idle_timeout(sink, servers, dataflow):
    feed = servers(script_handler([tick("quiet", 1)]))  # one tick per connection, then silence
    sources = [{"name": "quiet", "url": feed.url, "idle_timeout": 0.5}]
    app = dataflow({"INGEST_SOURCES": json.dumps(sources), "INGEST_SINK_URL": sink.url})
    assert sink.wait_for(lambda s: len(s.messages) >= 3, 15)
    assert sink.by_source()["quiet"][:3] == [1, 2, 3]  # seq goes on across reconnects
    assert app.metric("ingest_source_connects_total", source="quiet") >= 3
    assert any(e["event"] == "source_idle" for e in app.logs())
    app.stop()



def test_text_payload_mode_forwards_text_and_base64_binary(sink, servers, dataflow):
    feed = servers(script_handler(["plain text, not JSON", b"\x00\xffbinary", '{"a": 1}']))
    app = dataflow({"INGEST_SOURCE_URLS": feed.url, "INGEST_SINK_URL": sink.url,
                   "INGEST_PAYLOAD": "text"})
    assert sink.wait_for(lambda s: len(s.messages) >= 3)
    assert [m["data"] for m in sink.messages] == [
        "plain text, not JSON", base64.b64encode(b"\x00\xffbinary").decode(), '{"a": 1}']
    assert app.metric("ingest_bytes_received_total", source=feed.url[5:]) == 20 + 8 + 8
    app.stop()



def test_failed_attempts_are_counted_by_reason(sink, dataflow):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{probe.getsockname()[1]}"
        app = dataflow({"INGEST_SOURCES": json.dumps([{"name": "gone", "url": url}]),
                        "INGEST_SINK_URL": sink.url})
        wait_until(lambda: (app.metric("ingest_source_connect_failures_total", source="gone",
                                       reason="refused") or 0) >= 2)
    assert app.metric("ingest_source_up", source="gone") == 0
    assert app.status.readiness()["sources_down"] == ["gone"]
    failed = [e for e in app.logs() if e["event"] == "source_connect_failed"]
    assert failed[0]["reason"] == "refused" and failed[0]["source"] == "gone"
    app.stop()
