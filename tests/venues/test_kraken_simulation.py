"""Self-test of the Kraken spot v2 simulation, with a plain websockets client configured from
config/venues/kraken.env (scaled by the simulation's feed_overrides)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from app.settings import FeedSettings
from tests.venues._client_b import BASE_KEYS, Session, follow, load_feed
from tests.venues.kraken import SIMULATION, KrakenSimulation

# Switch on once FeedSettings knows the venue keys (heartbeat, replies, control, ...).
VENUE_KEYS_LANDED = True


@pytest.fixture
def sim() -> Iterator[KrakenSimulation]:
    simulation = SIMULATION()
    simulation.start()
    yield simulation
    simulation.close()


def _beats(session: Session) -> int:
    return sum(f.get("channel") == "heartbeat" for f in session.control)


def test_rule_following_client_stays_through_three_heartbeats(sim: KrakenSimulation) -> None:
    feed = load_feed("kraken") | sim.feed_overrides()
    session = asyncio.run(follow(
        feed, lambda s: s.heartbeat_replies >= 3 and _beats(s) >= 3, timeout=4))

    assert session.heartbeat_replies >= 3 and sim.client_heartbeats >= 3 and _beats(session) >= 3
    assert sim.dropped == [] and sim.connections == 1 and session.close_code is None
    assert [(a["req_id"], a["result"]["symbol"]) for a in session.acks] == [
        (1, "BTC/USD"), (2, "ETH/USD")]
    assert sim.subscriptions == 2 and session.errors == []
    status = session.control[0]
    assert status["channel"] == "status" and status["data"][0]["system"] == "online"
    assert session.data and all(sim.is_data(frame) for frame in session.data)
    assert not any(sim.is_data(f) for f in session.control + session.acks)
    assert sim.pings_sent == 0  # Kraken sends no pings of its own


def test_ticker_frames_have_the_documented_fields(sim: KrakenSimulation) -> None:
    feed = load_feed("kraken") | sim.feed_overrides()
    session = asyncio.run(follow(feed, lambda s: len(s.data) >= 6, timeout=3))

    by_symbol: dict[str, list[dict[str, Any]]] = {}
    for frame in session.data:
        [item] = frame["data"]
        by_symbol.setdefault(item["symbol"], []).append(frame)
    assert set(by_symbol) == {"BTC/USD", "ETH/USD"}
    for frames in by_symbol.values():
        assert [f["type"] for f in frames] == ["snapshot"] + ["update"] * (len(frames) - 1)
    item = session.data[-1]["data"][0]
    assert {"bid", "bid_qty", "ask", "ask_qty", "last", "volume", "vwap", "low", "high",
            "change", "change_pct"} <= item.keys()
    assert all(isinstance(item[k], float) for k in ("bid", "ask", "last"))  # numbers, not text
    sent_at = datetime.fromisoformat(item["timestamp"].replace("Z", "+00:00")).timestamp()
    assert abs(sent_at - time.time()) < 5
    ack = session.acks[0]
    assert ack["success"] is True and {"time_in", "time_out"} <= ack.keys()


def test_client_that_never_pings_is_kept(sim: KrakenSimulation) -> None:
    # Kraken documents no drop for a client that does not ping: the simulation keeps it.
    feed = load_feed("kraken") | sim.feed_overrides()
    session = asyncio.run(follow(feed, lambda s: _beats(s) >= 3, timeout=4, obey=False))

    assert _beats(session) >= 3 and session.close_code is None
    assert sim.dropped == [] and sim.client_heartbeats == 0


def test_bad_subscribe_gets_the_error_frame(sim: KrakenSimulation) -> None:
    feed = load_feed("kraken") | sim.bad_subscribe()
    session = asyncio.run(follow(feed, lambda s: bool(s.errors), timeout=2))

    [error] = session.errors
    assert error["error"] == "Currency pair not supported BTC/USDX"
    assert error["method"] == "subscribe" and error["success"] is False
    assert error["req_id"] == 1 and error["symbol"] == "BTC/USDX"
    assert sim.subscriptions == 0 and not session.data


def test_one_ack_per_symbol_of_one_request(sim: KrakenSimulation) -> None:
    feed: dict[str, Any] = load_feed("kraken") | sim.feed_overrides() | {"subscribe": [
        {"method": "subscribe", "params": {"channel": "ticker",
                                           "symbol": ["BTC/USD", "ETH/USD", "BTCUSD"]},
         "req_id": 7}]}
    session = asyncio.run(follow(feed, lambda s: len(s.acks) + len(s.errors) >= 3, timeout=2))

    assert [a["result"]["symbol"] for a in session.acks] == ["BTC/USD", "ETH/USD"]
    assert session.errors[0]["error"] == "Currency pair not in ISO 4217-A3 format BTCUSD"


def test_env_file_validates_with_the_service_settings() -> None:
    feed = load_feed("kraken")
    FeedSettings.model_validate({k: v for k, v in feed.items() if k in BASE_KEYS})
    assert feed["url"] == "wss://ws.kraken.com/v2"
    # one subscribe message per symbol, since Kraken acks per symbol
    assert all(len(m["params"]["symbol"]) == 1 for m in feed["subscribe"])
    if VENUE_KEYS_LANDED:
        check_full_feed_settings(feed)


def check_full_feed_settings(feed: dict[str, Any]) -> None:
    settings = FeedSettings.model_validate(feed)
    assert settings.name == "kraken-btc-eth-usd-ticker"
