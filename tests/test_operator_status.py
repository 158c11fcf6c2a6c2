"""Issue 15: before its dataflow runs, a process is not healthy and no feed of it is up."""

from app.status import ConnectionStatus


def test_before_the_dataflow_runs_every_configured_feed_is_down():
    status = ConnectionStatus(["b", "a"])
    assert status.readiness() == {"ready": False, "sources_down": ["a", "b"], "sink_up": False}
    status.running = True  # handed to Bytewax, which has built nothing yet (peers missing)
    assert not status.running
    status.set_sink("sink-0", True)  # a partition is built: the dataflow runs
    assert status.running
    # Now only the feeds this process reads count (the others are another process's).
    feed = status.feed("a", stale_after=10)
    feed.connected = True
    feed.seen()
    assert status.readiness() == {"ready": True, "sources_down": [], "sink_up": True}
    status.running = False  # the flow has ended
    assert not status.running
