"""The sink and the transform hook end to end: keepalive while idle, framing, confirmation."""

from __future__ import annotations

import base64
import json
import time

import pytest

from support.servers import Sink, feed_handler, script_handler, tick


def test_an_idle_sink_connection_answers_the_servers_pings(servers, service):
    # The sink server drops a client that leaves a ping unanswered for 0.3 s. The service's
    # sink loop runs in a thread of its own, so it answers while no data flows.
    sink = Sink(ping_interval=0.2, ping_timeout=0.3)
    try:
        feed = servers(script_handler([tick("f", 1)]))
        app = service({"INGEST_SOURCE_URLS": feed.url, "INGEST_SINK_URL": sink.url})
        assert sink.wait_for(lambda s: len(s.messages) == 1)
        time.sleep(3)  # ten ping intervals without data
        assert sink.connections == 1 and sink.close_codes == []
        assert app.metric("ingest_sink_up") == 1
        assert app.terminate() == 0
    finally:
        sink.close()


@pytest.mark.parametrize("confirm", ["ping", "none"])
def test_batch_framing_sends_json_arrays(sink, servers, service, confirm):
    feed = servers(feed_handler(3000, name="b"))
    app = service({"INGEST_SOURCE_URLS": feed.url, "INGEST_SINK_URL": sink.url,
                   "INGEST_SINK_FRAMING": "batch", "INGEST_SINK_CONFIRM": confirm})
    assert sink.wait_for(lambda s: len(s.messages) >= 3000)
    assert all(frame.startswith("[") for frame in sink.raw_frames)
    assert len(sink.raw_frames) < 3000  # batches, not one frame per message
    assert sink.by_source()[feed.url[5:]] == list(range(1, 3001))
    assert app.metric("ingest_messages_sent_total") == 3000
    assert app.terminate() == 0


def test_the_transform_hook_changes_and_drops(sink, servers, service):
    feed = servers(feed_handler(100, name="t"))
    app = service({"INGEST_SOURCE_URLS": feed.url, "INGEST_SINK_URL": sink.url,
                   "INGEST_TRANSFORM": "tests.transforms:odd_only"})
    assert sink.wait_for(lambda s: len(s.messages) >= 50)
    time.sleep(0.2)
    assert [m["seq"] for m in sink.messages] == list(range(1, 101, 2))
    assert all(m["tagged"] for m in sink.messages)
    assert app.metric("ingest_messages_dropped_total", source=feed.url[5:]) == 50
    assert app.metric("ingest_messages_received_total", source=feed.url[5:]) == 100
    assert app.terminate() == 0


def test_a_silent_feed_is_reconnected_after_idle_timeout(sink, servers, service):
    feed = servers(script_handler([tick("quiet", 1)]))  # one tick per connection, then silence
    sources = [{"name": "quiet", "url": feed.url, "idle_timeout": 0.5}]
    app = service({"INGEST_SOURCES": json.dumps(sources), "INGEST_SINK_URL": sink.url})
    assert sink.wait_for(lambda s: len(s.messages) >= 3, 15)
    assert sink.by_source()["quiet"][:3] == [1, 2, 3]  # seq goes on across reconnects
    assert app.metric("ingest_source_connects_total", source="quiet") >= 3
    assert any(e["event"] == "source_idle" for e in app.logs())
    assert app.terminate() == 0


def test_text_payload_mode_forwards_text_and_base64_binary(sink, servers, service):
    feed = servers(script_handler(["plain text, not JSON", b"\x00\xffbinary", '{"a": 1}']))
    app = service({"INGEST_SOURCE_URLS": feed.url, "INGEST_SINK_URL": sink.url,
                   "INGEST_PAYLOAD": "text"})
    assert sink.wait_for(lambda s: len(s.messages) >= 3)
    assert [m["data"] for m in sink.messages] == [
        "plain text, not JSON", base64.b64encode(b"\x00\xffbinary").decode(), '{"a": 1}']
    assert app.metric("ingest_bytes_received_total", source=feed.url[5:]) == 20 + 8 + 8
    assert app.terminate() == 0
