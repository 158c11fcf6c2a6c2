from prometheus_client import REGISTRY

from app.status import ConnectionStatus


def test_not_ready_before_anything_is_registered():
    assert ConnectionStatus().readiness() == {"ready": False, "sources_down": [], "sink_up": False}


def test_ready_only_when_every_feed_and_sink_is_up():
    status = ConnectionStatus()
    status.add_source("status-a")
    status.add_source("status-b")
    status.set_sink("sink-0", True)
    status.set_source("status-a", True)
    assert status.readiness() == {"ready": False, "sources_down": ["status-b"], "sink_up": True}
    assert REGISTRY.get_sample_value("ingest_source_up", {"source": "status-b"}) == 0
    status.set_source("status-b", True)
    assert status.readiness()["ready"] is True
    assert REGISTRY.get_sample_value("ingest_source_up", {"source": "status-b"}) == 1
    status.set_sink("sink-1", False)
    assert status.readiness() == {"ready": False, "sources_down": [], "sink_up": False}
    assert REGISTRY.get_sample_value("ingest_sink_up") == 0
