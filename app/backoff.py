"""Reconnection delays: exponential backoff with full jitter (pure).

Source and sink both reconnect with `backoff()`; each starts a fresh generator after a connection
that lived `RESET_AFTER_S`, so a long-lived connection that drops is retried quickly.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

RESET_AFTER_S = 30.0


def backoff(
    min_s: float, max_s: float, *, factor: float = 2.0,
    uniform: Callable[[float, float], float] = random.uniform,
) -> Iterator[float]:
    """Yield delays in [0, cap], the cap doubling from `min_s` up to `max_s` (full jitter)."""
    cap = min_s
    while True:
        yield uniform(0.0, cap)
        cap = min(max_s, cap * factor)
