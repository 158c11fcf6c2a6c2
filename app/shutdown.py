"""The stop request: a `threading.Event` that remembers when it was set, so that every part of
the process (each sink partition, the dead-letter sink) counts INGEST_SHUTDOWN_TIMEOUT_MS from
the same moment rather than each from its own first look."""

from __future__ import annotations

import threading
import time


class StopSignal(threading.Event):
    """Set by the first SIGTERM/SIGINT (or a test); `set_at` is `time.monotonic()` then, and
    `timeout_s` (INGEST_SHUTDOWN_TIMEOUT_MS) counts from it."""

    def __init__(self, timeout_s: float | None = None) -> None:
        super().__init__()
        self._set_lock = threading.Lock()
        self.set_at: float | None = None
        self.timeout_s = timeout_s

    def set(self) -> None:
        with self._set_lock:
            if self.set_at is None:
                self.set_at = time.monotonic()
        super().set()


def stopped_at(stopping: threading.Event) -> float | None:
    """When `stopping` was set (`time.monotonic()`), if it says; None for a plain Event."""
    return stopping.set_at if isinstance(stopping, StopSignal) else None


def time_left(stopping: threading.Event) -> float | None:
    """Seconds to the shutdown deadline, if `stopping` was set and knows its timeout."""
    if not isinstance(stopping, StopSignal) or stopping.set_at is None:
        return None
    if stopping.timeout_s is None:
        return None
    return stopping.set_at + stopping.timeout_s - time.monotonic()
