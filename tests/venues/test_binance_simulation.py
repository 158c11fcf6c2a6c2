"""The Binance simulation checked with a plain websockets client (no ws-ingest)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from support.wait import until
from tests.venues._sim_a import Client, check_feed_settings, env_feed
from tests.venues.binance import BinanceSimulation

# Switch on once FeedSettings takes the venue keys (subscribe_ack, rotate_*, sequence, ...).
VENUE_KEYS_LANDED = True


@pytest.fixture
def sim() -> Iterator[BinanceSimulation]:
    simulation = BinanceSimulation()
    simulation.start()
    yield simulation
    simulation.close()


def test_env_file_validates_with_the_service_settings(sim: BinanceSimulation) -> None:
    feed = env_feed("binance")
    assert feed["url"] == "wss://stream.binance.com:9443/ws"
    assert feed["rotate_on"] == {"e": "serverShutdown"} and feed["rotate_after"] < 24 * 3600
    check_feed_settings(feed, venue_keys_landed=VENUE_KEYS_LANDED)
    check_feed_settings({**feed, **sim.feed_overrides()}, venue_keys_landed=VENUE_KEYS_LANDED)


def test_ponging_client_stays_a_stalled_one_is_dropped(sim: BinanceSimulation) -> None:
    feed = {**env_feed("binance"), **sim.feed_overrides()}

    async def scenario() -> None:
        # `read=False`: the client stops reading, so its pongs stop too (a stalled consumer).
        async with Client(feed) as good, Client(feed, read=False):
            await until(lambda: bool(sim.dropped), 3, "the stalled client dropped")
            await until(lambda: sim.pings_answered >= 3, 10, "three pongs")
            await until(lambda: len(good.data()) >= 5, 10, "five tickers read")
            assert not good.closed
        assert sim.dropped == ["missed heartbeat (no pong within a minute)"]
        control, data = good.control(), good.data()
        assert control == [{"result": None, "id": 1}]
        assert len(data) >= 5 and all(sim.is_data(frame) for frame in data)

    asyncio.run(scenario())
    assert sim.subscriptions == 2 and sim.client_heartbeats == 0


def test_trade_events_have_the_documented_fields_on_raw_and_combined_streams(
        sim: BinanceSimulation) -> None:
    raw = {**env_feed("binance"), **sim.feed_overrides()}
    combined = {**raw, "subscribe": [],
                "url": raw["url"].replace("/ws", "/stream?streams=btcusdt@trade/ethusdt@trade")}

    async def scenario() -> tuple[list[Any], list[Any]]:
        async with Client(raw) as one, Client(combined) as two:
            await until(lambda: len(one.data()) >= 5 and len(two.data()) >= 10, 2, "trades")
            return one.data(), two.data()

    events, wrapped = asyncio.run(scenario())
    for event in events:
        assert set(event) == {"e", "E", "s", "t", "p", "q", "T", "m", "M"}
        assert event["e"] == "trade" and event["s"] == "BTCUSDT"
    ids = [event["t"] for event in events]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "trade ids count up by one"
    assert {frame["stream"] for frame in wrapped} == {"btcusdt@trade", "ethusdt@trade"}
    assert all(frame["data"]["s"] == frame["stream"].split("@")[0].upper() for frame in wrapped)


def test_refused_subscription_and_malformed_requests_get_error_frames(
        sim: BinanceSimulation) -> None:
    feed = {**env_feed("binance"), **sim.feed_overrides(), **sim.bad_subscribe()}
    feed["subscribe"] = [*feed["subscribe"], "{oops", {"method": "SUBSCRIBE", "id": 2.5,
                                                       "params": ["btcusdt@trade"]}]

    async def scenario() -> list[Any]:
        async with Client(feed) as client:
            await until(lambda: len(client.control()) >= 3, 2, "three error frames")
            return client.control()

    invalid, not_json, bad_id = asyncio.run(scenario())
    assert invalid == {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 1}
    assert not_json["error"]["code"] == 3 and not_json["error"]["msg"].startswith("Invalid JSON")
    assert bad_id["error"] == {"code": 2,
                               "msg": "Invalid request: request ID must be an unsigned integer"}
    assert sim.subscriptions == 0


def test_server_shutdown_event_then_close(sim: BinanceSimulation) -> None:
    feed = {**env_feed("binance"), **sim.feed_overrides()}

    async def scenario() -> None:
        async with Client(feed) as client:
            await until(lambda: sim.subscriptions == 1, 2, "the subscription")
            sim.send_notice()
            await until(lambda: client.closed, 2, "the close after serverShutdown")
            notices = [frame for frame in client.control() if "e" in frame]
            assert len(notices) == 1 and notices[0]["e"] == "serverShutdown"
            assert isinstance(notices[0]["E"], int) and not sim.is_data(notices[0])

    asyncio.run(scenario())
    assert sim.dropped == []
