"""The Bybit simulation checked with a plain websockets client (no ws-ingest)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from support.wait import until
from tests.venues._sim_a import Client, check_feed_settings, env_feed
from tests.venues.bybit import BybitSimulation

# Switch on once FeedSettings takes the venue keys (heartbeat, subscribe_ack, event_time).
VENUE_KEYS_LANDED = True


class QuickCut(BybitSimulation):
    """10 minutes is 6 s at the simulation's scale; these tests take it at 1/1000 (0.6 s), and
    the 30 s scan with it."""

    IDLE_CUT = 0.6
    SCAN = 0.03


@pytest.fixture
def sim() -> Iterator[BybitSimulation]:
    simulation = QuickCut()
    simulation.start()
    yield simulation
    simulation.close()


def test_env_file_validates_with_the_service_settings(sim: BybitSimulation) -> None:
    feed = env_feed("bybit")
    assert feed["url"] == "wss://stream.bybit.com/v5/public/spot"
    check_feed_settings(feed, venue_keys_landed=VENUE_KEYS_LANDED)
    check_feed_settings({**feed, **sim.feed_overrides()}, venue_keys_landed=VENUE_KEYS_LANDED)


def test_idle_client_is_cut_pinging_and_subscribed_clients_stay(sim: BybitSimulation) -> None:
    feed = {**env_feed("bybit"), **sim.feed_overrides()}

    async def scenario() -> None:
        async with Client(feed) as good, Client(feed, heartbeat=False) as streaming, \
                Client(feed, subscribe=False, heartbeat=False) as idle:
            await until(lambda: idle.closed, 10, "the idle client cut")
            await until(lambda: sim.client_heartbeats >= 3, 10, "three heartbeats")
            # The client's own view: its third pong may still be on its way.
            await until(lambda: len(good.control()) >= 4 and len(good.data()) >= 5, 10,
                        "the subscribe reply, three pongs and five tickers read")
            # Stream data alone keeps a connection, as the docs say; the pings are the safety.
            assert not good.closed and not streaming.closed
        assert sim.dropped == ["no ping-pong and no data for 10 minutes"]
        control, data = good.control(), good.data()
        assert control[0] == {"success": True, "ret_msg": "subscribe",
                              "conn_id": control[0]["conn_id"], "req_id": "sub-1",
                              "op": "subscribe"}
        pongs = control[1:]
        assert len(pongs) >= 3 and all(
            pong == {"success": True, "ret_msg": "pong", "conn_id": control[0]["conn_id"],
                     "op": "ping"} for pong in pongs)
        assert len(data) >= 5 and all(sim.is_data(frame) for frame in data)

    asyncio.run(scenario())


def test_ticker_and_trade_frames_have_the_documented_fields(sim: BybitSimulation) -> None:
    feed = {**env_feed("bybit"), **sim.feed_overrides()}
    feed["subscribe"] = [{"req_id": "sub-1", "op": "subscribe",
                          "args": ["tickers.BTCUSDT", "publicTrade.BTCUSDT"]}]

    async def scenario() -> list[Any]:
        async with Client(feed) as client:
            await until(lambda: len(client.data()) >= 10, 2, "ten frames")
            return client.data()

    frames = asyncio.run(scenario())
    tickers = [frame for frame in frames if frame["topic"] == "tickers.BTCUSDT"]
    trades = [frame for frame in frames if frame["topic"] == "publicTrade.BTCUSDT"]
    assert tickers and trades
    for frame in tickers:
        assert set(frame) == {"topic", "ts", "type", "cs", "data"}
        assert set(frame["data"]) == {"symbol", "lastPrice", "highPrice24h", "lowPrice24h",
                                      "prevPrice24h", "volume24h", "turnover24h",
                                      "price24hPcnt", "usdIndexPrice"}
    for frame in trades:
        (trade,) = frame["data"]
        assert set(trade) == {"T", "s", "S", "v", "p", "L", "i", "BT", "seq"}
    cs = [frame["cs"] for frame in tickers]
    assert cs == sorted(cs)


def test_refused_subscriptions_get_success_false(sim: BybitSimulation) -> None:
    feed = {**env_feed("bybit"), **sim.feed_overrides(), **sim.bad_subscribe()}
    feed["subscribe"] = [*feed["subscribe"],
                         {"op": "subscribe", "args": [f"tickers.BTCUSDT{i}" for i in range(11)]},
                         {"op": "subscribe", "args": ["orderbook.1000.BTCUSDT"]}]

    async def scenario() -> list[Any]:
        async with Client(feed) as client:
            await until(lambda: len(client.control()) >= 3, 2, "three refusals")
            return client.control()

    symbol, too_many, topic = asyncio.run(scenario())
    assert symbol == {"success": False, "ret_msg": "Invalid symbol :[tickers.BTCUSDX]",
                      "conn_id": symbol["conn_id"], "req_id": "sub-1", "op": "subscribe"}
    assert too_many["success"] is False and too_many["ret_msg"] == "args size >10"
    assert topic["ret_msg"] == "error:handler not found,topic:orderbook.1000.BTCUSDT"
    assert sim.subscriptions == 0
