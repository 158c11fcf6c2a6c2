"""Self-test of the Deribit simulation, with a plain websockets client configured from
config/venues/deribit.env (scaled by the simulation's feed_overrides)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.settings import FeedSettings
from tests.venues._client_b import BASE_KEYS, follow, load_feed
from tests.venues.deribit import SIMULATION, DeribitSimulation

# Switch on once FeedSettings knows the venue keys (heartbeat, replies, control, ...).
VENUE_KEYS_LANDED = True


@pytest.fixture
def sim() -> Iterator[DeribitSimulation]:
    simulation = SIMULATION()
    simulation.start()
    yield simulation
    simulation.close()


def test_rule_following_client_stays_through_three_heartbeats(sim: DeribitSimulation) -> None:
    feed = load_feed("deribit") | sim.feed_overrides()
    session = asyncio.run(follow(feed, lambda s: sim.pings_answered >= 3, timeout=4))

    assert sim.pings_answered >= 3 and sim.pings_sent == sim.pings_answered
    assert sim.dropped == [] and sim.connections == 1 and session.close_code is None
    assert [a["result"] for a in session.acks[:2]] == ["ok", ["book.BTC-PERPETUAL.100ms"]]
    assert sim.subscriptions == 1 and session.errors == []
    # only data frames are left over as data; every control frame is recognised as such
    assert session.data and all(sim.is_data(frame) for frame in session.data)
    assert not any(sim.is_data(f) for f in session.control + session.acks)
    beats = {f["params"]["type"] for f in session.control if "params" in f}
    assert beats == {"heartbeat", "test_request"} and session.replies_sent >= 3
    assert sum(f.get("result", {}).get("version") is not None for f in session.control) >= 2


def test_data_frames_have_the_documented_fields(sim: DeribitSimulation) -> None:
    feed = load_feed("deribit") | sim.feed_overrides()
    session = asyncio.run(follow(feed, lambda s: len(s.data) >= 5, timeout=3))

    frames = [f["params"] for f in session.data]
    assert all(f["channel"] == "book.BTC-PERPETUAL.100ms" for f in frames)
    first, *changes = [f["data"] for f in frames]
    assert first["type"] == "snapshot" and "prev_change_id" not in first
    previous = first["change_id"]
    for change in changes:  # change_ids skip numbers; prev_change_id chains them
        assert change["type"] == "change" and change["prev_change_id"] == previous
        assert change["change_id"] > previous
        assert change["instrument_name"] == "BTC-PERPETUAL" and change["bids"][0][0] == "change"
        previous = change["change_id"]
    assert abs(changes[-1]["timestamp"] / 1000 - time.time()) < 5


def test_client_ignoring_test_request_is_dropped(sim: DeribitSimulation) -> None:
    feed = load_feed("deribit") | sim.feed_overrides()
    session = asyncio.run(follow(feed, lambda s: False, timeout=3, obey=False))

    assert session.close_code == 1000 and session.close_reason == "missed heartbeat"
    assert sim.dropped == ["missed heartbeat"] and sim.pings_answered == 0


def test_bad_subscribe_gets_the_json_rpc_error(sim: DeribitSimulation) -> None:
    feed = load_feed("deribit") | sim.bad_subscribe()
    session = asyncio.run(follow(feed, lambda s: bool(s.errors), timeout=2))

    [error] = session.errors
    assert error["id"] == 2 and error["jsonrpc"] == "2.0"
    assert error["error"] == {"code": -32602, "message": "Invalid params",
                              "data": {"reason": "value must be a list", "param": "channels"}}
    assert sim.subscriptions == 0 and not session.data


def test_interval_below_minimum_and_unknown_channel(sim: DeribitSimulation) -> None:
    feed: dict[str, Any] = load_feed("deribit") | sim.feed_overrides()
    feed["subscribe"][0]["params"]["interval"] = sim.MIN_INTERVAL / 2
    feed["subscribe"][1]["params"]["channels"] = ["book.BTC-PERPETUA.100ms"]
    session = asyncio.run(follow(feed, lambda s: len(s.errors) + len(s.acks) >= 2, timeout=2))

    assert session.errors[0]["error"]["code"] == -32602
    assert session.acks[0]["result"] == []  # the venue leaves unknown channels out
    assert sim.subscriptions == 0


def test_env_file_validates_with_the_service_settings() -> None:
    feed = load_feed("deribit")
    FeedSettings.model_validate({k: v for k, v in feed.items() if k in BASE_KEYS})
    assert feed["url"] == "wss://www.deribit.com/ws/api/v2"
    assert feed["subscribe"][0]["params"]["interval"] >= 10  # the venue's minimum
    if VENUE_KEYS_LANDED:
        check_full_feed_settings(feed)


def check_full_feed_settings(feed: dict[str, Any]) -> None:
    settings = FeedSettings.model_validate(feed)
    assert settings.name == "deribit-btc-perpetual-book"
