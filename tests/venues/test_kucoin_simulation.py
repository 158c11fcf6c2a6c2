"""The KuCoin simulation checked with a plain websockets client (no ws-ingest)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from support.wait import until
from tests.venues._sim_a import Client, check_feed_settings, env_feed
from tests.venues.kucoin import KucoinSimulation

# Switch on once FeedSettings takes the venue keys (heartbeat, control, subscribe_ack, ...).
VENUE_KEYS_LANDED = True


@pytest.fixture
def sim() -> Iterator[KucoinSimulation]:
    simulation = KucoinSimulation()
    simulation.start()
    yield simulation
    simulation.close()


def test_env_file_validates_with_the_service_settings(sim: KucoinSimulation) -> None:
    feed = env_feed("kucoin")
    assert feed["url"].startswith("wss://ws-api-spot.kucoin.com/?token=")
    check_feed_settings(feed, venue_keys_landed=VENUE_KEYS_LANDED)
    check_feed_settings({**feed, **sim.feed_overrides()}, venue_keys_landed=VENUE_KEYS_LANDED)


def test_pinging_client_stays_a_silent_one_is_dropped(sim: KucoinSimulation) -> None:
    feed = {**env_feed("kucoin"), **sim.feed_overrides()}

    async def scenario() -> None:
        async with Client(feed) as good, Client(feed, heartbeat=False) as silent:
            await until(lambda: silent.closed, 10, "the silent client dropped")
            await until(lambda: sim.client_heartbeats >= 3, 10, "three heartbeats")
            # The client's own view: the third pong may still be on its way when the
            # simulation has counted the third heartbeat.
            await until(lambda: good.control().count({"id": "hb", "type": "pong"}) >= 3
                        and len(good.data()) >= 5, 10, "three pongs and five tickers read")
            assert not good.closed
        assert sim.dropped == ["missed heartbeat (client silent)"]
        control, data = good.control(), good.data()
        welcome, ack, *pongs = control
        assert welcome == {"id": welcome["id"], "type": "welcome"} and welcome["id"]
        assert ack == {"id": "sub-1", "type": "ack"}
        assert len(pongs) >= 3 and all(pong == {"id": "hb", "type": "pong"} for pong in pongs)
        assert len(data) >= 5 and all(sim.is_data(frame) for frame in data)

    asyncio.run(scenario())


def test_ticker_frames_have_the_documented_fields(sim: KucoinSimulation) -> None:
    feed = {**env_feed("kucoin"), **sim.feed_overrides()}
    feed["subscribe"] = [{**feed["subscribe"][0], "topic": "/market/ticker:BTC-USDT,ETH-USDT"}]

    async def scenario() -> list[Any]:
        async with Client(feed) as client:
            await until(lambda: len(client.data()) >= 10, 2, "ten tickers")
            return client.data()

    frames = asyncio.run(scenario())
    assert {frame["topic"] for frame in frames} == {"/market/ticker:BTC-USDT",
                                                    "/market/ticker:ETH-USDT"}
    for frame in frames:
        assert frame["type"] == "message" and frame["subject"] == "trade.ticker"
        assert set(frame["data"]) == {"sequence", "price", "size", "bestAsk", "bestAskSize",
                                      "bestBid", "bestBidSize", "time"}
        assert isinstance(frame["data"]["time"], int) and frame["data"]["sequence"].isdigit()


def test_refused_subscription_and_bad_token(sim: KucoinSimulation) -> None:
    feed = {**env_feed("kucoin"), **sim.feed_overrides(), **sim.bad_subscribe()}
    stale = {**feed, "url": feed["url"].replace("token=", "token=expired")}

    async def scenario() -> tuple[list[Any], Client]:
        async with Client(feed) as client, Client(stale) as refused:
            await until(lambda: len(client.control()) >= 2 and refused.closed, 2, "refusals")
            return client.control(), refused

    (welcome, error), refused = asyncio.run(scenario())
    assert welcome["type"] == "welcome"
    assert error == {"id": "sub-1", "type": "error", "code": 404,
                     "data": "topic /market/ticker:BTC-USDX is not found"}
    assert refused.control() == [{"id": refused.control()[0]["id"], "type": "error",
                                  "code": 401, "data": "token is invalid"}]
    assert sim.subscriptions == 0 and sim.dropped == ["bad token"]
