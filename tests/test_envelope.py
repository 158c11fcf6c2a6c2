import base64
import json

import pytest

from app.envelope import Chunk, EnvelopeBuilder, Frame, format_timestamp, payload_size
from app.errors import InvalidMessageError
from app.settings import EnvelopeOptions

T = 1_795_000_000.123456  # 2026-11-18T...


def frame(seq, payload, received_at=T):
    return Frame(seq, received_at, payload, payload_size(payload))


def build(frames, *, payload="json", on_invalid="drop", transform=None, limit=100):
    builder = EnvelopeBuilder(EnvelopeOptions(payload=payload, on_invalid=on_invalid,
                                              max_message_bytes={"f": limit}), transform)
    return builder(Chunk("f", frames))


def decoded(outcome):
    return [json.loads(m) for m in outcome.encoded.messages]


def test_timestamp_is_rfc3339_utc_with_microseconds():
    assert format_timestamp(0) == "1970-01-01T00:00:00.000000Z"
    assert format_timestamp(1_764_089_650.123456) == "2025-11-25T16:54:10.123456Z"
    assert format_timestamp(1.9999996) == "1970-01-01T00:00:02.000000Z"  # rounding carries


def test_payload_size_counts_utf8_bytes():
    assert payload_size(b"\x00\x01") == 2
    assert payload_size("abc") == 3
    assert payload_size("é") == 2


def test_json_envelope():
    outcome = build([frame(1, b'{"p": 1}'), frame(2, b"[1, 2]")])
    assert decoded(outcome) == [
        {"source": "f", "seq": 1, "received_at": format_timestamp(T), "data": {"p": 1}},
        {"source": "f", "seq": 2, "received_at": format_timestamp(T), "data": [1, 2]},
    ]
    assert outcome.encoded.received == [T, T]
    assert not outcome.invalid and outcome.dropped == 0


def test_text_frames_parse_too():
    assert decoded(build([frame(1, '{"a": "é"}')]))[0]["data"] == {"a": "é"}


@pytest.mark.parametrize("payload", [b"not json", b"\xff\xfe{}", b"", "", "{"])
def test_undecodable_frames_are_decode_invalid(payload):
    outcome = build([frame(1, b"1"), frame(2, payload), frame(3, b"3")])
    assert [m["seq"] for m in decoded(outcome)] == [1, 3]
    assert outcome.invalid == {"decode": 1}
    assert outcome.first_problem.startswith("seq 2: decode")


def test_oversized_frames_are_too_large_and_skipped():
    outcome = build([frame(1, b"[" + b"1," * 60 + b"1]"), frame(2, b"2")], limit=100)
    assert [m["seq"] for m in decoded(outcome)] == [2]
    assert outcome.invalid == {"too_large": 1}


def test_text_mode_forwards_strings_and_base64_binary():
    outcome = build([frame(1, "hello"), frame(2, b"\xff\x00"), frame(3, "")], payload="text")
    assert [m["data"] for m in decoded(outcome)] == [
        "hello", base64.b64encode(b"\xff\x00").decode(), ""]


def test_dead_letter_records_carry_seq_reason_and_raw():
    outcome = build([frame(1, b"oops"), frame(2, b"\xff"), frame(3, b"x" * 200)],
                    on_invalid="dead-letter")
    records = [json.loads(r) for r in outcome.dead_letters]
    assert [(r["seq"], r["reason"]) for r in records] == [
        (1, "decode"), (2, "decode"), (3, "too_large")]
    assert records[0]["raw"] == "oops" and records[0]["source"] == "f"
    assert records[0]["received_at"] == format_timestamp(T)
    assert records[1]["raw_encoding"] == "base64"
    assert records[2]["size"] == 200


def test_drop_policy_keeps_no_dead_letters():
    assert build([frame(1, b"oops")]).dead_letters == []


def test_fail_policy_raises():
    with pytest.raises(InvalidMessageError, match="seq 1: decode"):
        build([frame(1, b"oops")], on_invalid="fail")


def test_transform_may_change_drop_or_split():
    def hook(envelope):
        n = envelope["data"]["n"]
        if n == 1:
            return {**envelope, "data": n * 10}
        if n == 2:
            return None
        return [{"part": 1, "seq": envelope["seq"]}, {"part": 2, "seq": envelope["seq"]}]

    outcome = build([frame(i, json.dumps({"n": i}).encode(), T + i) for i in (1, 2, 3)],
                    transform=hook)
    assert [m.get("data", m.get("part")) for m in decoded(outcome)] == [10, 1, 2]
    assert outcome.dropped == 1
    assert outcome.encoded.received == [T + 1, T + 3, T + 3]


@pytest.mark.parametrize("hook", [lambda e: 1 / 0, lambda e: "a string", lambda e: {"x": object()}])
def test_transform_failures_are_transform_invalid(hook):
    outcome = build([frame(1, b"{}")], transform=hook)
    assert outcome.invalid == {"transform": 1} and outcome.encoded.messages == []
