"""The real-venue keys of a feed in INGEST_SOURCES: accepted in their documented shapes (with
configurations as real venues need them), and every malformed one refused by one line naming it."""

import gzip
import json

import orjson
import pytest

from app.errors import ConfigError
from app.feed.control import HeartbeatClock, Verdict
from app.feed.inflate import inflate
from app.settings import load_settings

SINK = "ws://127.0.0.1:9000/out"
GOOD = {"name": "good", "url": "ws://127.0.0.1:1/good"}


def feeds(*items):
    return load_settings(_env_file=None, sink_url=SINK, sources=json.dumps(list(items))).feeds


def feed(**keys):
    return feeds({"url": "ws://127.0.0.1:1/x", **keys})[0]


def kind(rules, frame):
    verdict = rules.classify(orjson.dumps(frame) if not isinstance(frame, (str, bytes)) else frame)
    return verdict.kind if verdict else None


def test_defaults_follow_the_contract():
    f = feed()
    assert (f.heartbeat, f.replies, f.control, f.subscribe_ack, f.rotate_on) == (
        None, [], [], None, None)
    assert (f.decompress, f.compression, f.rotate_after) == ("none", "deflate", 0)
    assert (f.sequence, f.event_time, f.connect_hook, f.tls, f.proxy) == (
        None, None, None, None, None)
    assert not f.control_rules()
    assert f.sequence_tracker() is None and f.event_time_reader() is None


def test_okx_text_ping_pong_acks_errors_and_notices():
    okx = feed(
        name="okx",
        subscribe=[{"op": "subscribe", "args": [{"channel": "tickers", "instId": "BTC-USDT"}]}],
        heartbeat={"send": "ping", "interval": 25, "expect": "pong", "timeout": 5},
        subscribe_ack={"expect": {"event": "subscribe"}, "error": {"event": "error"}},
        rotate_on={"event": "notice"},
        control=[{"event": "channel-conn-count"}],
        event_time={"path": "/data/0/ts", "unit": "ms"},
    )
    assert (okx.heartbeat.message(), okx.heartbeat.interval, okx.heartbeat.timeout) == (
        "ping", 25, 5)
    rules = okx.control_rules()
    assert kind(rules, b"pong") == "heartbeat"
    assert kind(rules, {"event": "subscribe", "arg": {"channel": "tickers"}}) == "ack"
    assert kind(rules, {"event": "error", "code": "60012", "msg": "Invalid"}) == "ack_error"
    assert kind(rules, {"event": "notice", "code": "64008", "msg": "upgrade"}) == "notice"
    assert kind(rules, {"event": "channel-conn-count", "connCount": "2"}) == "control"
    data = {"arg": {"channel": "tickers"}, "data": [{"last": "9999.9", "ts": "1597026383085"}]}
    assert kind(rules, data) is None
    assert okx.event_time_reader().seconds(data) == pytest.approx(1597026383.085)


def test_htx_gzip_ping_is_answered_with_its_number():
    htx = feed(
        name="htx", decompress="gzip",
        subscribe=[{"sub": "market.btcusdt.trade.detail", "id": "id1"}],
        replies=[{"when": {"ping": "*"}, "send": {"pong": 0}, "copy": {"/pong": "/ping"}}],
        subscribe_ack={"expect": {"status": "ok", "subbed": "*"}, "error": {"status": "error"}},
    )
    assert htx.replies[0].copy_ == {"/pong": "/ping"}
    frame = inflate(gzip.compress(b'{"ping":1492420473027}'), htx.decompress, 1 << 20)
    assert htx.control_rules().classify(frame) == Verdict("reply", '{"pong":1492420473027}')
    assert kind(htx.control_rules(), {"id": "id1", "status": "ok", "subbed": "x"}) == "ack"


def test_bybit_json_ping_and_sequence():
    bybit = feed(
        name="bybit", heartbeat={"send": {"op": "ping"}, "expect": {"ret_msg": "pong"}},
        subscribe=[{"op": "subscribe", "args": ["orderbook.50.BTCUSDT"]}],
        subscribe_ack={"expect": {"op": "subscribe", "success": True},
                       "error": {"op": "subscribe", "success": False}},
        sequence={"path": "/data/u", "scope": "/data/s"},
        event_time={"path": "/ts", "unit": "ms"},
    )
    assert (bybit.heartbeat.interval, bybit.heartbeat.timeout) == (20, 10)
    assert bybit.heartbeat.message() == '{"op":"ping"}'

    rules = bybit.control_rules()
    assert kind(rules, {"success": True, "ret_msg": "pong", "conn_id": "c", "op": "ping"}) == (
        "heartbeat")
    assert kind(rules, {"success": False, "ret_msg": "bad", "op": "subscribe"}) == "ack_error"
    assert kind(rules, {"success": True, "ret_msg": "", "op": "subscribe"}) == "ack"
    tracker = bybit.sequence_tracker()
    steps = [tracker.observe({"topic": "orderbook.50.BTCUSDT", "data": {"s": "BTCUSDT", "u": u}})
             for u in (1, 2, 4)]
    assert [s.kind for s in steps] == ["first", "in_order", "gap"]


def test_kucoin_token_hook_ping_and_welcome():
    kucoin = feed(
        name="kucoin", connect_hook="venues.kucoin:token",
        heartbeat={"send": {"id": "hb", "type": "ping"}, "interval": 18,
                   "expect": {"type": "pong"}},
        control=[{"type": "welcome"}],
        subscribe=[{"id": 1, "type": "subscribe", "topic": "/market/ticker:BTC-USDT",
                    "response": True}],
        subscribe_ack={"expect": {"type": "ack"}, "error": {"type": "error"}},
    )
    assert kucoin.connect_hook == "venues.kucoin:token"
    rules = kucoin.control_rules()
    assert [kind(rules, {"id": "x", "type": t}) for t in ("welcome", "pong", "ack", "error")] == [
        "control", "heartbeat", "ack", "ack_error"]
    assert kind(rules, {"type": "message", "topic": "/market/ticker:BTC-USDT"}) is None


def test_deribit_test_request_is_answered_with_public_test():
    deribit = feed(
        name="deribit",
        subscribe=[{"jsonrpc": "2.0", "id": 1, "method": "public/set_heartbeat",
                    "params": {"interval": 30}}],
        replies=[{"when": {"method": "heartbeat", "params": {"type": "test_request"}},
                  "send": {"jsonrpc": "2.0", "id": 9, "method": "public/test", "params": {}}}],
        control=[{"method": "heartbeat"}, {"result": "*"}],
    )
    rules = deribit.control_rules()
    verdict = rules.classify(orjson.dumps(
        {"jsonrpc": "2.0", "method": "heartbeat", "params": {"type": "test_request"}}))
    assert verdict == Verdict("reply", '{"jsonrpc":"2.0","id":9,"method":"public/test",'
                                       '"params":{}}')
    assert kind(rules, {"method": "heartbeat", "params": {"type": "heartbeat"}}) == "control"
    assert kind(rules, {"jsonrpc": "2.0", "id": 9, "result": {"version": "1"}}) == "control"
    assert kind(rules, {"method": "subscription", "params": {"channel": "t"}}) is None


def test_cryptocom_heartbeat_is_answered_with_the_same_id():
    cdc = feed(
        name="crypto.com",
        replies=[{"when": {"method": "public/heartbeat"},
                  "send": {"id": 0, "method": "public/respond-heartbeat"}, "copy": {"/id": "/id"}}],
        subscribe_ack={"expect": {"id": 1, "method": "subscribe", "code": 0}},
    )
    rules = cdc.control_rules()
    verdict = rules.classify(b'{"id":1587523073344,"method":"public/heartbeat","code":0}')
    assert verdict == Verdict("reply", '{"id":1587523073344,"method":"public/respond-heartbeat"}')
    assert kind(rules, {"id": 1, "method": "subscribe", "code": 0}) == "ack"
    assert kind(rules, {"id": -1, "method": "subscribe", "code": 0, "result": {}}) is None


def test_binance_coinbase_kraken(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    binance, coinbase, kraken = feeds(
        {"name": "binance", "url": "wss://stream.binance.com:9443/ws", "compression": "none",
         "subscribe": [{"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}],
         "subscribe_ack": {"expect": {"result": None, "id": "*"}, "error": {"error": "*"}},
         "rotate_after": 82800, "event_time": {"path": "/E", "unit": "ms"}},
        {"name": "coinbase", "url": "wss://ws-feed.exchange.coinbase.com",
         "subscribe": [{"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["ticker"]}],
         "subscribe_ack": {"expect": {"type": "subscriptions"}, "error": {"type": "error"},
                           "timeout": 2.5},
         "sequence": {"path": "/sequence", "scope": "/product_id"},
         "event_time": {"path": "/time", "unit": "iso"},
         "tls": {"ca_file": str(ca), "verify": True}, "proxy": "http://127.0.0.1:3128"},
        {"name": "kraken", "url": "wss://ws.kraken.com/v2",
         "subscribe": [{"method": "subscribe", "params": {"channel": "ticker",
                                                          "symbol": ["BTC/USD"]}}],
         "heartbeat": {"send": {"method": "ping"}, "interval": 30, "expect": {"method": "pong"}},
         "control": [{"channel": "heartbeat"}, {"channel": "status"}],
         "subscribe_ack": {"expect": {"method": "subscribe", "success": True},
                           "error": {"method": "subscribe", "success": False}},
         "proxy": "socks5h://127.0.0.1:1080"},
    )
    assert (binance.compression, binance.rotate_after) == ("none", 82800)
    assert kind(binance.control_rules(), {"result": None, "id": 1}) == "ack"
    assert kind(binance.control_rules(), {"error": {"code": 2, "msg": "x"}, "id": 1}) == (
        "ack_error")
    assert kind(binance.control_rules(), {"e": "trade", "E": 1, "s": "BTCUSDT"}) is None
    assert binance.event_time_reader().seconds({"E": 1672515782136}) == 1672515782.136
    assert coinbase.subscribe_ack.timeout == 2.5 and coinbase.subscribe_ack.error == {
        "type": "error"}
    assert coinbase.tls.ca_file == str(ca) and coinbase.tls.verify is True
    assert coinbase.proxy == "http://127.0.0.1:3128"
    ticker = {"type": "ticker", "sequence": 7, "product_id": "BTC-USD",
              "time": "2026-11-25T16:54:10.123456Z"}
    assert kind(coinbase.control_rules(), ticker) is None
    assert coinbase.sequence_tracker().observe(ticker).kind == "first"
    assert coinbase.event_time_reader().seconds(ticker) == pytest.approx(1795625650.123456)
    rules = kraken.control_rules()
    assert [kind(rules, f) for f in ({"method": "pong"}, {"channel": "heartbeat"},
                                     {"method": "subscribe", "success": False},
                                     {"channel": "ticker", "data": [{}]})] == [
        "heartbeat", "control", "ack_error", None]
    assert kraken.proxy == "socks5h://127.0.0.1:1080"


def test_tls_client_certificate_and_no_verification(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    tls = feed(tls={"cert_file": str(cert), "key_file": str(key), "verify": False}).tls
    assert (tls.ca_file, tls.cert_file, tls.key_file, tls.verify) == (
        None, str(cert), str(key), False)


@pytest.mark.parametrize(("proxy", "stored"), [
    ("none", "none"), ("NONE", "none"), ("https://user:pw@proxy.internal:8443", None),
    ("socks4://127.0.0.1:1080", None), ("socks5://127.0.0.1:1080", None),
])
def test_proxies(proxy, stored):
    assert feed(proxy=proxy).proxy == (stored or proxy)


def test_heartbeat_without_expect_takes_any_frame_as_its_reply():
    f = feed(heartbeat={"send": {"op": "ping"}})
    assert f.heartbeat.expect is None and not f.control_rules()
    clock = HeartbeatClock(f.heartbeat.interval, f.heartbeat.timeout, now=0.0,
                           any_frame_is_reply=f.heartbeat.expect is None)
    clock.sent(20.0)
    clock.received(21.0)
    assert not clock.dead(100.0)


def test_masked_configuration_shows_the_keys_as_users_write_them():
    s = load_settings(_env_file=None, sink_url=SINK, sources=json.dumps([{
        "url": "ws://127.0.0.1:1/x",
        "replies": [{"when": {"ping": "*"}, "send": {"pong": 0}, "copy": {"/pong": "/ping"}}],
        "heartbeat": {"send": "ping", "expect": "pong"}}]))
    shown = s.masked()["feeds"][0]
    assert shown["replies"] == [{"when": {"ping": "*"}, "send": {"pong": 0},
                                 "copy": {"/pong": "/ping"}}]
    assert shown["heartbeat"] == {"send": "ping", "interval": 20.0, "expect": "pong",
                                  "timeout": 10.0}
    json.dumps(s.masked())


BAD = [
    ({"heartbeat": {"interval": 5}}, "heartbeat.send", "required"),
    ({"heartbeat": {"send": 5}}, "heartbeat.send", "a message must be a string, a JSON object or "
                                                   "an array, not a number"),
    ({"heartbeat": {"send": "ping", "expect": [1]}}, "heartbeat.expect",
     "a match must be a string or a JSON object, not an array"),
    ({"heartbeat": {"send": "ping", "expect": {}}}, "heartbeat.expect",
     "an object match needs at least one key"),
    ({"heartbeat": {"send": "ping", "interval": 0}}, "heartbeat.interval", "greater than 0"),
    ({"heartbeat": {"send": "ping", "timeout": -1}}, "heartbeat.timeout", "greater than 0"),
    ({"heartbeat": {"send": "ping", "every": 5}}, "heartbeat", "unknown key 'every'"),
    ({"heartbeat": "ping"}, "heartbeat", "must be a JSON object"),
    ({"subscribe_ack": ["ok"]}, "subscribe_ack", "must be a JSON object"),
    ({"sequence": "/seq"}, "sequence", "must be a JSON object"),
    ({"event_time": "/E"}, "event_time", "must be a JSON object"),
    ({"tls": True}, "tls", "must be a JSON object"),
    ({"replies": ["ping"]}, "replies[0]", "must be a JSON object"),
    ({"replies": [{"send": "pong"}]}, "replies[0].when", "required"),
    ({"replies": [{"when": "ping"}]}, "replies[0].send", "required"),
    ({"replies": [{"when": "ping", "send": "pong"}, {"when": 1, "send": "pong"}]},
     "replies[1].when", "a match must be"),
    ({"replies": [{"when": {"ping": "*"}, "send": {"pong": 0}, "copy": {"/x/y": "/ping"}}]},
     "replies[0].copy", "JSON pointer '/x/y': its parent does not exist"),
    ({"replies": [{"when": {"ping": "*"}, "send": {"pong": 0}, "copy": {"pong": "/ping"}}]},
     "replies[0].copy", "JSON pointer 'pong' must be empty or start with '/'"),
    ({"replies": [{"when": {"ping": "*"}, "send": {"pong": 0}, "copy": {"/pong": "ping"}}]},
     "replies[0].copy", "JSON pointer 'ping' must be empty or start with '/'"),
    ({"replies": [{"when": "ping", "send": "pong", "copy": {"/a": "/b"}}]},
     "replies[0].copy", "send must be a JSON object or array to copy into it"),
    ({"replies": [{"when": "ping", "send": "pong", "copy": {"/a": 5}}]},
     "replies[0].copy./a", "expected text"),
    ({"replies": {"when": "ping"}}, "replies", "wrap it in [...]"),
    ({"control": [{"event": "x"}, 5]}, "control[1]", "a match must be"),
    ({"control": [{}]}, "control[0]", "needs at least one key"),
    ({"control": "welcome"}, "control", "expected a JSON list"),
    ({"subscribe_ack": {"error": {"event": "error"}}}, "subscribe_ack.expect", "required"),
    ({"subscribe_ack": {"expect": "ok", "error": []}}, "subscribe_ack.error", "a match must be"),
    ({"subscribe_ack": {"expect": "ok", "timeout": 0}}, "subscribe_ack.timeout", "greater than 0"),
    ({"decompress": "brotli"}, "decompress", "'none', 'gzip', 'zlib', 'deflate' or 'auto'"),
    ({"compression": "gzip"}, "compression", "'deflate' or 'none'"),
    ({"rotate_after": -1}, "rotate_after", "must be at least 0"),
    ({"rotate_after": "daily"}, "rotate_after", "expected a number"),
    ({"rotate_on": 5}, "rotate_on", "a match must be"),
    ({"sequence": {"path": "seq"}}, "sequence.path",
     "JSON pointer 'seq' must be empty or start with '/'"),
    ({"sequence": {"path": "/seq", "scope": "/a~2"}}, "sequence.scope",
     "'~' must be followed by 0 or 1"),
    ({"sequence": {"scope": "/s"}}, "sequence.path", "required"),
    ({"event_time": {"path": "/E", "unit": "minutes"}}, "event_time.unit",
     "'s', 'ms', 'us', 'ns' or 'iso'"),
    ({"event_time": {"unit": "ms"}}, "event_time.path", "required"),
    ({"connect_hook": "venues.kucoin"}, "connect_hook", "must be package.module:function"),
    ({"connect_hook": "venues.kucoin:"}, "connect_hook", "must be package.module:function"),
    ({"connect_hook": "my-venues:token"}, "connect_hook", "must be package.module:function"),
    ({"tls": {"ca_file": "/nonexistent/ca.pem"}}, "tls.ca_file",
     "no such file: /nonexistent/ca.pem"),
    ({"tls": {"verify": "maybe"}}, "tls.verify", "expected true or false"),
    ({"tls": {"insecure": True}}, "tls", "unknown key 'insecure'"),
    ({"proxy": "ftp://proxy.internal:21"}, "proxy",
     "must be a URL with scheme http, https, socks5, socks5h, socks4, or none"),
    ({"proxy": "http://"}, "proxy", "has no host"),
    ({"proxy": "proxy.internal:3128"}, "proxy", "must be a URL with scheme"),
    ({"subscribe": ["ok", 5]}, "subscribe[1]", "a message must be"),
]


@pytest.mark.parametrize(("keys", "where", "problem"), BAD,
                         ids=[f"{where}-{i}" for i, (_, where, _) in enumerate(BAD)])
def test_malformed_keys_are_one_line_naming_the_key(keys, where, problem):
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, sink_url=SINK,
                      sources=json.dumps([GOOD, {"url": "ws://127.0.0.1:1/x", **keys}]))
    assert len(caught.value.problems) == 1, caught.value.problems
    line = caught.value.problems[0]
    assert line.startswith(f"INGEST_SOURCES[1].{where}: "), line
    assert problem in line, line
    assert "\n" not in line


def test_tls_key_without_certificate(tmp_path):
    key = tmp_path / "k.pem"
    key.write_text("x")
    with pytest.raises(ConfigError) as caught:
        feed(tls={"key_file": str(key)})
    assert caught.value.problems == ["INGEST_SOURCES[0].tls: key_file needs cert_file"]


def test_several_bad_keys_are_several_lines():
    with pytest.raises(ConfigError) as caught:
        feed(decompress="lz4", rotate_on=[], sequence={"path": "x"})
    assert sorted(line.split(":")[0] for line in caught.value.problems) == [
        "INGEST_SOURCES[0].decompress", "INGEST_SOURCES[0].rotate_on",
        "INGEST_SOURCES[0].sequence.path"]
