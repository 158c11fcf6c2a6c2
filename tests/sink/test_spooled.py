"""The sink with a spool, in process: outages cost no feed, full spools, shutdown and restart."""

from __future__ import annotations

import json
import time

import pytest

from app.feed.seqblocks import SEQ_BLOCK
from support.servers import Sink, feed_handler, tick
from support.wait import holds_for, wait_until

PING_S = 0.5
"""The feed server pings every PING_S and drops a client that does not answer within PING_S."""


def first_seen(seqs: list[int]) -> list[int]:
    return list(dict.fromkeys(seqs))


def spool_env(feed_url: str, sink_url: str, directory: object, **extra: str) -> dict[str, str]:
    return {"INGEST_SOURCES": json.dumps([{"name": "f", "url": feed_url}]),
            "INGEST_SINK_URL": sink_url, "INGEST_SPOOL_DIR": str(directory), **extra}


@pytest.mark.parametrize("spooled", [True, False])
def test_a_sink_outage_costs_no_feed_with_a_spool(servers, dataflow, tmp_path, spooled):
    # 2 000 msg/s from a feed that drops a client leaving its ping unanswered for 0.5 s. The
    # sink goes away for 3 s. Without a spool the worker waits in write_batch, the feed's
    # socket is not read once its buffer is full, and the feed drops us (the control case);
    # with one, the feed is never dropped and every message arrives once the sink is back, in
    # order, none missing.
    total = 12_000
    sink = Sink()
    try:
        feed = servers(feed_handler(total, name="f", interval=0.0005),
                       ping_interval=PING_S, ping_timeout=PING_S)
        env = {"INGEST_SOURCES": json.dumps([{"name": "f", "url": feed.url}]),
               "INGEST_SINK_URL": sink.url}
        if spooled:
            env["INGEST_SPOOL_DIR"] = str(tmp_path / "spool")
        app = dataflow(env)
        assert sink.wait_for(lambda s: len(s.messages) >= 1000, 20)
        sink.server.stop()
        wait_until(lambda: app.metric("ingest_sink_up") == 0)
        outage_started = time.monotonic()
        if not spooled:  # the feed drops us meanwhile; the reader learns it once the sink is back
            assert holds_for(lambda: app.metric("ingest_sink_up") == 0, 2)
            sink.server.start()
            wait_until(lambda: app.metric("ingest_source_connects_total", source="f") >= 2, 10)
            app.stop()
            return
        # Feeds are read on: the spool grows, and the process stays ready.
        wait_until(lambda: app.metric("ingest_spool_messages") > 2000, 10)
        readiness = app.status.readiness()
        assert readiness["ready"] is True and readiness["sink_up"] is False
        assert readiness["spool_bytes"] > 0 and readiness["spool_full"] is False
        assert holds_for(lambda: app.metric("ingest_source_connects_total", source="f") == 1,
                         max(0.0, 3 - (time.monotonic() - outage_started)))
        assert app.metric("ingest_spool_oldest_age_seconds") > 2
        sink.server.start()
        assert sink.wait_for(lambda s: len({m["seq"] for m in s.messages}) >= total, 40)
        seqs = sink.by_source()["f"]
        assert first_seen(seqs) == list(range(1, total + 1))
        assert app.metric("ingest_source_connects_total", source="f") == 1
        assert app.metric("ingest_spool_dropped_total") == 0
        wait_until(lambda: app.metric("ingest_spool_messages") == 0)
        assert app.metric("ingest_spool_bytes") == 0
        assert app.metric("ingest_spool_oldest_age_seconds") == 0
        wait_until(lambda: app.metric("ingest_messages_sent_total") >= total)
        assert app.metric("ingest_message_latency_seconds_count") >= total
        app.stop()
    finally:
        sink.close()


def test_drop_newest_counts_exactly_what_a_full_spool_refused(servers, dataflow, tmp_path):
    total = 3000
    sink = Sink()
    try:
        sink.server.stop()  # down from the start: everything goes to the spool, or is refused
        feed = servers(feed_handler(total, name="f", interval=0.0002))
        app = dataflow(spool_env(feed.url, sink.url, tmp_path / "s",
                                 INGEST_SPOOL_MAX_BYTES="30000",
                                 INGEST_SPOOL_WHEN_FULL="drop_newest", INGEST_BATCH_SIZE="50"))
        wait_until(lambda: app.metric("ingest_messages_received_total", source="f") == total, 20)
        wait_until(lambda: app.metric("ingest_spool_messages")
                   + app.metric("ingest_spool_dropped_total") == total)
        spooled = int(app.metric("ingest_spool_messages"))
        dropped = int(app.metric("ingest_spool_dropped_total"))
        assert 0 < spooled < total and dropped > 0
        assert app.metric("ingest_spool_bytes") <= 30_000
        readiness = app.status.readiness()
        assert readiness["ready"] is False and readiness["spool_full"] is True
        assert any(e["event"] == "spool_full_dropped" for e in app.logs())
        sink.server.start()
        assert sink.wait_for(lambda s: len(s.messages) >= spooled, 20)
        wait_until(lambda: app.metric("ingest_spool_messages") == 0)
        seqs = sink.by_source()["f"]
        assert len(set(seqs)) == spooled == total - dropped  # the rest arrived, once
        assert first_seen(seqs) == sorted(set(seqs))
        assert app.metric("ingest_messages_sent_total") == spooled
        app.stop()
    finally:
        sink.close()


def test_block_is_backpressure_and_drops_nothing(servers, dataflow, tmp_path):
    total = 3000
    sink = Sink()
    try:
        sink.server.stop()
        feed = servers(feed_handler(total, name="f", interval=0.0002))
        app = dataflow(spool_env(feed.url, sink.url, tmp_path / "s",
                                 INGEST_SPOOL_MAX_BYTES="30000", INGEST_BATCH_SIZE="50"))
        wait_until(lambda: app.metric("ingest_spool_bytes") > 25_000, 20)
        # The worker waits for room: reading stops short of the feed's end, nothing dropped.
        assert holds_for(lambda: app.metric("ingest_messages_received_total", source="f")
                         < total, 1)
        assert app.metric("ingest_spool_bytes") <= 30_000
        assert app.status.readiness()["ready"] is False
        sink.server.start()
        assert sink.wait_for(lambda s: len({m["seq"] for m in s.messages}) >= total, 30)
        assert first_seen(sink.by_source()["f"]) == list(range(1, total + 1))
        assert app.metric("ingest_spool_dropped_total") == 0
        assert any(e["event"] == "spool_full_blocking" for e in app.logs())
        app.stop()
    finally:
        sink.close()


def test_a_store_error_is_logged_and_the_batch_waits_losing_nothing(servers, dataflow, tmp_path):
    # SQLite's max_page_count makes the store refuse commits as a full disk does (SQLITE_FULL).
    total = 2000
    sink = Sink()
    try:
        sink.server.stop()
        feed = servers(feed_handler(total, name="f", interval=0.0005))
        app = dataflow(spool_env(feed.url, sink.url, tmp_path / "s", INGEST_BATCH_SIZE="50"))
        wait_until(lambda: app.metric("ingest_spool_messages") > 200, 20)
        spool = app.spool
        assert spool is not None
        with spool._write_lock:  # the writer connection is the worker's: take its lock
            pages = spool._writer.execute("PRAGMA page_count").fetchone()[0]
            spool._writer.execute(f"PRAGMA max_page_count={pages}")
        wait_until(lambda: any(e["event"] == "spool_write_failed" for e in app.logs()))
        failed = next(e for e in app.logs() if e["event"] == "spool_write_failed")
        assert "full" in failed["error"]
        held = app.metric("ingest_spool_messages")
        assert holds_for(lambda: app.metric("ingest_spool_messages") == held, 0.5)
        with spool._write_lock:  # room again
            spool._writer.execute("PRAGMA max_page_count=1073741823")
        sink.server.start()
        assert sink.wait_for(lambda s: len({m["seq"] for m in s.messages}) >= total, 30)
        assert first_seen(sink.by_source()["f"]) == list(range(1, total + 1))
        assert app.metric("ingest_spool_dropped_total") == 0
        app.stop()
    finally:
        sink.close()


def test_sigterm_with_the_sink_down_keeps_the_spool_and_a_restart_sends_it_first(
        servers, dataflow, tmp_path):
    sink = Sink()
    try:
        sink.server.stop()
        first = servers(feed_handler(500, name="f"))
        env = spool_env(first.url, sink.url, tmp_path / "s", INGEST_SHUTDOWN_TIMEOUT_MS="1000")
        app = dataflow(env)
        wait_until(lambda: app.metric("ingest_spool_messages") == 500, 20)
        stopped_at = time.monotonic()
        app.stop(timeout=1 + 2)  # within INGEST_SHUTDOWN_TIMEOUT_MS + 2 s
        assert time.monotonic() - stopped_at < 3
        kept = [e for e in app.logs() if e["event"] == "spool_kept_at_shutdown"]
        assert [e["messages"] for e in kept] == [500]

        # Restarted on the same directory, reading a feed that has more: the spool goes first,
        # and seq goes on after the block the first run reserved.
        sink.server.start()
        second = servers(feed_handler(300, name="f"))
        again = dataflow({**env, "INGEST_SOURCES": json.dumps([{"name": "f", "url": second.url}])})
        assert sink.wait_for(lambda s: len(s.messages) >= 800, 20)
        seqs = sink.by_source()["f"]
        assert seqs == [*range(1, 501), *range(SEQ_BLOCK + 1, SEQ_BLOCK + 301)]
        assert [m["data"]["n"] for m in sink.messages] == [*range(1, 501), *range(1, 301)]
        again.stop()
    finally:
        sink.close()


def test_two_workers_share_one_spool_and_keep_per_feed_order(servers, dataflow, tmp_path):
    feeds = [{"name": name, "url": servers(feed_handler(3000, name=name)).url}
             for name in ("a", "b")]
    sink = Sink()
    try:
        app = dataflow({"INGEST_SOURCES": json.dumps(feeds), "INGEST_SINK_URL": sink.url,
                        "INGEST_SPOOL_DIR": str(tmp_path / "s")}, workers=2)
        assert sink.wait_for(lambda s: len(s.messages) >= 6000, 30)
        by_source = sink.by_source()
        assert by_source["a"] == by_source["b"] == list(range(1, 3001))
        assert app.metric("ingest_sink_up") == 1
        app.stop()
    finally:
        sink.close()


def test_an_idle_spooled_sink_is_ready_and_reports_spool_bytes(servers, dataflow, tmp_path):
    feed = servers(feed_handler(1, name="f"))
    sink = Sink()
    try:
        app = dataflow(spool_env(feed.url, sink.url, tmp_path / "s"))
        assert sink.wait_for(lambda s: len(s.messages) == 1)
        # The spool forgets the message once the sink's confirmation reached the drainer,
        # a moment after the sink has it.
        ready = {"ready": True, "sources_down": [], "sink_up": True, "spool_bytes": 0,
                 "spool_full": False}
        wait_until(lambda: app.status.readiness() == ready,
                   message=lambda: repr(app.status.readiness()))
        assert json.loads(tick("f", 1)) == sink.messages[0]["data"]
        app.stop()
    finally:
        sink.close()
