"""Waiting on a condition with a deadline: the one way tests wait (never a fixed sleep)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def wait_until(condition: Callable[[], object], timeout: float = 20.0, interval: float = 0.02,
               message: str | Callable[[], str] = "condition not met") -> None:
    """Return as soon as `condition()` is truthy; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(message() if callable(message) else message)
        time.sleep(interval)


def holds_for(condition: Callable[[], object], seconds: float, interval: float = 0.05) -> bool:
    """True if `condition()` stays truthy for `seconds` (to check that nothing happens)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not condition():
            return False
        time.sleep(interval)
    return bool(condition())


async def until(condition: Callable[[], object], timeout: float = 20.0,
                message: str = "condition not met", interval: float = 0.01) -> None:
    """`wait_until` inside an event loop: the loop runs on while this waits."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {message}")
        await asyncio.sleep(interval)


async def past(deadline: Callable[[], float]) -> None:
    """Until `time.monotonic()` reaches `deadline()`, a deadline that activity may push later
    (a venue's idle limit): sleeps to the deadline as it stands, then looks again."""
    while (left := deadline() - time.monotonic()) > 0:
        await asyncio.sleep(left)
