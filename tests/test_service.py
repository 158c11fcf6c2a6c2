"""`python -m app` end to end, as an operator runs it: exit codes, signals, shutdown."""

from __future__ import annotations

import signal
import time

from support.servers import GARBAGE, contiguous, feed_handler, garbage_env, script_handler
from support.wait import holds_for, wait_until


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
    wait_until(lambda: app.metric("ingest_sink_up") == 0)
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
