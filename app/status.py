"""Which connections are up, in one place: `/readyz`, `/healthz` and the `up` gauges read it.

Partitions report here from their own threads; the HTTP thread reads. Nothing here writes a
metric: the `up` gauges are computed from this record when they are scraped.

A feed is up only on recent evidence: it is connected (and subscribed), and a frame or a pong
arrived within its `stale_after` seconds (ping_interval + ping_timeout). While nothing runs its
event loop (a worker waiting on the sink), no evidence arrives, and the feed stops counting as
up rather than claiming what nobody checked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple


@dataclass
class FeedHealth:
    """One feed's evidence of life, written by its reader (plain attribute stores)."""

    stale_after: float
    connected: bool = False
    alive_at: float = 0.0  # time.monotonic() of the last frame or pong

    def up(self, now: float) -> bool:
        return self.connected and now - self.alive_at <= self.stale_after

    def seen(self) -> None:
        self.alive_at = time.monotonic()


class SpoolState(NamedTuple):
    """What `/readyz` needs to know of a spool: bytes waiting, and whether a batch fits."""

    bytes: int
    takes_batches: bool


class ConnectionStatus:
    """Thread-safe record of the feeds and sink connections served by this process.

    A feed or sink connection is registered (down) when its partition is built, so a process
    is not ready before its dataflow has started, nor while anything registered is down. Until
    then (a cluster process waiting for its peers) every configured feed counts as down: none
    has been tried, and which of them this process will read is not known yet.
    """

    def __init__(self, feeds: Iterable[str] = (), *, all_local: bool = False) -> None:
        """`feeds`: every configured feed; `all_local`: this process reads all of them (no
        cluster), so it is not ready before each one is registered and up."""
        self._lock = threading.Lock()
        self._configured = sorted(feeds)
        self._all_local = all_local
        self._feeds: dict[str, FeedHealth] = {}
        self._sinks: dict[str, bool] = {}
        self._spool: Callable[[], SpoolState] | None = None
        self._handed_over = False

    def set_spool(self, state: Callable[[], SpoolState]) -> None:
        """With a spool: a sink that is down keeps the process ready while the spool takes
        batches (`state` is called on every `/readyz`: it must be cheap)."""
        self._spool = state

    @property
    def running(self) -> bool:
        """True while the dataflow runs: handed to Bytewax, and a partition of it built (a
        cluster process builds none before every peer has joined)."""
        with self._lock:
            return self._handed_over and (bool(self._feeds) or bool(self._sinks))

    @running.setter
    def running(self, value: bool) -> None:
        """Set when the flow is handed to Bytewax, cleared when it has ended."""
        with self._lock:
            self._handed_over = value

    def feed(self, name: str, stale_after: float) -> FeedHealth:
        """Register a feed (down) and return the record its reader keeps up to date."""
        health = FeedHealth(stale_after)
        with self._lock:
            self._feeds[name] = health
        return health

    def set_sink(self, connection: str, up: bool) -> None:
        with self._lock:
            self._sinks[connection] = up

    def source_up(self, name: str) -> bool:
        with self._lock:
            health = self._feeds.get(name)
        return health is not None and health.up(time.monotonic())

    def sink_up(self) -> bool:
        """True while every registered sink connection is open (and there is one)."""
        with self._lock:
            return bool(self._sinks) and all(self._sinks.values())

    def readiness(self) -> dict[str, object]:
        """{"ready": bool, "sources_down": [...], "sink_up": bool}, and with a spool
        "spool_bytes" (bytes waiting) and "spool_full" (it takes no more batches)."""
        now = time.monotonic()
        with self._lock:
            started = bool(self._feeds) or bool(self._sinks)
            if started:
                down = sorted(name for name, health in self._feeds.items() if not health.up(now))
                if self._all_local:  # partitions still being built: their feeds are down too
                    down = sorted({*down, *(n for n in self._configured if n not in self._feeds)})
            else:
                down = list(self._configured)
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
