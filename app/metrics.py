"""Every metric ws-ingest exports (names fixed by CONTRACT.md), on one registry.

`Metrics` declares every family on the registry it is given (prometheus-client's default one in
the service, a fresh one per test); `Metrics.feed(name)` and `Metrics.sink()` hand a partition the
children it writes, created up front so every series reads 0 rather than missing. Labels stay
low-cardinality: `source` is a configured feed name, the rest are fixed words.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# 1 ms to 30 s.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
INVALID_REASONS = ("decode", "too_large", "transform")
CONTROL_KINDS = ("heartbeat", "reply", "control", "ack", "notice")
ROTATION_REASONS = ("age", "notice")
CONNECT_FAILURE_REASONS = ("dns", "refused", "timeout", "tls", "rejected", "other")


class Metrics:
    """Every metric family, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        def histogram(name: str, doc: str, labels: tuple[str, ...] = (),
                      buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=registry)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=registry)

        self.registry = registry
        self.batch_latency = histogram(
            "ingest_batch_latency_seconds",
            "Per batch written to the sink: receipt of its oldest message of the feed to end "
            "of write.", ("source",))
        self.message_latency = histogram(
            "ingest_message_latency_seconds", "Per message: receipt to end of the write.")
        self.source_batch_size = histogram(
            "ingest_source_batch_size", "Messages per (non-empty) source poll.", ("source",),
            buckets=BATCH_SIZE_BUCKETS)
        self.sink_write_seconds = histogram(
            "ingest_sink_write_seconds", "Duration of each sink write_batch.")
        self.messages_received = counter(
            "ingest_messages_received", "Data frames received, valid or not.", ("source",))
        self.bytes_received = counter(
            "ingest_bytes_received", "Payload bytes received (without framing).", ("source",))
        self.messages_sent = counter("ingest_messages_sent", "Frames written to the sink.")
        self.messages_invalid = counter(
            "ingest_messages_invalid", "Invalid frames by reason.", ("source", "reason"))
        self.messages_dropped = counter(
            "ingest_messages_dropped", "Messages dropped by the user transform.", ("source",))
        self.source_up = gauge("ingest_source_up", "1 while the feed is connected.", ("source",))
        self.source_connects = counter(
            "ingest_source_connects", "Successful (re)connects to the feed.", ("source",))
        self.source_last_message = gauge(
            "ingest_source_last_message_timestamp_seconds",
            "Unix time of the last message from the feed.", ("source",))
        self.sink_up = gauge(
            "ingest_sink_up", "1 while every sink connection of this process is open.")
        self.sink_retries = counter("ingest_sink_retries", "Resends after a failed sink write.")
        self.dead_letters_sent = counter(
            "ingest_dead_letters_sent", "Records written to the dead-letter socket.")
        # Real venues and the spool (declared from the start, like the rest: CONTRACT.md).
        self.control_messages = counter(
            "ingest_control_messages", "Control frames by kind (not data).", ("source", "kind"))
        self.subscribe_failures = counter(
            "ingest_subscribe_failures", "Subscriptions refused or not acknowledged in time.",
            ("source",))
        self.source_rotations = counter(
            "ingest_source_rotations", "Make-before-break reconnects by reason.",
            ("source", "reason"))
        self.upstream_gaps = counter(
            "ingest_upstream_gaps", "Breaks in the upstream sequence.", ("source",))
        self.upstream_missing = counter(
            "ingest_upstream_missing", "Upstream sequence numbers never received.", ("source",))
        self.upstream_lag = histogram(
            "ingest_upstream_lag_seconds", "Receipt time minus the venue's event time.",
            ("source",))
        self.spool_bytes = gauge("ingest_spool_bytes", "Bytes waiting in the spool.")
        self.spool_messages = gauge("ingest_spool_messages", "Messages waiting in the spool.")
        self.spool_oldest_age = gauge(
            "ingest_spool_oldest_age_seconds", "Age of the oldest message waiting (0 when empty).")
        self.spool_dropped = counter(
            "ingest_spool_dropped", "Messages refused by a full spool with drop_newest.")
        self.source_connect_failures = counter(
            "ingest_source_connect_failures", "Failed connection attempts by reason.",
            ("source", "reason"))

    def feed(self, source: str) -> FeedMetrics:
        return FeedMetrics(self, source)


class FeedMetrics:
    """One feed's labelled children, created (at 0) when its partition is built."""

    def __init__(self, metrics: Metrics, source: str) -> None:
        # What each poll updates: written by the one thread that polls the feed (see `polled`).
        self._received = _owned(metrics.messages_received.labels(source))
        self._bytes = _owned(metrics.bytes_received.labels(source))
        self._last_message = _owned(metrics.source_last_message.labels(source))
        self._batch_size = OwnedHistogram(metrics.source_batch_size.labels(source))
        self.up = metrics.source_up.labels(source)
        self.connects = metrics.source_connects.labels(source)
        self.connect_failures = {reason: metrics.source_connect_failures.labels(source, reason)
                                 for reason in CONNECT_FAILURE_REASONS}
        self.invalid = {reason: metrics.messages_invalid.labels(source, reason)
                        for reason in INVALID_REASONS}
        self.control = {kind: metrics.control_messages.labels(source, kind)
                        for kind in CONTROL_KINDS}
        self.rotations = {reason: metrics.source_rotations.labels(source, reason)
                          for reason in ROTATION_REASONS}
        self.subscribe_failures = metrics.subscribe_failures.labels(source)
        self.upstream_gaps = metrics.upstream_gaps.labels(source)
        self.upstream_missing = metrics.upstream_missing.labels(source)
        self.upstream_lag = metrics.upstream_lag.labels(source)
        for family in (metrics.messages_dropped, metrics.batch_latency):
            family.labels(source)

    def polled(self, messages: int, size: int, last_received_at: float) -> None:
        """One poll's frames, counted into the received, bytes, batch-size and last-message
        series as `inc`, `observe` and `set` would, but without a lock: only the thread that
        polls the feed calls this. With a thousand feeds a poll updates thousands of series,
        and their locks were a tenth of the service's CPU (by profile)."""
        self._received.value += messages
        self._bytes.value += size
        self._batch_size.observe(messages)
        self._last_message.value = last_received_at


class _OwnedValue:
    """Stands in for prometheus-client's value of a series that one thread writes: that
    thread adds to `value` without a lock, a scrape reads it (`get`), a single load under the
    GIL. It has no `inc` or `set`: prometheus-client's own calls on such a series fail loudly
    rather than race. tests/test_metrics.py checks that a scrape still reads values this way."""

    __slots__ = ("value",)

    def __init__(self, value: float) -> None:
        self.value = value

    def get(self) -> float:
        return self.value

    def get_exemplar(self) -> None:
        return None


class OwnedHistogram:
    """A histogram series that one thread writes: `observe` as prometheus-client's, into
    `_OwnedValue`s."""

    __slots__ = ("_bounds", "_buckets", "_sum")

    def __init__(self, child: Histogram) -> None:
        child._buckets = [_owned_value(bucket) for bucket in child._buckets]
        child._sum = _owned_value(child._sum)
        self._bounds, self._buckets, self._sum = child._upper_bounds, child._buckets, child._sum

    def observe(self, value: float) -> None:
        self._buckets[bisect_left(self._bounds, value)].value += 1  # the first bound >= value
        self._sum.value += value


def _owned_value(value: Any) -> _OwnedValue:
    return value if isinstance(value, _OwnedValue) else _OwnedValue(value.get())


def _owned(child: Counter | Gauge) -> _OwnedValue:
    """`child`, its value now an `_OwnedValue`."""
    child._value = value = _owned_value(child._value)
    return value


def observe_all(histogram: Histogram, values: Iterable[float]) -> None:
    """`histogram.observe(v)` for every v, taking one lock per bucket touched instead of two
    per value (the sink observes every message it delivers). It counts into
    prometheus-client's own `_upper_bounds`, `_buckets` and `_sum`, as `observe` does;
    tests/test_metrics.py checks that both give the same series."""
    bounds = histogram._upper_bounds
    counts = [0] * len(bounds)
    total = 0.0
    for value in values:
        counts[bisect_left(bounds, value)] += 1  # the first bucket with value <= bound
        total += value
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(total)
