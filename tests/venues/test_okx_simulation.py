"""The OKX simulation checked with a plain websockets client (no ws-ingest)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from support.wait import until
from tests.venues._sim_a import Client, check_feed_settings, env_feed
from tests.venues.okx import OkxSimulation

# Switch on once FeedSettings takes the venue keys (heartbeat, subscribe_ack, rotate_on, ...).
VENUE_KEYS_LANDED = True


@pytest.fixture
def sim() -> Iterator[OkxSimulation]:
    simulation = OkxSimulation()
    simulation.start()
    yield simulation
    simulation.close()


def test_env_file_validates_with_the_service_settings(sim: OkxSimulation) -> None:
    feed = env_feed("okx")
    assert feed["url"] == "wss://ws.okx.com:8443/ws/v5/public"
    assert feed["rotate_on"] == {"event": "notice", "code": "64008"}
    check_feed_settings(feed, venue_keys_landed=VENUE_KEYS_LANDED)
    check_feed_settings({**feed, **sim.feed_overrides()}, venue_keys_landed=VENUE_KEYS_LANDED)


def test_pinging_client_outlives_quiet_spells_silent_ones_are_dropped(sim: OkxSimulation) -> None:
    feed = {**env_feed("okx"), **sim.feed_overrides()}

    async def scenario() -> None:
        async with Client(feed) as good, Client(feed, heartbeat=False) as silent, \
                Client(feed, subscribe=False, heartbeat=False) as idle:
            # A quiet spell is longer than the 30 s (scaled) rule; the pings carry `good` over it.
            await until(lambda: silent.closed and idle.closed, 4, "the silent clients dropped")
            await until(lambda: sim.client_heartbeats >= 3, 10, "three heartbeats")
            # The client's own view: its third pong may still be on its way.
            await until(lambda: good.control().count("pong") >= 3 and len(good.data()) >= 10,
                        10, "three pongs and ten tickers read")
            assert not good.closed
        assert sorted(sim.dropped) == ["no subscribe", "nothing pushed (missed heartbeat)"]
        control, data = good.control(), good.data()
        assert control[0] == {"id": "1", "event": "subscribe",
                              "arg": {"channel": "tickers", "instId": "BTC-USDT"},
                              "connId": control[0]["connId"]}
        assert control.count("pong") >= 3
        assert len(data) >= 10 and all(sim.is_data(frame) for frame in data)
        assert not any(sim.is_data(frame) for frame in control)

    asyncio.run(scenario())
    assert sim.subscriptions == 2 and sim.data_sent >= 10


def test_data_frames_have_the_documented_fields(sim: OkxSimulation) -> None:
    feed = {**env_feed("okx"), **sim.feed_overrides()}

    async def scenario() -> list[Any]:
        async with Client(feed) as client:
            await until(lambda: len(client.data()) >= 5, 2, "five tickers")
            return client.data()

    frames = asyncio.run(scenario())
    for frame in frames:
        assert frame["arg"] == {"channel": "tickers", "instId": "BTC-USDT"}
        (ticker,) = frame["data"]
        assert {"instType", "instId", "last", "lastSz", "askPx", "askSz", "bidPx", "bidSz",
                "open24h", "high24h", "low24h", "sodUtc0", "sodUtc8", "volCcy24h", "vol24h",
                "ts"} <= set(ticker)
        assert ticker["ts"].isdigit()
    times = [int(frame["data"][0]["ts"]) for frame in frames]
    assert times == sorted(times)


def test_refused_subscription_gets_the_error_frame(sim: OkxSimulation) -> None:
    feed = {**env_feed("okx"), **sim.feed_overrides(), **sim.bad_subscribe()}

    async def scenario() -> list[Any]:
        async with Client(feed) as client:
            await until(lambda: bool(client.control()), 2, "the error frame")
            return client.control()

    (error,) = asyncio.run(scenario())
    assert isinstance(error, dict) and error["event"] == "error" and error["code"] == "60018"
    assert error["id"] == "1" and "BTC-USDX" in error["msg"] and error["connId"]
    assert sim.subscriptions == 0


def test_notice_announces_the_upgrade_then_the_venue_closes(sim: OkxSimulation) -> None:
    feed = {**env_feed("okx"), **sim.feed_overrides()}

    async def scenario() -> None:
        async with Client(feed) as client:
            await until(lambda: sim.subscriptions == 1, 2, "the subscription")
            sim.send_notice()
            await until(lambda: client.closed, 2, "the close after the notice")
            notices = [frame for frame in client.control()
                       if isinstance(frame, dict) and frame.get("event") == "notice"]
            assert notices == [{"event": "notice", "code": "64008", "msg": notices[0]["msg"],
                                "connId": notices[0]["connId"]}]
            assert client.ws is not None and client.ws.close_code == 1001

    asyncio.run(scenario())
    assert sim.dropped == []
