"""Which connections are open, in one place: `/readyz` and the `up` gauges both read it.

Partitions report their connections here from their own threads; the HTTP thread reads. Nothing
here writes a metric: the `up` gauges are computed from this record when they are scraped.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class ConnectionStatus:
    """Thread-safe record of the feeds and sink connections served by this process.

    A feed or sink connection is registered (down) when its partition is built, so a process
    is not ready before its dataflow has started, nor while anything registered is down. Until
    then (a cluster process waiting for its peers) every configured feed counts as down: none
    has been tried, and which of them this process will read is not known yet.
    """

    def __init__(self, feeds: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._configured = sorted(feeds)
        self._sources: dict[str, bool] = {}
        self._sinks: dict[str, bool] = {}
        self._handed_over = False

    @property
    def running(self) -> bool:
        """True while the dataflow runs: handed to Bytewax, and a partition of it built (a
        cluster process builds none before every peer has joined)."""
        with self._lock:
            return self._handed_over and (bool(self._sources) or bool(self._sinks))

    @running.setter
    def running(self, value: bool) -> None:
        """Set when the flow is handed to Bytewax, cleared when it has ended."""
        with self._lock:
            self._handed_over = value

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
        """{"ready": bool, "sources_down": [...], "sink_up": bool}."""
        with self._lock:
            started = bool(self._sources) or bool(self._sinks)
            if started:
                down = sorted(name for name, up in self._sources.items() if not up)
            else:
                down = list(self._configured)
        sink_up = self.sink_up()
        return {"ready": started and not down and sink_up, "sources_down": down,
                "sink_up": sink_up}
