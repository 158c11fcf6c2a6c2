"""framing.py: batch frames stay under the sink's limit; chunks cover every frame once."""

from __future__ import annotations

import json

from app.sink.framing import chunks, frames_for


def test_message_framing_is_one_frame_per_message():
    assert frames_for([b"1", b"2"], "message", 10) == [b"1", b"2"]


def test_batch_framing_splits_arrays_at_the_limit():
    messages = [json.dumps({"n": n, "pad": "x" * 40}).encode() for n in range(50)]
    frames = frames_for(messages, "batch", 500)
    assert all(len(frame) <= 500 for frame in frames)
    assert len(frames) > 1
    decoded = [item for frame in frames for item in json.loads(frame)]
    assert [item["n"] for item in decoded] == list(range(50))


def test_batch_framing_fits_a_single_message_of_limit_minus_two():
    message = b'"' + b"x" * 96 + b'"'
    assert frames_for([message, message], "batch", 100) == [b"[" + message + b"]"] * 2


def test_chunks_cover_the_rest_in_order_within_both_limits():
    frames = [b"x" * size for size in (10, 10, 10, 50, 5, 5, 5, 5)]
    ranges = list(chunks(frames, 1, max_frames=3, max_bytes=30))
    assert ranges == [(1, 3), (3, 4), (4, 7), (7, 8)]
    assert list(chunks(frames, 8, 3, 30)) == []


def test_a_frame_over_the_byte_limit_is_a_chunk_of_its_own():
    assert list(chunks([b"x" * 100, b"y"], 0, 10, 50)) == [(0, 1), (1, 2)]
