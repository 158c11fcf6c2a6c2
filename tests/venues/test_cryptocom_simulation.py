"""Self-test of the Crypto.com Exchange v1 market-data simulation, with a plain websockets
client configured from config/venues/cryptocom.env (scaled by the simulation's feed_overrides)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.settings import FeedSettings
from tests.venues._client_b import BASE_KEYS, follow, load_feed
from tests.venues._sim_b import now_ms
from tests.venues.cryptocom import SIMULATION, CryptocomSimulation

# Switch on once FeedSettings knows the venue keys (heartbeat, replies, control, ...).
VENUE_KEYS_LANDED = True


@pytest.fixture
def sim() -> Iterator[CryptocomSimulation]:
    simulation = SIMULATION()
    simulation.start()
    yield simulation
    simulation.close()


def test_rule_following_client_stays_through_three_heartbeats(sim: CryptocomSimulation) -> None:
    feed = load_feed("cryptocom") | sim.feed_overrides()
    session = asyncio.run(follow(feed, lambda s: sim.pings_answered >= 3, timeout=4))

    assert sim.pings_answered >= 3 and session.replies_sent >= 3
    assert sim.dropped == [] and sim.connections == 1 and session.close_code is None
    assert session.acks == [{"id": 1, "method": "subscribe", "code": 0}]
    assert sim.subscriptions == 1 and session.errors == []
    heartbeats = session.control
    assert all(h["method"] == "public/heartbeat" and h["code"] == 0 for h in heartbeats)
    assert session.data and all(sim.is_data(frame) for frame in session.data)
    assert not any(sim.is_data(f) for f in session.control + session.acks)


def test_ticker_frames_have_the_documented_fields(sim: CryptocomSimulation) -> None:
    feed = load_feed("cryptocom") | sim.feed_overrides()
    session = asyncio.run(follow(feed, lambda s: len(s.data) >= 3, timeout=3))

    frame = session.data[-1]
    assert frame["id"] == -1 and frame["method"] == "subscribe" and frame["code"] == 0
    result = frame["result"]
    assert result["instrument_name"] == "BTCUSD-PERP" and result["channel"] == "ticker"
    assert result["subscription"] == "ticker.BTCUSD-PERP"
    [item] = result["data"]
    assert set(item) == {"h", "l", "a", "c", "b", "bs", "k", "ks", "i", "v", "vv", "oi", "t"}
    assert isinstance(item["a"], str)  # numbers as strings, as documented
    assert abs(item["t"] / 1000 - time.time()) < 5


def test_client_not_answering_heartbeats_is_dropped(sim: CryptocomSimulation) -> None:
    feed = load_feed("cryptocom") | sim.feed_overrides()
    session = asyncio.run(follow(feed, lambda s: False, timeout=3, obey=False))

    assert session.close_code == 1000 and session.close_reason == "missed heartbeat"
    assert sim.dropped == ["missed heartbeat"] and sim.pings_sent == 1
    assert sim.pings_answered == 0


def test_bad_subscribe_gets_the_error_frame(sim: CryptocomSimulation) -> None:
    feed = load_feed("cryptocom") | sim.bad_subscribe()
    session = asyncio.run(follow(feed, lambda s: bool(s.errors), timeout=2))

    assert session.errors == [{"id": 1, "method": "subscribe", "code": 40003,
                               "channel": "ticker.BTCUSD-PERPX", "message": "Unknown symbol"}]
    assert sim.subscriptions == 0 and not session.data


def test_other_refusals(sim: CryptocomSimulation) -> None:
    feed: dict[str, Any] = load_feed("cryptocom") | sim.feed_overrides() | {"subscribe": [
        {"id": 1, "method": "subscribe", "params": {"channels": ["ticker.BTCUSD-PERP"]},
         "nonce": now_ms() - 120_000},
        {"id": 1, "method": "subscribe", "params": {}},
        {"id": 1, "method": "public/get-ticker", "params": {}}]}
    session = asyncio.run(follow(feed, lambda s: len(s.errors) >= 2 and bool(s.data),
                                 timeout=2))

    assert [(e["code"], e["message"]) for e in session.errors] == [
        (40102, "INVALID_NONCE"), (40004, "MISSING_OR_INVALID_ARGUMENT")]
    # an answer to a method the env file never sends: no subscribe_ack match covers it
    assert session.data == [{"id": 1, "method": "public/get-ticker", "code": 40002,
                             "message": "METHOD_NOT_FOUND"}]


def test_env_file_validates_with_the_service_settings() -> None:
    feed = load_feed("cryptocom")
    FeedSettings.model_validate({k: v for k, v in feed.items() if k in BASE_KEYS})
    assert feed["url"] == "wss://stream.crypto.com/exchange/v1/market"
    if VENUE_KEYS_LANDED:
        check_full_feed_settings(feed)


def check_full_feed_settings(feed: dict[str, Any]) -> None:
    settings = FeedSettings.model_validate(feed)
    assert settings.name == "cryptocom-btcusd-perp-ticker"
