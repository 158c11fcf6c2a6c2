"""The whole dataflow in process: the transform hook between envelope and sink."""

from __future__ import annotations

from support.servers import feed_handler
from support.wait import wait_until


def test_the_transform_hook_changes_and_drops(sink, servers, dataflow):
    feed = servers(feed_handler(100, name="t"))
    app = dataflow({"INGEST_SOURCE_URLS": feed.url, "INGEST_SINK_URL": sink.url,
                   "INGEST_TRANSFORM": "tests.transforms:odd_only"})
    assert sink.wait_for(lambda s: len(s.messages) >= 50)
    wait_until(lambda: app.metric("ingest_messages_received_total", source=feed.url[5:]) == 100)
    assert [m["seq"] for m in sink.messages] == list(range(1, 101, 2))
    assert all(m["tagged"] for m in sink.messages)
    assert app.metric("ingest_messages_dropped_total", source=feed.url[5:]) == 50
    assert app.metric("ingest_messages_received_total", source=feed.url[5:]) == 100
    app.stop()


