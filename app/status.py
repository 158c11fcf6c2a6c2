"""Which connections are open: the `up` gauges and /readyz are both derived from here."""

from __future__ import annotations

import threading

from app import metrics


class ConnectionStatus:
    """Thread-safe record of the feeds and sink connections served by this process.

    A feed or sink connection is registered (down) when its partition is built, so a process
    is not ready before its dataflow has started, nor while anything registered is down.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[str, bool] = {}
        self._sinks: dict[str, bool] = {}
        self.running = False

    def add_source(self, name: str) -> None:
        metrics.init_source(name)
        self.set_source(name, False)

    def set_source(self, name: str, up: bool) -> None:
        with self._lock:
            self._sources[name] = up
        metrics.source_up.labels(name).set(int(up))

    def set_sink(self, connection: str, up: bool) -> None:
        with self._lock:
            self._sinks[connection] = up
            all_up = all(self._sinks.values())
        metrics.sink_up.set(int(all_up))

    def readiness(self) -> dict[str, object]:
        """{"ready": bool, "sources_down": [...], "sink_up": bool}."""
        with self._lock:
            down = sorted(name for name, up in self._sources.items() if not up)
            sink_up = bool(self._sinks) and all(self._sinks.values())
            started = bool(self._sources) or bool(self._sinks)
        return {"ready": started and not down and sink_up, "sources_down": down,
                "sink_up": sink_up}
