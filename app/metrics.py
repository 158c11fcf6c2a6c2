"""Every metric ws-ingest exports, in one place (names fixed by CONTRACT.md).

Module-level objects on prometheus-client's default registry, so the metrics of every worker
thread in the process appear on the one /metrics endpoint. Labels stay low-cardinality: `source`
is a configured feed name, `reason` one of three words.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# 1 ms to 30 s.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
INVALID_REASONS = ("decode", "too_large", "transform")
CONTROL_KINDS = ("heartbeat", "reply", "control", "ack", "notice")
ROTATION_REASONS = ("age", "notice")
CONNECT_FAILURE_REASONS = ("dns", "refused", "timeout", "tls", "rejected", "other")

batch_latency = Histogram(
    "ingest_batch_latency_seconds",
    "Per batch written to the sink: receipt of its oldest message of the feed to end of write.",
    ["source"], buckets=LATENCY_BUCKETS,
)
message_latency = Histogram(
    "ingest_message_latency_seconds",
    "Per message: receipt to end of the write.",
    buckets=LATENCY_BUCKETS,
)
source_batch_size = Histogram(
    "ingest_source_batch_size",
    "Messages per (non-empty) source poll.",
    ["source"], buckets=BATCH_SIZE_BUCKETS,
)
sink_write_seconds = Histogram(
    "ingest_sink_write_seconds", "Duration of each sink write_batch.", buckets=LATENCY_BUCKETS,
)
messages_received = Counter(
    "ingest_messages_received", "Frames received, valid or not.", ["source"],
)
bytes_received = Counter(
    "ingest_bytes_received", "Payload bytes received (without framing).", ["source"],
)
messages_sent = Counter("ingest_messages_sent", "Frames written to the sink.")
messages_invalid = Counter(
    "ingest_messages_invalid", "Invalid frames by reason.", ["source", "reason"],
)
messages_dropped = Counter(
    "ingest_messages_dropped", "Messages dropped by the user transform.", ["source"],
)
source_up = Gauge("ingest_source_up", "1 while the feed is connected.", ["source"])
source_connects = Counter(
    "ingest_source_connects", "Successful (re)connects to the feed.", ["source"],
)
source_last_message = Gauge(
    "ingest_source_last_message_timestamp_seconds",
    "Unix time of the last message from the feed.", ["source"],
)
sink_up = Gauge("ingest_sink_up", "1 while every sink connection of this process is open.")
sink_retries = Counter("ingest_sink_retries", "Resends after a failed sink write.")
dead_letters_sent = Counter(
    "ingest_dead_letters_sent", "Records written to the dead-letter socket.",
)


# Real venues and the spool (declared from the start, like the rest: CONTRACT.md).
control_messages = Counter(
    "ingest_control_messages", "Control frames by kind (not data).", ["source", "kind"],
)
subscribe_failures = Counter(
    "ingest_subscribe_failures", "Subscriptions refused or not acknowledged in time.", ["source"],
)
source_rotations = Counter(
    "ingest_source_rotations", "Make-before-break reconnects by reason.", ["source", "reason"],
)
upstream_gaps = Counter(
    "ingest_upstream_gaps", "Breaks in the upstream sequence.", ["source"],
)
upstream_missing = Counter(
    "ingest_upstream_missing", "Upstream sequence numbers never received.", ["source"],
)
upstream_lag = Histogram(
    "ingest_upstream_lag_seconds", "Receipt time minus the venue's event time.",
    ["source"], buckets=LATENCY_BUCKETS,
)
spool_bytes = Gauge("ingest_spool_bytes", "Bytes waiting in the spool.")
spool_messages = Gauge("ingest_spool_messages", "Messages waiting in the spool.")
spool_oldest_age = Gauge(
    "ingest_spool_oldest_age_seconds", "Age of the oldest message waiting (0 when empty).",
)
spool_dropped = Counter(
    "ingest_spool_dropped", "Messages refused by a full spool with drop_newest.",
)
source_connect_failures = Counter(
    "ingest_source_connect_failures", "Failed connection attempts by reason.",
    ["source", "reason"],
)


def init_source(source: str) -> None:
    """Create a feed's labelled series up front, so they read 0 rather than missing."""
    for metric in (batch_latency, source_batch_size, messages_received, bytes_received,
                   messages_dropped, source_up, source_connects, source_last_message,
                   subscribe_failures, upstream_gaps, upstream_missing, upstream_lag):
        metric.labels(source)
    for reason in INVALID_REASONS:
        messages_invalid.labels(source, reason)
    for kind in CONTROL_KINDS:
        control_messages.labels(source, kind)
    for reason in ROTATION_REASONS:
        source_rotations.labels(source, reason)
    for reason in CONNECT_FAILURE_REASONS:
        source_connect_failures.labels(source, reason)
