"""Serialised envelopes -> the text frames written to the sink (pure)."""

from __future__ import annotations

from app.settings import Framing


def frames_for(messages: list[bytes], framing: Framing) -> list[bytes]:
    """The text frames to send: one per message, or one JSON array for the whole batch."""
    if framing == "batch":
        return [b"[" + b",".join(messages) + b"]"]
    return messages
