"""Which connections are open, in one place: `/readyz` and the `up` gauges both read it.

Partitions report their connections here from their own threads; the HTTP thread reads. Nothing
here writes a metric: the `up` gauges are computed from this record when they are scraped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NamedTuple


class SpoolState(NamedTuple):
    """What `/readyz` needs to know of a spool: bytes waiting, and whether a batch fits."""

    bytes: int
    takes_batches: bool


class ConnectionStatus:
    """Thread-safe record of the feeds and sink connections served by this process.

    A feed or sink connection is registered (down) when its partition is built, so a process
    is not ready before its dataflow has started, nor while anything registered is down.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[str, bool] = {}
        self._sinks: dict[str, bool] = {}
        self._spool: Callable[[], SpoolState] | None = None
        self.running = False

    def set_spool(self, state: Callable[[], SpoolState]) -> None:
        """With a spool: a sink that is down keeps the process ready while the spool takes
        batches (`state` is called on every `/readyz`: it must be cheap)."""
        self._spool = state

    def set_source(self, name: str, up: bool) -> None:
        with self._lock:
            self._sources[name] = up

    def set_sink(self, connection: str, up: bool) -> None:
        with self._lock:
            self._sinks[connection] = up

    def source_up(self, name: str) -> bool:
        with self._lock:
            return self._sources.get(name, False)

    def sink_up(self) -> bool:
        """True while every registered sink connection is open (and there is one)."""
        with self._lock:
            return bool(self._sinks) and all(self._sinks.values())

    def readiness(self) -> dict[str, object]:
        """{"ready": bool, "sources_down": [...], "sink_up": bool}, and with a spool
        "spool_bytes" (bytes waiting) and "spool_full" (it takes no more batches)."""
        with self._lock:
            down = sorted(name for name, up in self._sources.items() if not up)
            started = bool(self._sources) or bool(self._sinks)
        sink_up = self.sink_up()
        body: dict[str, object] = {"ready": False, "sources_down": down, "sink_up": sink_up}
        delivering = sink_up
        if self._spool is not None:
            spool = self._spool()
            body["spool_bytes"] = spool.bytes
            body["spool_full"] = not spool.takes_batches
            delivering = sink_up or spool.takes_batches
        body["ready"] = started and not down and delivering
        return body
