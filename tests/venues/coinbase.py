"""Coinbase Exchange simulation: the market-data feed at / (wss://ws-feed.exchange.coinbase.com).

Written from Coinbase's Exchange WebSocket documentation (checked 2026-11-26):
- https://docs.cdp.coinbase.com/exchange/websocket-feed  (every message has a `type`; the client
  must send `{"type": "subscribe", "product_ids": [...], "channels": [...]}` within 5 seconds or
  is disconnected; the answer is a `subscriptions` message listing channels and products;
  failures are `{"type": "error", "message": ..., "reason": ...}`)
- https://docs.cdp.coinbase.com/exchange/websocket-feed/channels  (`heartbeat` channel: one
  message per product every second with `sequence`, `last_trade_id`, `product_id`, `time`;
  `ticker` channel: on every match, with `sequence`, `trade_id`, `time` (ISO 8601), prices as
  strings)
Error reasons as the live feed words them: "<id> is not a valid product"
(github.com/thrasher-corp/gocryptotrader/pull/1421), "No channels provided"
(github.com/ctubio/Krypto-trading-bot/issues/977). The documentation does not say the server
sends WebSocket pings, so this simulation sends none (it answers the client's, as any peer does).

Timings scaled 1/10: heartbeats every 0.1 s, subscribe deadline 0.5 s.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any, ClassVar

from websockets.asyncio.server import ServerConnection

from tests.venues._sim_b import Tasks, VenueSimulation, iso_now

PRODUCTS = frozenset({"BTC-USD", "ETH-USD", "ETH-EUR", "SOL-USD"})
CHANNELS = frozenset({"ticker", "heartbeat"})


class _Book:
    """One product's running sequence, last trade and price."""

    def __init__(self) -> None:
        self.sequence = random.randint(10**10, 9 * 10**10)
        self.trade_id = random.randint(10**8, 9 * 10**8)
        self.price = 60_000.0


class CoinbaseSimulation(VenueSimulation):
    name: ClassVar[str] = "coinbase"
    PATH: ClassVar[str] = "/"
    SUBSCRIBE_WITHIN: ClassVar[float] = 0.5  # the venue's 5 s
    HEARTBEAT_PERIOD: ClassVar[float] = 0.1  # the venue's 1 s
    DATA_PERIOD: ClassVar[float] = 0.04

    def feed_overrides(self) -> dict[str, Any]:
        return {"url": self.url(), "idle_timeout": 5 * self.HEARTBEAT_PERIOD,
                "subscribe_ack": {"expect": {"type": "subscriptions"},
                                  "error": {"type": "error"}, "timeout": 1}}

    def bad_subscribe(self) -> dict[str, Any]:
        return self.feed_overrides() | {"subscribe": [
            {"type": "subscribe", "product_ids": ["BTC-USDX"],
             "channels": ["ticker", "heartbeat"]}]}

    def is_data(self, data: Any) -> bool:
        return isinstance(data, dict) and data.get("type") == "ticker"

    async def session(self, ws: ServerConnection) -> None:
        tasks = Tasks()
        subscribed = asyncio.Event()
        tasks.start(self._deadline(ws, subscribed))
        books: dict[str, _Book] = {}
        try:
            async for raw in ws:
                channels, error = _subscription(raw)
                if error:
                    await self.send(ws, {"type": "error", "message": "Failed to subscribe",
                                         "reason": error})
                    continue
                self.subscriptions += 1
                subscribed.set()
                for channel, products in channels.items():
                    for product in products:
                        book = books.setdefault(product, _Book())
                        loop = self._ticker if channel == "ticker" else self._heartbeat
                        tasks.start(loop(ws, product, book))
                await self.send(ws, {"type": "subscriptions", "channels": [
                    {"name": name, "product_ids": sorted(products)}
                    for name, products in channels.items()]})
        finally:
            await tasks.cancel()

    async def _deadline(self, ws: ServerConnection, subscribed: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(subscribed.wait(), self.SUBSCRIBE_WITHIN)
        except asyncio.TimeoutError:
            await self.drop(ws, "no subscribe")

    async def _ticker(self, ws: ServerConnection, product: str, book: _Book) -> None:
        while True:
            await asyncio.sleep(self.DATA_PERIOD)
            book.sequence += random.randint(1, 3)  # other channels' messages share it
            book.trade_id += 1
            book.price += random.choice((-0.01, 0.01))
            side = random.choice(("buy", "sell"))
            await self.send(ws, {
                "type": "ticker", "sequence": book.sequence, "product_id": product,
                "price": f"{book.price:.2f}", "open_24h": "59000.00", "volume_24h": "8123.4",
                "low_24h": "58500.00", "high_24h": "61200.00", "volume_30d": "250000.1",
                "best_bid": f"{book.price - 0.01:.2f}", "best_bid_size": "0.5",
                "best_ask": f"{book.price:.2f}", "best_ask_size": "0.7", "side": side,
                "time": iso_now(), "trade_id": book.trade_id, "last_size": "0.001"})
            self.data_sent += 1

    async def _heartbeat(self, ws: ServerConnection, product: str, book: _Book) -> None:
        while True:
            await asyncio.sleep(self.HEARTBEAT_PERIOD)
            await self.send(ws, {"type": "heartbeat", "sequence": book.sequence,
                                 "last_trade_id": book.trade_id, "product_id": product,
                                 "time": iso_now()})


def _subscription(raw: str | bytes) -> tuple[dict[str, set[str]], str]:
    """The channels → products a subscribe message asks for, or the venue's error reason."""
    try:
        message = json.loads(raw)
    except ValueError:
        return {}, "Malformed JSON"
    kind = message.get("type") if isinstance(message, dict) else None
    if kind != "subscribe":
        return {}, f"{kind} is not a valid message type"
    shared = message.get("product_ids") or []
    channels: dict[str, set[str]] = {}
    for channel in message.get("channels") or []:
        name, products = (channel, shared) if isinstance(channel, str) else (
            channel.get("name"), channel.get("product_ids") or shared)
        if name not in CHANNELS:
            return {}, f"{name} is not a valid channel"
        if not products:
            return {}, f"You need to specify at least one product ID for channel {name}"
        for product in products:
            if product not in PRODUCTS:
                return {}, f"{product} is not a valid product"
        channels.setdefault(name, set()).update(products)
    if not channels:
        return {}, "No channels provided"
    return channels, ""


SIMULATION = CoinbaseSimulation
