import orjson
import pytest

from app.feed.control import (
    NOISY_AFTER,
    ControlRules,
    HeartbeatClock,
    Match,
    SubscribeTracker,
    Verdict,
    _cover,
    compile_match,
    compile_message,
    compile_reply,
    describe_frame,
)


def js(value):
    return orjson.dumps(value)


# --- matches ---------------------------------------------------------------------------------

@pytest.mark.parametrize("payload", [b"pong", "pong"])
def test_a_string_match_is_text_equality(payload):
    match = compile_match("pong")
    assert match.matches(payload)
    assert not match.matches(b"pong ") and not match.matches('"pong"')


@pytest.mark.parametrize(("spec", "frame", "expected"), [
    ({"op": "pong"}, {"op": "pong", "conn_id": "x"}, True),
    ({"op": "pong"}, {"op": "ping"}, False),
    ({"op": "pong"}, {"other": "pong"}, False),
    ({"ping": "*"}, {"ping": 1492420473027}, True),
    ({"ping": "*"}, {"ping": None}, True),
    ({"ping": "*"}, {"pong": 1}, False),
    ({"params": {"type": "test_request"}}, {"params": {"type": "test_request", "x": 1}}, True),
    ({"params": {"type": "test_request"}}, {"params": {"type": "heartbeat"}}, False),
    ({"params": {"type": "test_request"}}, {"params": "test_request"}, False),
    ({"params": {}}, {"params": {"a": 1}}, True),
    ({"args": ["a", "*"]}, {"args": ["a", 5]}, True),
    ({"args": ["a"]}, {"args": ["a", 5]}, False),
    ({"args": [{"k": 1}]}, {"args": [{"k": 1, "more": 2}]}, True),
    ({"success": True}, {"success": True}, True),
    ({"success": True}, {"success": 1}, False),
    ({"code": 1}, {"code": True}, False),
    ({"code": 0}, {"code": 0.0}, True),
    ({"code": "0"}, {"code": 0}, False),
    ({"result": None}, {"result": None, "id": 1}, True),
    ({"result": None}, {"result": 0, "id": 1}, False),
])
def test_an_object_match_is_a_recursive_subset(spec, frame, expected):
    assert compile_match(spec).matches(js(frame)) is expected
    assert compile_match(spec).matches_parsed(frame) is expected


def test_an_object_match_needs_a_json_object_frame():
    match = compile_match({"a": 1})
    assert not match.matches(b"[1]") and not match.matches(b"not json") and not match.matches(b"")


@pytest.mark.parametrize(("spec", "problem"), [
    (["a"], "must be a string or a JSON object, not an array"),
    (5, "not a number"),
    (True, "not a boolean"),
    (None, "not null"),
    ({}, "needs at least one key"),
    ({"a": {1, 2}}, "set is not a JSON value"),
    ({"a": {1: 2}}, "keys must be strings"),
])
def test_invalid_matches_are_refused(spec, problem):
    with pytest.raises(ValueError, match=problem):
        compile_match(spec)


def test_compile_match_passes_compiled_matches_through():
    match = compile_match({"a": 1})
    assert compile_match(match) is match and isinstance(match, Match)
    assert "Match" in repr(match)


def test_messages_are_sent_as_is_or_as_compact_json():
    assert compile_message("ping") == "ping"
    assert compile_message({"op": "ping", "args": []}) == '{"op":"ping","args":[]}'
    assert compile_message([1, "a"]) == '[1,"a"]'
    for bad, problem in [(5, "not a number"), (None, "not null"),
                         ({"a": 1 << 70}, "cannot be sent as JSON")]:
        with pytest.raises(ValueError, match=problem):
            compile_message(bad)


# --- replies ---------------------------------------------------------------------------------

def test_htx_ping_gets_its_number_back():
    rules = ControlRules(replies=[compile_reply({"ping": "*"}, {"pong": 0}, {"/pong": "/ping"})])
    assert rules.classify(b'{"ping":1492420473027}') == Verdict("reply", '{"pong":1492420473027}')
    assert rules.classify('{"ping": 7}') == Verdict("reply", '{"pong":7}')


def test_cryptocom_heartbeat_is_answered_with_the_same_id():
    reply = compile_reply({"method": "public/heartbeat"},
                          {"id": 0, "method": "public/respond-heartbeat"}, {"/id": "/id"})
    rules = ControlRules(replies=[reply])
    # Some encoders write "/" as "\/": the value is no prefilter needle, so this still matches.
    frame = b'{"id":1587523073344,"method":"public\\/heartbeat","code":0}'
    verdict = rules.classify(frame)
    assert verdict is not None and verdict.kind == "reply"
    assert orjson.loads(verdict.answer) == {"id": 1587523073344,
                                             "method": "public/respond-heartbeat"}


def test_a_missing_copy_source_leaves_the_target_as_written():
    rules = ControlRules(replies=[compile_reply({"type": "ping"}, {"type": "pong", "id": "none"},
                                                {"/id": "/id", "/at": "/ts"})])
    assert rules.classify(b'{"type":"ping"}') == Verdict("reply", '{"type":"pong","id":"none"}')
    assert rules.classify(b'{"type":"ping","id":"42","ts":5}') == Verdict(
        "reply", '{"type":"pong","id":"42","at":5}')


def test_copies_into_nested_places_and_whole_frame_echo():
    reply = compile_reply({"m": "hb"}, {"params": {"echo": None}}, {"/params/echo": ""})
    assert reply.answer_for({"m": "hb", "n": 1}) == '{"params":{"echo":{"m":"hb","n":1}}}'
    echo = compile_reply({"m": "hb"}, {}, {"": ""})
    assert ControlRules(replies=[echo]).classify(b'{"m":"hb","n":2}') == Verdict(
        "reply", '{"m":"hb","n":2}')


def test_the_template_is_not_changed_by_answers():
    reply = compile_reply({"ping": "*"}, {"pong": 0}, {"/pong": "/ping"})
    reply.answer_for({"ping": 1})
    assert reply.answer_for({}) == '{"pong":0}'


def test_a_string_ping_gets_its_string_answer():
    rules = ControlRules(replies=[compile_reply("ping", "pong")])
    assert rules.classify(b"ping") == Verdict("reply", "pong")
    assert rules.classify("ping") == Verdict("reply", "pong")


@pytest.mark.parametrize(("when", "send", "copy", "problem"), [
    ([1], "pong", None, "^when: a match must be"),
    ("ping", 5, None, "^send: a message must be"),
    ("ping", "pong", {"/a": "/b"}, "^copy: send must be a JSON object or array"),
    ({"p": 1}, {"a": 1}, {"/x/y": "/p"}, "^copy: JSON pointer '/x/y': its parent does not exist"),
    ({"p": 1}, {"a": 1}, {"a": "/p"}, "^copy: JSON pointer 'a' must be empty or start with '/'"),
    ({"p": 1}, {"a": 1}, {"/a": "p"}, "^copy: JSON pointer 'p' must be empty"),
    ({"p": 1}, [0], {"/3": "/p"}, "^copy: .*past the end"),
])
def test_invalid_replies_name_their_part(when, send, copy, problem):
    with pytest.raises(ValueError, match=problem):
        compile_reply(when, send, copy)


# --- classification --------------------------------------------------------------------------

def okx_rules():
    return ControlRules(heartbeat="pong", ack={"event": "subscribe"}, ack_error={"event": "error"},
                        notice={"event": "notice"}, control=[{"event": "channel-conn-count"}])


OKX_DATA = js({"arg": {"channel": "tickers", "instId": "BTC-USDT"},
               "data": [{"instId": "BTC-USDT", "last": "9999.99", "ts": "1597026383085"}]})


@pytest.mark.parametrize(("frame", "kind"), [
    (b"pong", "heartbeat"),
    (js({"event": "subscribe", "arg": {"channel": "tickers"}, "connId": "a4d3ae55"}), "ack"),
    (js({"event": "error", "code": "60012", "msg": "Invalid request"}), "ack_error"),
    (js({"event": "notice", "code": "64008", "msg": "service upgrade"}), "notice"),
    (js({"event": "channel-conn-count", "channel": "tickers", "connCount": "2"}), "control"),
    (OKX_DATA, None),
    (js({"event": "unsubscribe"}), None),  # holds the needle, matches no rule: data
    (b"ping", None),
    (b"not json at all, but \"event\"", None),
    (b'["event"]', None),
])
def test_okx_frames(frame, kind):
    verdict = okx_rules().classify(frame)
    assert (verdict.kind if verdict else None) == kind
    text = okx_rules().classify(frame.decode())
    assert (text.kind if text else None) == kind


def test_precedence_heartbeat_reply_error_ack_notice_control():
    rules = ControlRules(
        heartbeat={"a": 1},
        replies=[compile_reply({"b": 1}, "r1"), compile_reply({"b": "*"}, "r2")],
        ack_error={"c": "*"}, ack={"c": "ok"}, notice={"d": 1}, control=[{"e": 1}, {"d": "*"}],
    )
    cases = [({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1}, Verdict("heartbeat")),
             ({"b": 1, "c": 1, "d": 1, "e": 1}, Verdict("reply", "r1")),
             ({"b": 2, "c": 1}, Verdict("reply", "r2")),
             ({"c": "ok", "d": 1, "e": 1}, Verdict("ack_error")),
             ({"d": 1, "e": 1}, Verdict("notice")),
             ({"d": 2, "e": 1}, Verdict("control")),
             ({"d": 2}, Verdict("control")),
             ({"f": 1}, None)]
    for frame, verdict in cases:
        assert rules.classify(js(frame)) == verdict, frame


def test_kraken_refusal_wins_over_a_broad_ack():
    rules = ControlRules(ack={"method": "subscribe"},
                         ack_error={"method": "subscribe", "success": False})
    assert rules.classify(js({"method": "subscribe", "success": False})).kind == "ack_error"
    assert rules.classify(js({"method": "subscribe", "success": True})).kind == "ack"


def test_the_first_of_equal_string_matches_wins():
    rules = ControlRules(heartbeat="pong", control=["pong", "welcome"])
    assert rules.classify(b"pong") == Verdict("heartbeat")
    assert rules.classify(b"welcome") == Verdict("control")


def test_a_match_with_no_safe_needle_is_still_tested():
    rules = ControlRules(control=[{"a/b": "*"}])
    assert rules.classify(b'{"a\\/b": 1}') == Verdict("control")
    assert rules.classify(b'{"a/b": 1}') == Verdict("control")
    assert rules.classify(b'{"c": 1}') is None


def test_no_rules_is_falsy():
    assert not ControlRules()
    assert ControlRules(control=["x"]) and ControlRules(control=[{"x": 1}])


def test_one_shared_needle_rules_a_venue_out():
    rules = [okx_rules()._objects[i] for i in range(4)]
    assert _cover(rules) == ("event",)
    bybit = ControlRules(heartbeat={"op": "pong"}, ack={"op": "subscribe", "success": True},
                         ack_error={"op": "subscribe", "success": False})
    assert _cover(bybit._objects) == ("op",)
    assert _cover(ControlRules(control=[{"a": 1}, {"b": 1}])._objects) == ("a", "b")


# --- heartbeat clock -------------------------------------------------------------------------

def test_heartbeat_is_due_every_interval_and_a_reply_keeps_the_connection():
    clock = HeartbeatClock(interval=1.0, timeout=0.5, now=100.0)
    assert clock.next_send == 101.0 and not clock.due(100.9) and clock.due(101.0)
    assert clock.wake_at() == 101.0 and clock.reply_deadline is None
    clock.sent(101.0)
    assert clock.next_send == 102.0 and clock.reply_deadline == 101.5 and clock.wake_at() == 101.5
    assert not clock.dead(101.4)
    clock.replied(101.2)
    assert not clock.dead(200.0) and clock.wake_at() == 102.0


def test_no_reply_within_timeout_is_a_dead_connection():
    clock = HeartbeatClock(interval=1.0, timeout=0.5, now=0.0)
    clock.sent(1.0)
    clock.received(1.2)  # data is no reply while `expect` is set
    assert not clock.dead(1.49) and clock.dead(1.5)


def test_unanswered_heartbeats_count_from_the_oldest():
    clock = HeartbeatClock(interval=1.0, timeout=2.5, now=0.0)
    clock.sent(1.0)
    clock.sent(2.0)
    clock.sent(3.0)
    assert clock.reply_deadline == 3.5 and clock.dead(3.5)


def test_without_expect_any_frame_is_the_reply():
    clock = HeartbeatClock(interval=1.0, timeout=0.5, now=0.0, any_frame_is_reply=True)
    clock.sent(1.0)
    clock.received(1.3)
    assert not clock.dead(5.0)


@pytest.mark.parametrize(("interval", "timeout"), [(0, 1), (1, 0), (-1, 1)])
def test_heartbeat_clock_needs_positive_times(interval, timeout):
    with pytest.raises(ValueError, match="positive"):
        HeartbeatClock(interval, timeout, now=0.0)


# --- subscription acknowledgements -----------------------------------------------------------

def test_one_ack_per_subscribe_message_completes_the_round():
    tracker = SubscribeTracker(expected=2, timeout=5, now=10.0)
    assert tracker.state == "pending" and tracker.deadline == 15.0
    assert tracker.acked() == "pending" and tracker.check(14.9) == "pending"
    assert tracker.acked() == "done" and tracker.check(100.0) == "done"
    assert tracker.acked() == "done" and tracker.failure is None


def test_an_error_frame_fails_the_round_with_the_frame():
    tracker = SubscribeTracker(expected=1, timeout=5, now=0.0)
    assert tracker.refused(b'{"event":"error","msg":"bad"}') == "failed"
    assert tracker.failure == 'subscription refused: {"event":"error","msg":"bad"}'
    tracker.refused("second")  # the first refusal is the one reported
    assert "bad" in tracker.failure and tracker.acked() == "failed"


def test_an_error_after_every_ack_still_fails():
    tracker = SubscribeTracker(expected=1, timeout=5, now=0.0)
    tracker.acked()
    assert tracker.refused("no such symbol") == "failed"


def test_a_round_not_acknowledged_in_time_fails():
    tracker = SubscribeTracker(expected=3, timeout=0.5, now=1.0)
    tracker.acked()
    assert tracker.check(1.5) == "failed"
    assert tracker.failure == "subscription not acknowledged within 0.5 s (1 of 3 acknowledgements)"


def test_no_subscribe_messages_is_done_at_once():
    assert SubscribeTracker(expected=0, timeout=1, now=0).state == "done"


def test_frames_in_log_lines_are_cut():
    assert describe_frame(b"x" * 10, limit=4) == "xxxx... (10 characters)"
    assert describe_frame("short") == "short"
    assert describe_frame(b"\xff") == "\ufffd"


def kraken_rules():
    return ControlRules(heartbeat={"method": "pong"},
                        ack={"method": "subscribe", "success": True},
                        ack_error={"method": "subscribe", "success": False},
                        control=[{"channel": "heartbeat"}, {"channel": "status"}])


KRAKEN = [({"method": "pong"}, "heartbeat"), ({"channel": "heartbeat"}, "control"),
          ({"channel": "status", "data": []}, "control"),
          ({"method": "subscribe", "success": False}, "ack_error"),
          ({"channel": "ticker", "data": [{"symbol": "BTC/USD"}]}, None),
          ({"channel": "book", "type": "update", "data": []}, None)]


def test_a_needle_the_data_frames_hold_too_is_replaced_by_their_values():
    rules = kraken_rules()
    assert set(rules._needles) == {"method", "channel"}
    data = js({"channel": "ticker", "type": "update", "data": [{"symbol": "BTC/USD"}]})
    for _ in range(NOISY_AFTER):
        assert rules.classify(data) is None
    assert set(rules._needles) == {"method", "heartbeat", "status"}
    for frame, expected in KRAKEN:  # same verdicts with the new needles
        assert kind_of(rules.classify(js(frame))) == expected, frame
        assert kind_of(rules.classify(js(frame).decode())) == expected, frame


def test_control_frames_between_data_frames_keep_a_needle():
    rules = kraken_rules()
    data = js({"channel": "ticker", "data": []})
    for _ in range(3 * NOISY_AFTER):
        assert rules.classify(data) is None
        assert rules.classify(js({"channel": "heartbeat"})) == Verdict("control")
    assert "channel" in rules._needles


def test_a_rule_with_only_noisy_needles_keeps_them():
    rules = ControlRules(control=[{"type": "*"}])
    for _ in range(NOISY_AFTER):
        rules.classify(b'{"kind": "type"}')
    assert rules._needles == ("type",)
    assert rules.classify(b'{"type": 1}') == Verdict("control")


def kind_of(verdict):
    return verdict.kind if verdict else None
