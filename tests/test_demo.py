"""The demo feed and receiver, as docker compose runs them, with the service between them."""

from __future__ import annotations

import json
import subprocess
import sys

from app.demo.receiver import Tally
from support.service import ROOT, free_port, http_get
from support.wait import wait_until


def test_tally_counts_gaps_and_repeats():
    tally = Tally()
    for seq in (1, 2, 5, 5, 6):
        tally.add(json.dumps({"source": "a", "seq": seq, "data": {}}))
    tally.add("not json")
    tally.add(json.dumps([{"source": "b", "seq": 1}, {"source": "b", "seq": 2}]))
    assert tally.counts()["sources"] == {
        "a": {"count": 5, "last_seq": 6, "gaps": 2, "repeats": 1},
        "b": {"count": 2, "last_seq": 2, "gaps": 0, "repeats": 0},
    }
    assert tally.messages == 7 and tally.invalid == 1


def test_demo_feed_to_receiver_through_the_service(service):
    feed_port, receiver_port = free_port(), free_port()
    demos = [
        subprocess.Popen([sys.executable, "-m", "app.demo.feed", "--port", str(feed_port),
                          "--rate", "500"], cwd=ROOT, stdout=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "app.demo.receiver", "--port",
                          str(receiver_port), "--every", "1"], cwd=ROOT, stdout=subprocess.PIPE,
                         text=True),
    ]
    try:
        subscribe = [{"type": "subscribe", "channels": ["ticker"]}]
        sources = [{"name": venue, "url": f"ws://127.0.0.1:{feed_port}/{venue}",
                    "subscribe": subscribe} for venue in ("alpha", "beta")]
        app = service({"INGEST_SOURCES": json.dumps(sources),
                       "INGEST_SINK_URL": f"ws://127.0.0.1:{receiver_port}/ingest"})
        app.wait_ready()
        counts: dict = {}

        def both_venues_arrived() -> bool:
            counts.update(json.loads(http_get(f"http://127.0.0.1:{receiver_port}/counts")[1]))
            return all(counts["sources"].get(v, {}).get("count", 0) >= 500
                       for v in ("alpha", "beta"))

        wait_until(both_venues_arrived, 20, interval=0.2)
        assert sorted(counts["sources"]) == ["alpha", "beta"]
        for venue in ("alpha", "beta"):
            assert counts["sources"][venue]["gaps"] == 0
            assert counts["sources"][venue]["repeats"] == 0
        last = counts["last"]
        assert set(last) == {"source", "seq", "received_at", "data"}
        assert last["data"]["venue"] == last["source"] and last["data"]["type"] == "ticker"
        assert http_get(f"http://127.0.0.1:{receiver_port}/healthz")[0] == 200
        assert app.terminate() == 0
    finally:
        for process in demos:
            process.terminate()
            process.wait(10)
    summary = demos[1].stdout.read()
    assert "receiver: " in summary and "alpha:seq=" in summary
