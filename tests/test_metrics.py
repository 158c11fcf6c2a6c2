"""metrics.py: every contract metric declared on the registry given, a feed's series at 0."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from app.metrics import (
    CONNECT_FAILURE_REASONS,
    CONTROL_KINDS,
    LATENCY_BUCKETS,
    Metrics,
    OwnedHistogram,
    observe_all,
)
from app.status import ConnectionStatus

CONTRACT_FAMILIES = {
    # name: (type, labels)
    "ingest_batch_latency_seconds": ("histogram", ("source",)),
    "ingest_message_latency_seconds": ("histogram", ()),
    "ingest_source_batch_size": ("histogram", ("source",)),
    "ingest_sink_write_seconds": ("histogram", ()),
    "ingest_messages_received": ("counter", ("source",)),
    "ingest_bytes_received": ("counter", ("source",)),
    "ingest_messages_sent": ("counter", ()),
    "ingest_messages_invalid": ("counter", ("source", "reason")),
    "ingest_messages_dropped": ("counter", ("source",)),
    "ingest_source_up": ("gauge", ("source",)),
    "ingest_source_connects": ("counter", ("source",)),
    "ingest_source_last_message_timestamp_seconds": ("gauge", ("source",)),
    "ingest_sink_up": ("gauge", ()),
    "ingest_sink_retries": ("counter", ()),
    "ingest_control_messages": ("counter", ("source", "kind")),
    "ingest_subscribe_failures": ("counter", ("source",)),
    "ingest_source_rotations": ("counter", ("source", "reason")),
    "ingest_upstream_gaps": ("counter", ("source",)),
    "ingest_upstream_missing": ("counter", ("source",)),
    "ingest_upstream_lag_seconds": ("histogram", ("source",)),
    "ingest_spool_bytes": ("gauge", ()),
    "ingest_spool_messages": ("gauge", ()),
    "ingest_spool_oldest_age_seconds": ("gauge", ()),
    "ingest_spool_dropped": ("counter", ()),
    "ingest_source_connect_failures": ("counter", ("source", "reason")),
}


def test_every_contract_family_is_declared_with_its_type_and_labels():
    metrics = Metrics(CollectorRegistry())
    declared = {family.name: (family.type, tuple(
        label for label in family.samples[0].labels if label != "le") if family.samples else None)
        for family in metrics.registry.collect()}
    metrics.feed("x")
    declared_with_feed = {family.name: family for family in metrics.registry.collect()}
    for name, (kind, labels) in CONTRACT_FAMILIES.items():
        assert name in declared, name
        assert declared[name][0] == kind, name
        samples = declared_with_feed[name].samples
        assert samples, f"{name} has no series once a feed exists"
        assert {key for key in samples[0].labels if key != "le"} == set(labels), name


def test_a_feeds_series_exist_at_zero_from_the_start():
    metrics = Metrics(CollectorRegistry())
    metrics.feed("f")
    value = metrics.registry.get_sample_value
    assert value("ingest_messages_received_total", {"source": "f"}) == 0
    for kind in CONTROL_KINDS:
        assert value("ingest_control_messages_total", {"source": "f", "kind": kind}) == 0
    for reason in CONNECT_FAILURE_REASONS:
        assert value("ingest_source_connect_failures_total",
                     {"source": "f", "reason": reason}) == 0
    assert value("ingest_upstream_lag_seconds_count", {"source": "f"}) == 0


def test_up_gauges_read_the_status_when_scraped():
    metrics, status = Metrics(CollectorRegistry()), ConnectionStatus()
    feed = metrics.feed("f")
    feed.up.set_function(lambda: float(status.source_up("f")))
    metrics.sink_up.set_function(lambda: float(status.sink_up()))
    value = metrics.registry.get_sample_value
    assert value("ingest_source_up", {"source": "f"}) == 0
    health = status.feed("f", stale_after=10)
    health.connected = True
    health.seen()
    status.set_sink("sink-0", True)
    assert value("ingest_source_up", {"source": "f"}) == 1
    assert value("ingest_sink_up") == 1


def test_observe_all_and_owned_histograms_count_as_observe_does():
    # They write prometheus-client's internals: the same series as observe, or they broke.
    values = [0.0, -1.0, 0.0005, 0.001, 0.0011, *LATENCY_BUCKETS, 29.9, 30.0, 31.0, 1e9,
              *(i / 997 for i in range(2000))]
    one_by_one, all_at_once, ours_one_by_one = (
        CollectorRegistry(), CollectorRegistry(), CollectorRegistry())
    by_one = Metrics(one_by_one).message_latency
    at_once = Metrics(all_at_once).message_latency
    ours_by_one = OwnedHistogram(Metrics(ours_one_by_one).message_latency)
    for value in values:
        by_one.observe(value)
        ours_by_one.observe(value)
    observe_all(at_once, values)
    observe_all(at_once, [])

    def samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
        return [(s.name, s.labels, s.value) for family in registry.collect()
                if family.name == "ingest_message_latency_seconds" for s in family.samples
                if not s.name.endswith("_created")]

    assert samples(one_by_one) == samples(all_at_once) == samples(ours_one_by_one)
    assert any(value > 0 for _, _, value in samples(all_at_once))


def test_a_poll_counts_as_the_four_calls_it_stands_for():
    # polled() writes values prometheus-client reads when scraped: the same series as its own
    # inc, observe and set give, or it broke.
    by_calls, by_polled = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    polled = by_polled.feed("f")
    for count, size, last in ((1, 200, 10.5), (7, 1400, 11.25), (1000, 10**6, 12.0)):
        by_calls.messages_received.labels("f").inc(count)
        by_calls.bytes_received.labels("f").inc(size)
        by_calls.source_batch_size.labels("f").observe(count)
        by_calls.source_last_message.labels("f").set(last)
        polled.polled(count, size, last)

    def samples(metrics: Metrics) -> list[tuple[str, dict[str, str], float]]:
        families = {"ingest_messages_received", "ingest_bytes_received",
                    "ingest_source_batch_size", "ingest_source_last_message_timestamp_seconds"}
        return [(s.name, s.labels, s.value) for family in metrics.registry.collect()
                if family.name in families
                for s in family.samples if not s.name.endswith("_created")]

    assert samples(by_calls) == samples(by_polled)
    assert ("ingest_source_last_message_timestamp_seconds", {"source": "f"}, 12.0) in (
        samples(by_polled))
    assert ("ingest_messages_received_total", {"source": "f"}, 1008.0) in samples(by_polled)
