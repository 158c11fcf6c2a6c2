"""Self-test of the Coinbase Exchange simulation, with a plain websockets client configured from
config/venues/coinbase.env (scaled by the simulation's feed_overrides)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from websockets.asyncio.client import connect

from app.settings import FeedSettings
from tests.venues._client_b import BASE_KEYS, follow, load_feed
from tests.venues.coinbase import SIMULATION, CoinbaseSimulation

# Switch on once FeedSettings knows the venue keys (heartbeat, replies, control, ...).
VENUE_KEYS_LANDED = True


@pytest.fixture
def sim() -> Iterator[CoinbaseSimulation]:
    simulation = SIMULATION()
    simulation.start()
    yield simulation
    simulation.close()


def _heartbeats(session: Any) -> list[dict[str, Any]]:
    return [f for f in session.control if f["type"] == "heartbeat"]


def test_rule_following_client_stays_through_three_heartbeats(sim: CoinbaseSimulation) -> None:
    feed = load_feed("coinbase") | sim.feed_overrides()
    session = asyncio.run(follow(feed, lambda s: len(_heartbeats(s)) >= 6, timeout=3))

    beats = _heartbeats(session)
    assert {b["product_id"] for b in beats} == {"BTC-USD", "ETH-USD"} and len(beats) >= 6
    assert sim.dropped == [] and sim.connections == 1 and session.close_code is None
    [ack] = session.acks
    assert ack == {"type": "subscriptions", "channels": [
        {"name": "ticker", "product_ids": ["BTC-USD", "ETH-USD"]},
        {"name": "heartbeat", "product_ids": ["BTC-USD", "ETH-USD"]}]}
    assert sim.subscriptions == 1 and session.errors == []
    assert session.data and all(sim.is_data(frame) for frame in session.data)
    assert not any(sim.is_data(f) for f in session.control + session.acks)
    assert sim.pings_sent == 0 and sim.client_heartbeats == 0  # none documented


def test_ticker_frames_have_the_documented_fields(sim: CoinbaseSimulation) -> None:
    feed = load_feed("coinbase") | sim.feed_overrides()
    session = asyncio.run(follow(feed, lambda s: len(s.data) >= 6, timeout=3))

    btc = [f for f in session.data if f["product_id"] == "BTC-USD"]
    assert len(btc) >= 2
    for before, after in itertools.pairwise(btc):
        assert after["sequence"] > before["sequence"]
        assert after["trade_id"] == before["trade_id"] + 1
    last = btc[-1]
    assert {"price", "best_bid", "best_ask", "side", "last_size", "volume_24h"} <= last.keys()
    assert isinstance(last["price"], str) and last["side"] in ("buy", "sell")
    assert last["time"].endswith("Z")
    sent_at = datetime.fromisoformat(last["time"].replace("Z", "+00:00")).timestamp()
    assert abs(sent_at - time.time()) < 5
    beat = _heartbeats(session)
    assert all({"sequence", "last_trade_id", "time"} <= b.keys() for b in beat)


def test_client_that_does_not_subscribe_is_dropped(sim: CoinbaseSimulation) -> None:
    async def silent() -> tuple[int | None, float]:
        started = time.monotonic()
        async with connect(sim.url()) as ws:
            await asyncio.wait_for(ws.wait_closed(), 3)
            return ws.close_code, time.monotonic() - started

    code, after = asyncio.run(silent())
    assert code == 1000 and sim.dropped == ["no subscribe"]
    assert after >= sim.SUBSCRIBE_WITHIN * 0.9


def test_bad_subscribe_gets_the_error_frame(sim: CoinbaseSimulation) -> None:
    feed = load_feed("coinbase") | sim.bad_subscribe()
    session = asyncio.run(follow(feed, lambda s: bool(s.errors), timeout=2))

    assert session.errors == [{"type": "error", "message": "Failed to subscribe",
                               "reason": "BTC-USDX is not a valid product"}]
    assert sim.subscriptions == 0 and not session.data and not session.acks


def test_other_refusals(sim: CoinbaseSimulation) -> None:
    feed: dict[str, Any] = load_feed("coinbase") | sim.feed_overrides() | {"subscribe": [
        {"type": "subscribe", "product_ids": ["BTC-USD"], "channels": []},
        {"type": "subscribe", "channels": ["heartbeat"]},
        {"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["tickers"]}]}
    session = asyncio.run(follow(feed, lambda s: len(s.errors) >= 3, timeout=2))

    assert [e["reason"] for e in session.errors] == [
        "No channels provided",
        "You need to specify at least one product ID for channel heartbeat",
        "tickers is not a valid channel"]


def test_env_file_validates_with_the_service_settings() -> None:
    feed = load_feed("coinbase")
    FeedSettings.model_validate({k: v for k, v in feed.items() if k in BASE_KEYS})
    assert feed["url"] == "wss://ws-feed.exchange.coinbase.com"
    if VENUE_KEYS_LANDED:
        check_full_feed_settings(feed)


def check_full_feed_settings(feed: dict[str, Any]) -> None:
    settings = FeedSettings.model_validate(feed)
    assert settings.name == "coinbase-btc-eth-usd-ticker"
