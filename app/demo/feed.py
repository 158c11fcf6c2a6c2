"""A demo market-data feed: `python -m app.demo.feed`.

Speaks like a real exchange feed: a client must first send
`{"type": "subscribe", "channels": [...]}`; then it receives ticks for a few symbols at
DEMO_FEED_RATE messages per second, each with a per-connection `sequence`. The URL path names
the venue (`ws://feed:8765/alpha`), which seeds its prices, so several feeds can share one server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from datetime import datetime, timezone
from zlib import adler32

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD", "ADA-USD", "DOGE-USD")
BASE_PRICES = {"BTC-USD": 97_000.0, "ETH-USD": 3_400.0, "SOL-USD": 240.0, "ADA-USD": 1.05,
               "DOGE-USD": 0.41}


class Ticker:
    """A random walk of prices per symbol; pure apart from its random generator."""

    def __init__(self, venue: str, rng: random.Random) -> None:
        self.venue = venue
        self.rng = rng
        self.prices = {s: p * (1 + rng.uniform(-0.01, 0.01)) for s, p in BASE_PRICES.items()}
        self.sequence = 0

    def next(self, channels: list[str]) -> dict[str, object]:
        self.sequence += 1
        symbol = self.rng.choice(SYMBOLS)
        price = self.prices[symbol] = self.prices[symbol] * (1 + self.rng.gauss(0, 0.0005))
        spread = price * 0.0002
        return {
            "type": channels[0] if channels else "ticker",
            "venue": self.venue,
            "sequence": self.sequence,
            "product_id": symbol,
            "price": round(price, 6),
            "best_bid": round(price - spread, 6),
            "best_ask": round(price + spread, 6),
            "last_size": round(self.rng.expovariate(2.0), 8),
            "side": self.rng.choice(("buy", "sell")),
            "time": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        }


async def serve_client(ws: ServerConnection, rate: float) -> None:
    try:
        request = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
    except ConnectionClosed:  # the client left before subscribing: nothing to say about it
        return
    except (asyncio.TimeoutError, ValueError):
        await ws.close(4000, "send {\"type\": \"subscribe\", \"channels\": [...]} first")
        return
    if not isinstance(request, dict) or request.get("type") != "subscribe":
        await ws.close(4000, "first message must be a subscribe")
        return
    venue = (ws.request.path if ws.request else "/").strip("/") or "demo"
    ticker = Ticker(venue, random.Random(adler32(venue.encode())))
    channels = [str(c) for c in request.get("channels") or ["ticker"]]
    await ws.send(json.dumps({"type": "subscriptions", "channels": channels}))
    started = time.monotonic()
    try:
        while True:
            await ws.send(json.dumps(ticker.next(channels)))
            ahead = started + ticker.sequence / rate - time.monotonic()
            if ahead > 0:  # keep the average rate; asyncio's sleeps are coarse
                await asyncio.sleep(ahead)
    except ConnectionClosed:
        pass


async def main(host: str, port: int, rate: float) -> None:
    async with serve(lambda ws: serve_client(ws, rate), host, port) as server:
        print(json.dumps({"event": "demo_feed_listening", "port": port, "rate": rate}), flush=True)
        await server.serve_forever()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("DEMO_FEED_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEMO_FEED_PORT", 8765)))
    parser.add_argument("--rate", type=float, default=float(os.environ.get("DEMO_FEED_RATE", 300)),
                        help="messages per second per connection")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    asyncio.run(main(args.host, args.port, args.rate))
