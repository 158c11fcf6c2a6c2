"""status.py: what is up, from what the partitions report (no metrics written here)."""

from app.status import ConnectionStatus


def test_not_ready_before_anything_is_registered():
    assert ConnectionStatus().readiness() == {"ready": False, "sources_down": [], "sink_up": False}


def test_ready_only_when_every_feed_and_sink_is_up():
    status = ConnectionStatus()
    status.set_source("a", False)
    status.set_source("b", False)
    status.set_sink("sink-0", True)
    status.set_source("a", True)
    assert status.readiness() == {"ready": False, "sources_down": ["b"], "sink_up": True}
    assert not status.source_up("b")
    status.set_source("b", True)
    assert status.readiness()["ready"] is True
    assert status.source_up("b")
    status.set_sink("sink-1", False)
    assert status.readiness() == {"ready": False, "sources_down": [], "sink_up": False}
    assert not status.sink_up()
