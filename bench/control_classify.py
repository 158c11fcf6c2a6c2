"""What classifying a frame costs a feed with control rules (app.feed.control), per venue-like
rule set: data frames (the hot path, never parsed unless they hold a rule's needle) and control
frames, beside orjson.loads of the same frame for scale. `python -m bench.control_classify`
prints nanoseconds per frame."""

from __future__ import annotations

import json
import timeit

import orjson

from app.feed.control import ControlRules, compile_reply

RULES = {
    "okx": ControlRules(heartbeat="pong", ack={"event": "subscribe"},
                        ack_error={"event": "error"}, notice={"event": "notice"},
                        control=[{"event": "channel-conn-count"}]),
    "bybit": ControlRules(heartbeat={"op": "pong"}, ack={"op": "subscribe", "success": True},
                          ack_error={"op": "subscribe", "success": False}),
    "htx": ControlRules(replies=[compile_reply({"ping": "*"}, {"pong": 0}, {"/pong": "/ping"})],
                        ack={"status": "ok", "subbed": "*"}, ack_error={"status": "error"}),
    "kraken": ControlRules(heartbeat={"method": "pong"},
                           ack={"method": "subscribe", "success": True},
                           ack_error={"method": "subscribe", "success": False},
                           control=[{"channel": "heartbeat"}, {"channel": "status"}]),
    "coinbase": ControlRules(ack={"type": "subscriptions"}, ack_error={"type": "error"}),
}

DATA = {
    "okx": {"arg": {"channel": "tickers", "instId": "BTC-USDT"}, "data": [{
        "instType": "SPOT", "instId": "BTC-USDT", "last": "9999.99", "lastSz": "0.1",
        "askPx": "9999.99", "askSz": "11", "bidPx": "8888.88", "bidSz": "5", "open24h": "9000",
        "high24h": "10000", "low24h": "8888.88", "volCcy24h": "2222", "vol24h": "2222",
        "ts": "1597026383085"}]},
    "bybit": {"topic": "orderbook.50.BTCUSDT", "type": "delta", "ts": 1687940967466, "data": {
        "s": "BTCUSDT", "b": [["30247.20", "30.028"], ["30245.40", "0.224"]],
        "a": [["30248.70", "0"], ["30249.30", "0.892"]], "u": 177400507, "seq": 66544703342},
        "cts": 1687940967464},
    "htx": {"ch": "market.btcusdt.trade.detail", "ts": 1630994963175, "tick": {
        "id": 137005445109, "ts": 1630994963173, "data": [{
            "id": 137005445109359286410323766, "ts": 1630994963173, "tradeId": 102523573486,
            "amount": 0.006754, "price": 52648.62, "direction": "buy"}]}},
    "kraken": {"channel": "ticker", "type": "update", "data": [{
        "symbol": "BTC/USD", "bid": 63000.1, "bid_qty": 0.5, "ask": 63000.2, "ask_qty": 1.2,
        "last": 63000.1, "volume": 1234.5, "vwap": 62000.0, "low": 61000.0, "high": 64000.0,
        "change": 100.0, "change_pct": 0.16}]},
    "coinbase": {"type": "ticker", "sequence": 37475248783, "product_id": "BTC-USD",
                 "price": "1285.22", "open_24h": "1310.79", "volume_24h": "245532.79",
                 "low_24h": "1280.52", "high_24h": "1313.8", "volume_30d": "9788783.6",
                 "best_bid": "1285.04", "best_ask": "1285.27", "side": "buy",
                 "time": "2022-10-19T23:28:22.061769Z", "trade_id": 370843401,
                 "last_size": "11.4396987"},
}

BOOK = {"topic": "orderbook.200.BTCUSDT", "type": "snapshot", "ts": 1687940967466, "data": {
    "s": "BTCUSDT", "b": [[f"{30000 + i}.10", "1.234"] for i in range(100)],
    "a": [[f"{31000 + i}.10", "0.567"] for i in range(100)], "u": 1, "seq": 2}}

CONTROL = [("okx", b"pong"), ("okx", orjson.dumps({"event": "subscribe", "arg": {
    "channel": "tickers", "instId": "BTC-USDT"}, "connId": "a4d3ae55"})),
    ("htx", b'{"ping":1492420473027}'),
    ("kraken", b'{"channel":"heartbeat"}')]


def dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def per_frame(function: object, n: int) -> float:
    return min(timeit.repeat(function, number=n, repeat=5)) / n * 1e9  # type: ignore[arg-type]


if __name__ == "__main__":
    print(f"{'rules':9} {'frame':24} {'bytes':>6} {'classify':>10} {'orjson.loads':>13}")
    # json, not orjson: HTX's trade ids exceed 64 bits (orjson.loads reads them as floats).
    cases = [(venue, "data", dumps(DATA[venue])) for venue in RULES]
    cases += [("bybit", "data, as str", dumps(DATA["bybit"]).decode()),
              ("bybit", "200-level book", dumps(BOOK))]
    for venue, label, frame in cases:
        assert RULES[venue].classify(frame) is None
        ns = per_frame(lambda r=RULES[venue], f=frame: r.classify(f), 200_000)
        parse = per_frame(lambda f=frame: orjson.loads(f), 100_000)
        print(f"{venue:9} {label:24} {len(frame):6} {ns:8.0f} ns {parse:10.0f} ns")
    for venue, frame in CONTROL:
        verdict = RULES[venue].classify(frame)
        assert verdict is not None
        ns = per_frame(lambda r=RULES[venue], f=frame: r.classify(f), 100_000)
        label = f"control: {verdict.kind}"
        print(f"{venue:9} {label:24} {len(frame):6} {ns:8.0f} ns")
