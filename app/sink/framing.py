"""Serialised envelopes -> the text frames written to the sink, and how to confirm them (pure)."""

from __future__ import annotations

from collections.abc import Iterator

from app.settings import Framing


def frames_for(messages: list[bytes], framing: Framing, max_bytes: int) -> list[bytes]:
    """The text frames to send: one per message, or JSON arrays of messages, each array at most
    `max_bytes` long (every message is at most `max_bytes` - 2: the envelope step made sure)."""
    if framing == "message":
        return messages
    frames: list[bytes] = []
    start, size = 0, 2
    for index, message in enumerate(messages):
        extra = len(message) + (1 if index > start else 0)
        if index > start and size + extra > max_bytes:
            frames.append(b"[" + b",".join(messages[start:index]) + b"]")
            start, size, extra = index, 2, len(message)
        size += extra
    if start < len(messages):
        frames.append(b"[" + b",".join(messages[start:]) + b"]")
    return frames


def chunks(frames: list[bytes], start: int, max_frames: int,
           max_bytes: int) -> Iterator[tuple[int, int]]:
    """(begin, end) index ranges covering frames[start:], each at most `max_frames` frames and,
    past its first frame, at most `max_bytes`: each range is confirmed on its own, so a resend
    after a failure starts from the first range not confirmed."""
    begin = start
    while begin < len(frames):
        end, size = begin + 1, len(frames[begin])
        while (end < len(frames) and end - begin < max_frames
               and size + len(frames[end]) <= max_bytes):
            size += len(frames[end])
            end += 1
        yield begin, end
        begin = end
