"""A user transform for the end-to-end test (INGEST_TRANSFORM=tests.transforms:odd_only)."""

from __future__ import annotations

from typing import Any


def odd_only(envelope: dict[str, Any]) -> dict[str, Any] | None:
    """Drop even ticks, tag the rest."""
    if envelope["data"]["n"] % 2 == 0:
        return None
    return {**envelope, "tagged": True}
