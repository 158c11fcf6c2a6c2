"""The sink partitions in process: keepalive, framing, outages and resends, dead letters."""

from __future__ import annotations

import gc
import json
import threading
import time
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry

from app.envelope import Encoded
from app.flow import _Delivery
from app.metrics import Metrics
from app.retry import Backoff
from app.settings import SinkOptions
from app.sink.sink import _SinkPartition
from app.status import ConnectionStatus
from support.servers import (
    GARBAGE,
    CuttingProxy,
    Sink,
    feed_handler,
    garbage_env,
    script_handler,
    tick,
)
from support.wait import holds_for, wait_until


def test_an_idle_sink_connection_answers_the_servers_pings(servers, dataflow):
    # The sink server drops a client that leaves a ping unanswered for 0.3 s. The service's
    # sink loop runs in a thread of its own, so it answers while no data flows.
    sink = Sink(ping_interval=0.2, ping_timeout=0.3)
    try:
        feed = servers(script_handler([tick("f", 1)]))
        app = dataflow({"INGEST_SOURCE_URLS": feed.url, "INGEST_SINK_URL": sink.url})
        assert sink.wait_for(lambda s: len(s.messages) == 1)
        # Ten ping intervals without data, and the connection holds.
        assert holds_for(lambda: sink.connections == 1 and sink.close_codes == [], 3)
        assert app.metric("ingest_sink_up") == 1
        app.stop()
    finally:
        sink.close()



@pytest.mark.parametrize("confirm", ["ping", "none"])
def test_batch_framing_sends_json_arrays(sink, servers, dataflow, confirm):
    feed = servers(feed_handler(3000, name="b"))
    app = dataflow({"INGEST_SOURCE_URLS": feed.url, "INGEST_SINK_URL": sink.url,
                   "INGEST_SINK_FRAMING": "batch", "INGEST_SINK_CONFIRM": confirm})
    assert sink.wait_for(lambda s: len(s.messages) >= 3000)
    assert all(frame.startswith("[") for frame in sink.raw_frames)
    assert len(sink.raw_frames) < 3000  # batches, not one frame per message
    assert sink.by_source()[feed.url[5:]] == list(range(1, 3001))
    wait_until(lambda: app.metric("ingest_messages_sent_total") == 3000)
    app.stop()




def test_a_sink_outage_loses_nothing_that_was_read(sink, servers, dataflow):
    feed = servers(feed_handler(6000, name="steady", interval=0.001))
    app = dataflow({"INGEST_SOURCE_URLS": feed.url, "INGEST_SINK_URL": sink.url})
    assert sink.wait_for(lambda s: len(s.messages) >= 300, 20)
    sink.server.stop()
    wait_until(lambda: app.metric("ingest_sink_up") == 0)
    assert holds_for(lambda: app.metric("ingest_sink_up") == 0, 2)  # an outage of 2 s
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
    app.stop()



def test_frames_lost_with_a_broken_sink_connection_are_resent(servers, dataflow):
    from support.servers import Sink

    # The sink stops reading after 517 envelopes, mid-batch, and its connection dies: what was
    # in flight is gone, and only the ping that was never answered tells the service so.
    sink = Sink(cut_after=517)
    try:
        feed = servers(feed_handler(20_000, name="steady", interval=0.0001))  # outlasts the cut
        app = dataflow({"INGEST_SOURCE_URLS": feed.url, "INGEST_SINK_URL": sink.url})
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
        app.stop()
    finally:
        sink.close()



def test_garbage_goes_to_the_dead_letter_socket(sink, servers, dataflow):
    from support.servers import Sink

    dead = Sink()
    try:
        feed = servers(script_handler(GARBAGE))
        app = dataflow(garbage_env(feed.url, sink.url, INGEST_ON_INVALID="dead-letter",
                                  INGEST_DEAD_LETTER_URL=dead.url))
        assert dead.wait_for(lambda s: len(s.messages) >= 4)
        assert sink.wait_for(lambda s: len(s.messages) >= 2)
        records = dead.messages
        assert [(r["seq"], r["reason"]) for r in records] == [
            (2, "decode"), (3, "decode"), (4, "too_large"), (5, "decode")]
        assert records[0]["raw"] == "not json {" and records[0]["source"] == "g"
        assert {m["seq"] for m in sink.messages} | {r["seq"] for r in records} == set(range(1, 7))
        app.stop()
        assert dead.wait_for(lambda s: s.close_codes == [1000], 5), dead.close_codes
    finally:
        dead.close()




def test_a_sink_that_takes_1000_frames_per_connection_gets_every_batch(servers, dataflow):
    # Batches of up to 3 000 frames: a resend of the whole batch would never get through. With
    # acks nothing is lost (with pings, frames the sink's stack took but its application never
    # read would be: see the README's Delivery section).
    sink = Sink(close_after=1000, ack=True, close_timeout=0.1)
    try:
        feed = servers(feed_handler(6000, name="big"))
        app = dataflow({"INGEST_SOURCES": json.dumps([{"name": "big", "url": feed.url}]),
                        "INGEST_SINK_URL": sink.url, "INGEST_BATCH_SIZE": "3000",
                        "INGEST_SINK_CONFIRM": "ack"})
        assert sink.wait_for(lambda s: {m["seq"] for m in s.messages} >= set(range(1, 6001)), 40)
        seqs = sink.by_source()["big"]
        assert list(dict.fromkeys(seqs)) == list(range(1, 6001))  # in order, resends included
        assert sink.connections >= 6
        app.stop()
    finally:
        sink.close()


def test_with_acks_a_sink_that_closes_mid_stream_loses_nothing(servers, dataflow):
    sink = Sink(close_after=700, ack=True, close_timeout=0.1)
    try:
        feed = servers(feed_handler(5000, name="acked", interval=0.0002))
        app = dataflow({"INGEST_SOURCES": json.dumps([{"name": "acked", "url": feed.url}]),
                        "INGEST_SINK_URL": sink.url, "INGEST_SINK_CONFIRM": "ack"})
        assert sink.wait_for(lambda s: {m["seq"] for m in s.messages} >= set(range(1, 5001)), 40)
        assert sink.connections >= 7
        wait_until(lambda: app.metric("ingest_messages_sent_total") == 5000)
        app.stop()
    finally:
        sink.close()


def test_an_envelope_over_the_sink_limit_is_too_large_and_the_rest_flows(sink, servers,
                                                                          dataflow):
    big = json.dumps({"blob": "x" * 5000})
    feed = servers(script_handler([tick("s", 1), big, tick("s", 3)]))
    app = dataflow({"INGEST_SOURCES": json.dumps([{"name": "s", "url": feed.url}]),
                    "INGEST_SINK_URL": sink.url, "INGEST_SINK_MAX_MESSAGE_BYTES": "4096"})
    assert sink.wait_for(lambda s: len(s.messages) >= 2)
    assert [m["seq"] for m in sink.messages] == [1, 3]
    assert app.metric("ingest_messages_invalid_total", source="s", reason="too_large") == 1
    app.stop()


def test_a_sink_with_a_smaller_limit_refuses_one_frame_and_the_rest_flows(servers, dataflow):
    sink = Sink(max_size=2000)  # closes with 1009 on a frame over 2 000 bytes
    try:
        frames = [tick("s", 1), json.dumps({"blob": "x" * 3000}), tick("s", 3), tick("s", 4)]
        feed = servers(script_handler(frames))
        app = dataflow({"INGEST_SOURCES": json.dumps([{"name": "s", "url": feed.url}]),
                        "INGEST_SINK_URL": sink.url})
        assert sink.wait_for(lambda s: {m["seq"] for m in s.messages} >= {1, 3, 4}, 20)
        events = [e["event"] for e in app.logs()]
        assert "sink_message_too_big" in events and "sink_frame_refused" in events
        app.stop()
    finally:
        sink.close()


def _partition(url: str, metrics: Metrics, confirm: str, **options: float) -> _SinkPartition:
    """A sink partition in this process (worker 0), message framing."""
    settings = SinkOptions(name="sink", url=url, headers={}, framing="message", confirm=confirm,
                           max_message_bytes=1 << 20, reconnect=Backoff(0.05, 0.1),
                           shutdown_timeout_s=5, **options)
    return _SinkPartition(settings, ConnectionStatus(), metrics, threading.Event(),
                          _Delivery(metrics), 0)


def test_a_pong_that_never_comes_fails_the_write_after_ping_timeout_and_it_is_resent():
    # The network path to the sink freezes (nothing the service sends arrives, the connection
    # stays open): only the missing pong tells. After ping_timeout the connection is dropped
    # and the batch is resent on a new one.
    sink = Sink()
    proxy = CuttingProxy(sink.server.port)
    metrics = Metrics(CollectorRegistry())
    partition = _partition(f"ws://127.0.0.1:{proxy.port}", metrics, "ping", ping_timeout_s=0.5)
    try:
        envelope = json.dumps({"source": "f", "seq": 1, "data": {}}).encode()
        batch = [[Encoded("f", [envelope], [time.time()], [1])]]
        partition.write_batch(batch)
        assert sink.wait_for(lambda s: len(s.messages) == 1)
        proxy.cut(after_s=60)  # frozen, not closed: no close frame, no reset
        started = time.monotonic()
        partition.write_batch(batch)
        took = time.monotonic() - started
        assert 0.5 <= took < 5
        assert metrics.registry.get_sample_value("ingest_sink_retries_total") == 1
        assert sink.wait_for(lambda s: len(s.messages) == 2) and sink.connections == 2
    finally:
        partition.close()
        proxy.close()
        sink.close()


@pytest.mark.parametrize("confirm", ["ping", "none", "ack"])
def test_writes_leave_no_reference_cycles(confirm):
    # Every cycle left behind is work for the garbage collector, whose collections pause every
    # feed of the worker: with 1 000 feeds, the cycle each write left (9 objects) made a
    # collection every few dozen writes. Collected by hand here (the collector off meanwhile).
    sink = Sink(ack=confirm == "ack")
    partition = _partition(sink.url, Metrics(CollectorRegistry()), confirm)
    envelope = json.dumps({"source": "f", "seq": 1, "data": {}}).encode()
    batch = [[Encoded("f", [envelope] * 3, [time.time()] * 3, [1, 2, 3])]]
    try:
        partition.write_batch(batch)  # connected, and whatever a first write sets up
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(200):
                partition.write_batch(batch)
            gc.collect()
            left = [type(item).__name__ for item in gc.garbage]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        # A cycle a write would leave hundreds; threads of earlier tests may leave a few.
        assert len(left) < 20, Counter(left).most_common(5)
        assert sink.wait_for(lambda s: len(s.messages) == 3 * 201)
    finally:
        partition.close()
        sink.close()
