import calendar

import pytest

from app.feed.pointer import Pointer
from app.feed.sequence import (
    EventTime,
    SequenceTracker,
    Step,
    _parse_rfc3339,
    event_time_seconds,
    parse_iso,
)


def coinbase(seq, product="BTC-USD"):
    return {"type": "ticker", "sequence": seq, "product_id": product}


def test_steps_first_in_order_gap_duplicate_backwards():
    tracker = SequenceTracker("/sequence")
    steps = [tracker.observe({"sequence": n}) for n in (10, 11, 12, 15, 15, 13, 16)]
    assert steps == [
        Step("first", None, 10),
        Step("in_order", None, 11, 11),
        Step("in_order", None, 12, 12),
        Step("gap", None, 15, 13, 2),
        Step("duplicate", None, 15, 16),
        Step("backwards", None, 13, 16),
        Step("in_order", None, 16, 16),
    ]
    assert tracker.last() == 16


def test_each_scope_has_its_own_numbers():
    tracker = SequenceTracker("/sequence", "/product_id")
    assert tracker.observe(coinbase(100)).kind == "first"
    assert tracker.observe(coinbase(7, "ETH-USD")).kind == "first"
    assert tracker.observe(coinbase(101)).kind == "in_order"
    gap = tracker.observe(coinbase(10, "ETH-USD"))
    assert (gap.kind, gap.scope, gap.expected, gap.missing) == ("gap", "ETH-USD", 8, 2)
    assert (tracker.last("BTC-USD"), tracker.last("ETH-USD"), tracker.last("SOL-USD")) == (
        101, 10, None)


def test_frames_without_a_number_are_ignored():
    tracker = SequenceTracker("/data/seq", Pointer("/data/s"))
    for frame in ({"type": "snapshot"}, {"data": {"seq": None}}, {"data": {"seq": 1.5}},
                  {"data": {"seq": True}}, {"data": {"seq": "12a"}}, {"data": {"seq": "١٢"}},
                  {"data": [1]}, [1, 2], "text", None):
        assert tracker.observe(frame) is None
        assert tracker.is_new(frame)
    assert tracker.observe({"data": {"seq": 5, "s": "X"}}).kind == "first"


def test_quoted_numbers_count():
    tracker = SequenceTracker("/seqId")
    tracker.observe({"seqId": "41"})
    assert tracker.observe({"seqId": "42"}) == Step("in_order", None, 42, 42)


def test_missing_or_odd_scopes_are_scopes_too():
    tracker = SequenceTracker("/n", "/s")
    assert tracker.observe({"n": 1}).scope is None
    assert tracker.observe({"n": 2}).kind == "in_order"
    assert tracker.observe({"n": 1, "s": ["a"]}).kind == "first"
    assert tracker.observe({"n": 2, "s": ["a"]}).kind == "in_order"


def test_a_reconnect_is_not_a_gap():
    tracker = SequenceTracker("/sequence")
    tracker.observe({"sequence": 5})
    tracker.reset()
    assert tracker.observe({"sequence": 900}).kind == "first"


def test_make_before_break_forwards_each_number_once():
    tracker = SequenceTracker("/sequence", "/product_id")
    old = [coinbase(n) for n in range(1, 8)]
    new = [coinbase(n) for n in range(5, 11)]
    forwarded = []
    # Interleaved: the old connection at 1..7, the new one catching up from 5.
    for frame in [*old[:5], new[0], old[5], new[1], new[2], old[6], *new[3:]]:
        if tracker.is_new(frame):
            step = tracker.observe(frame)
            assert step.kind in ("first", "in_order")
            forwarded.append(frame["sequence"])
        else:
            assert tracker.observe(frame).kind in ("duplicate", "backwards")
    assert forwarded == list(range(1, 11))


def test_is_new_changes_nothing():
    tracker = SequenceTracker("/n")
    assert tracker.is_new({"n": 3}) and tracker.is_new({"n": 3})
    tracker.observe({"n": 3})
    assert not tracker.is_new({"n": 3}) and not tracker.is_new({"n": 2})
    assert tracker.is_new({"n": 4}) and tracker.last() == 3


@pytest.mark.parametrize(("value", "unit", "expected"), [
    (1764089650, "s", 1764089650.0),
    (1764089650.25, "s", 1764089650.25),
    (1764089650123, "ms", 1764089650.123),
    ("1597026383085", "ms", 1597026383.085),  # OKX quotes its ms
    (1764089650123456, "us", 1764089650.123456),
    (1764089650123456789, "ns", 1764089650.1234567),
    ("1764089650123456789", "ns", 1764089650.1234567),
    ("1.5e3", "s", 1500.0),
    ("2026-11-25T16:54:10.123456Z", "iso", 1795625650.123456),
    ("2026-11-25T16:54:10Z", "iso", 1795625650.0),
    ("2026-11-25T16:54:10.123456789Z", "iso", 1795625650.123456789),
    ("2026-11-25t16:54:10.5z", "iso", 1795625650.5),
    ("2026-11-25 16:54:10.1+00:00", "iso", 1795625650.1),
    ("2026-11-25T18:54:10.1+02:00", "iso", 1795625650.1),
    ("2026-11-25T11:24:10-0530", "iso", 1795625650.0),
    ("2024-02-29T00:00:00Z", "iso", float(calendar.timegm((2024, 2, 29, 0, 0, 0)))),
])
def test_event_times_in_every_unit(value, unit, expected):
    assert event_time_seconds({"E": value}, "/E", unit) == pytest.approx(expected, abs=1e-6)


def test_nanoseconds_keep_microsecond_precision():
    seconds = EventTime("/t", "ns").seconds({"t": 1764089650123456789})
    assert abs(seconds - 1764089650.123456789) < 1e-6


@pytest.mark.parametrize(("value", "unit"), [
    (None, "ms"), (True, "ms"), ("soon", "ms"), ("nan", "ms"), ("inf", "s"), ([1], "s"),
    ({"a": 1}, "ms"), (1764089650, "iso"), ("2026-11-25T16:54:10", "iso"),
    ("2026-11-25", "iso"), ("2026-13-25T16:54:10Z", "iso"), ("2026-02-30T16:54:10Z", "iso"),
    ("2026-11-25T24:00:00Z", "iso"), ("2026-11-25T23:59:60Z", "iso"),
    ("x2026-11-25T16:54:10Z", "iso"),
])
def test_malformed_event_times_are_none(value, unit):
    assert event_time_seconds({"E": value}, "/E", unit) is None


def test_a_missing_event_time_is_none():
    reader = EventTime("/data/0/ts", "ms")
    assert reader.seconds({"data": []}) is None and reader.seconds("text") is None
    assert reader.seconds({"data": [{"ts": "1597026383085"}]}) == pytest.approx(1597026383.085)


def test_bad_units_and_pointers_are_refused():
    with pytest.raises(ValueError, match="unknown time unit"):
        EventTime("/t", "minutes")
    with pytest.raises(ValueError, match="must be empty or start with '/'"):
        EventTime("t", "ms")
    with pytest.raises(ValueError, match="must be empty or start with '/'"):
        SequenceTracker("seq")


def test_parse_iso_is_exact_for_whole_seconds():
    assert parse_iso("1970-01-01T00:00:00Z") == 0.0
    assert parse_iso("1970-01-01T01:00:00+01:00") == 0.0


ISO_CASES = [
    ("2026-11-25T16:54:10.123456Z", 1795625650.123456),
    ("2026-11-25T16:54:10.123456789Z", 1795625650.123456789),
    ("2026-11-25t16:54:10.5z", 1795625650.5),
    ("2026-11-25 16:54:10,25+00:00", 1795625650.25),
    ("2026-11-25T18:54:10+02:00", 1795625650.0),
    ("2026-11-25T11:24:10-0530", 1795625650.0),
]


@pytest.mark.parametrize(("text", "expected"), ISO_CASES)
def test_the_fallback_parser_agrees(text, expected):
    # The fallback is what Python 3.10 (no "Z" in fromisoformat) uses for every time.
    assert _parse_rfc3339(text) == pytest.approx(expected, abs=1e-6)
    assert parse_iso(text) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("text", [
    "2026-11-25T16:54:10", "2026-02-30T16:54:10Z", "2026-11-25T24:00:00Z",
    "2026-11-25T23:59:60Z", "2026-11-25T16:54:10+24:00", "2026-11-25T16:54:10.1234567890Z",
    "2026-11-25T16:54:10.Z", "20261125T165410Z",
])
def test_the_fallback_parser_is_strict_rfc3339(text):
    assert _parse_rfc3339(text) is None
