"""Every venue simulation end to end against `python -m app`, configured from its
config/venues/<venue>.env (timings scaled down by the simulation's feed_overrides()).

One service process reads all nine venues at once (as an operator would run several venues),
through at least three heartbeat cycles each: no reconnect, only data frames at the sink, no
invalid frame, every server ping answered. Then each venue refuses a subscription, and the
service must say so: counted, logged with the venue's own words, the feed down in /readyz.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from dotenv import dotenv_values

from support.service import ROOT
from support.wait import wait_until

VENUES = ["okx", "htx", "binance", "bybit", "kucoin", "deribit", "coinbase", "kraken",
          "cryptocom"]


def env_feed(venue: str) -> dict[str, Any]:
    values = dotenv_values(Path(ROOT, "config", "venues", f"{venue}.env"))
    feeds = json.loads(values["INGEST_SOURCES"] or "[]")
    assert len(feeds) == 1, f"{venue}.env: one feed expected"
    return dict(feeds[0])


def local_feed(venue: str, sim: Any, *extra: dict[str, Any]) -> dict[str, Any]:
    """The env file's feed with the simulation's overrides: never the real venue's address."""
    feed = env_feed(venue)
    for overrides in (sim.feed_overrides(), *extra):
        feed.update(overrides)
    assert urlsplit(feed["url"]).hostname == "127.0.0.1", feed["url"]
    return feed


@pytest.fixture
def simulations():
    started = {}
    for venue in VENUES:
        sim = importlib.import_module(f"tests.venues.{venue}").SIMULATION()
        sim.start()
        started[venue] = sim
    yield started
    for sim in started.values():
        sim.close()


def cycles(sim: Any) -> int:
    return int(sim.pings_sent) + int(sim.client_heartbeats)


def test_every_venue_stays_connected_and_only_data_reaches_the_sink(simulations, sink, service):
    feeds = [local_feed(venue, sim) | {"name": venue} for venue, sim in simulations.items()]
    app = service({"INGEST_SOURCES": json.dumps(feeds), "INGEST_SINK_URL": sink.url})
    app.wait_ready()

    def three_cycles_each() -> bool:
        return all(cycles(sim) >= 3 or (
            sim.pings_sent == sim.client_heartbeats == 0 and (app.metric(
                "ingest_control_messages_total", source=venue, kind="control") or 0) >= 3)
            for venue, sim in simulations.items())

    wait_until(three_cycles_each, 20, interval=0.1, message=lambda: str(
        {venue: (sim.pings_sent, sim.client_heartbeats) for venue, sim in simulations.items()}))
    samples = app.metrics()
    by_source = sink.by_source()
    for venue, sim in simulations.items():
        assert sim.connections == 1 and not sim.dropped, (venue, sim.connections, sim.dropped)
        assert sim.pings_answered >= sim.pings_sent - 1, venue  # the last may be in flight
        assert app.metric("ingest_source_connects_total", source=venue) == 1, venue
        assert by_source.get(venue), f"{venue}: no data reached the sink"
        invalid = sum(value for (name, labels), value in samples.items()
                      if name == "ingest_messages_invalid_total" and ("source", venue) in labels)
        assert invalid == 0, venue
        control = sum(value for (name, labels), value in samples.items()
                      if name == "ingest_control_messages_total" and ("source", venue) in labels)
        assert control >= 1, venue
    for message in sink.messages:
        sim = simulations[message["source"]]
        assert sim.is_data(message["data"]), message
    assert app.terminate() == 0


def test_every_venue_refusing_a_subscription_is_counted_logged_and_down(simulations, sink,
                                                                         service):
    feeds = [local_feed(venue, sim, sim.bad_subscribe()) | {"name": venue}
             for venue, sim in simulations.items()]
    app = service({"INGEST_SOURCES": json.dumps(feeds), "INGEST_SINK_URL": sink.url,
                   "INGEST_RECONNECT_MIN_MS": "2000", "INGEST_RECONNECT_MAX_MS": "2000"})
    app.wait_serving()

    def every_venue_failed() -> bool:
        return all((app.metric("ingest_subscribe_failures_total", source=venue) or 0) >= 1
                   for venue in simulations)

    wait_until(every_venue_failed, 20, interval=0.1, message=lambda: str(
        {venue: app.metric("ingest_subscribe_failures_total", source=venue)
         for venue in simulations}))
    status, body = app.get("/readyz")
    assert status == 503
    assert set(json.loads(body)["sources_down"]) == set(simulations)
    failed = {e["source"]: e["error"] for e in app.logs()
              if e["event"] == "source_subscribe_failed"}
    assert set(failed) == set(simulations)
    assert not sink.messages  # nothing was forwarded as data, no error frame either
    assert app.terminate() == 0
