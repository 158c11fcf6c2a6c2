"""status.py: what is up, from what the partitions report (no metrics written here)."""

from app.status import ConnectionStatus


def test_not_ready_before_anything_is_registered():
    assert ConnectionStatus().readiness() == {"ready": False, "sources_down": [], "sink_up": False}


def test_ready_only_when_every_feed_and_sink_is_up():
    status = ConnectionStatus()
    a, b = status.feed("a", 10), status.feed("b", 10)
    status.set_sink("sink-0", True)
    a.connected = True
    a.seen()
    assert status.readiness() == {"ready": False, "sources_down": ["b"], "sink_up": True}
    assert not status.source_up("b")
    b.connected = True
    b.seen()
    assert status.readiness()["ready"] is True
    assert status.source_up("b")
    status.set_sink("sink-1", False)
    assert status.readiness() == {"ready": False, "sources_down": [], "sink_up": False}
    assert not status.sink_up()


def test_a_connected_feed_without_recent_evidence_is_not_up():
    status = ConnectionStatus()
    feed = status.feed("quiet", stale_after=5)
    feed.connected = True
    feed.alive_at = 100.0
    assert feed.up(104.9)
    assert not feed.up(105.1)  # connected, but nothing checked it for longer than stale_after


def test_without_a_cluster_every_configured_feed_must_be_registered_to_be_ready():
    status = ConnectionStatus(["a", "b"], all_local=True)
    status.set_sink("sink-0", True)  # the sink partition is built before the source's
    a = status.feed("a", 10)
    a.connected = True
    a.seen()
    assert status.readiness() == {"ready": False, "sources_down": ["b"], "sink_up": True}


def test_with_a_spool_that_takes_batches_a_sink_outage_keeps_the_process_ready():
    from app.status import SpoolState

    status = ConnectionStatus()
    state = SpoolState(0, True)
    status.set_spool(lambda: state)
    feed = status.feed("a", 10)
    feed.connected = True
    feed.seen()
    status.set_sink("sink-spool", False)
    state = SpoolState(5000, True)
    assert status.readiness() == {"ready": True, "sources_down": [], "sink_up": False,
                                  "spool_bytes": 5000, "spool_full": False}
    state = SpoolState(9000, False)  # full: the outage now holds the workers back
    assert status.readiness() == {"ready": False, "sources_down": [], "sink_up": False,
                                  "spool_bytes": 9000, "spool_full": True}
    status.set_sink("sink-spool", True)
    assert status.readiness()["ready"] is True  # the sink drains it
    feed.connected = False
    assert status.readiness()["ready"] is False
