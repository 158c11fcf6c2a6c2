"""The HTX simulation checked with a plain websockets client (no ws-ingest)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from support.wait import until
from tests.venues._sim_a import Client, check_feed_settings, env_feed
from tests.venues.htx import HtxSimulation

# Switch on once FeedSettings takes the venue keys (replies, decompress, subscribe_ack, ...).
VENUE_KEYS_LANDED = True


@pytest.fixture
def sim() -> Iterator[HtxSimulation]:
    simulation = HtxSimulation()
    simulation.start()
    yield simulation
    simulation.close()


def test_env_file_validates_with_the_service_settings(sim: HtxSimulation) -> None:
    feed = env_feed("htx")
    assert feed["url"] == "wss://api.huobi.pro/ws" and feed["decompress"] == "gzip"
    check_feed_settings(feed, venue_keys_landed=VENUE_KEYS_LANDED)
    check_feed_settings({**feed, **sim.feed_overrides()}, venue_keys_landed=VENUE_KEYS_LANDED)


def test_answering_client_stays_the_silent_one_is_dropped_after_two_pings(
        sim: HtxSimulation) -> None:
    feed = {**env_feed("htx"), **sim.feed_overrides()}

    async def scenario() -> None:
        async with Client(feed) as good, Client(feed, answer=False) as silent:
            await until(lambda: silent.closed, 10, "the silent client dropped")
            await until(lambda: sim.pings_answered >= 3, 10, "three answered pings")
            await until(lambda: len(good.data()) >= 5, 10, "five data frames read")
            assert not good.closed
            pings = [frame for frame in good.control() if "ping" in frame]
            assert len(pings) >= 3 and all(isinstance(p["ping"], int) for p in pings)
        assert sim.dropped == ["missed heartbeat"]
        # The silent client saw exactly the two pings it left unanswered.
        assert sum("ping" in frame for frame in silent.control()) == 2
        control, data = good.control(), good.data()
        assert control[0] == {"id": "bbo1", "status": "ok", "subbed": "market.btcusdt.bbo",
                              "ts": control[0]["ts"]}
        assert len(data) >= 5 and all(sim.is_data(frame) for frame in data)
        assert not any(sim.is_data(frame) for frame in control)

    asyncio.run(scenario())
    assert sim.pings_sent >= sim.pings_answered + 2


def test_every_frame_is_gzip_and_data_has_the_documented_fields(sim: HtxSimulation) -> None:
    feed = {**env_feed("htx"), **sim.feed_overrides()}

    async def scenario() -> Client:
        async with Client(feed) as client:
            await until(lambda: len(client.data()) >= 5, 2, "five bbo frames")
        return client

    client = asyncio.run(scenario())
    assert client.raw and all(isinstance(frame, bytes) and frame[:2] == b"\x1f\x8b"
                              for frame in client.raw), "every frame binary gzip"
    data = client.data()
    for frame in data:
        assert frame["ch"] == "market.btcusdt.bbo" and isinstance(frame["ts"], int)
        assert {"seqId", "ask", "askSize", "bid", "bidSize", "quoteTime", "symbol"} <= set(
            frame["tick"])
    seq = [frame["tick"]["seqId"] for frame in data]
    assert seq == sorted(seq) and len(set(seq)) == len(seq)


def test_refused_subscription_gets_the_error_frame(sim: HtxSimulation) -> None:
    feed = {**env_feed("htx"), **sim.feed_overrides(), **sim.bad_subscribe()}

    async def scenario() -> list[Any]:
        async with Client(feed) as client:
            await until(lambda: any("status" in f for f in client.control()), 2, "the error")
            return [frame for frame in client.control() if "status" in frame]

    (error,) = asyncio.run(scenario())
    assert error == {"id": "bbo1", "status": "error", "err-code": "bad-request",
                     "err-msg": "invalid topic market.btcusdx.bbo", "ts": error["ts"]}
    assert sim.subscriptions == 0
