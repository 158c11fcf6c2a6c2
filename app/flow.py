"""build_flow(settings) -> Dataflow: feeds -> envelopes -> sink (and dead-letter sink).

Every step is stateless, so nothing is exchanged between workers: a feed's chunks stay on the
worker that reads the feed, and per-feed order holds end to end.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import bytewax.operators as op
import structlog
from bytewax.dataflow import Dataflow

from app import metrics
from app.envelope import Chunk, Encoded, EnvelopeBuilder, Outcome
from app.logs import RateLimiter
from app.settings import Settings, reveal
from app.sink import SinkOptions, WebSocketSink
from app.source import SourceOptions, WebSocketSource
from app.status import ConnectionStatus
from app.transform import Transform

log = structlog.get_logger("app.flow")


def record_delivery(items: list[Encoded], finished_at: float) -> None:
    """Latency and counts for envelopes the sink has just written."""
    oldest: dict[str, float] = {}
    observe = metrics.message_latency.observe
    count = 0
    for item in items:
        count += len(item.messages)
        for received_at in item.received:
            observe(finished_at - received_at)
        if item.received:
            first = item.received[0]
            oldest[item.source] = min(first, oldest.get(item.source, first))
    metrics.messages_sent.inc(count)
    for source, received_at in oldest.items():
        metrics.batch_latency.labels(source).observe(finished_at - received_at)


def record_dead_letters(items: list[Encoded], _finished_at: float) -> None:
    metrics.dead_letters_sent.inc(sum(len(item.messages) for item in items))


class _Envelopes:
    """The envelope step: the pure builder plus the counting and (rate-limited) logging."""

    def __init__(self, builder: EnvelopeBuilder) -> None:
        self._builder = builder
        self._quiet = RateLimiter()

    def __call__(self, chunk: Chunk) -> Outcome:
        outcome = self._builder(chunk)
        if outcome.dropped:
            metrics.messages_dropped.labels(chunk.source).inc(outcome.dropped)
        for reason, count in outcome.invalid.items():
            metrics.messages_invalid.labels(chunk.source, reason).inc(count)
        if outcome.invalid:
            suppressed = self._quiet.allow(chunk.source)
            if suppressed is not None:  # counts of this chunk; the counters have every one
                log.warning("invalid_messages", source=chunk.source,
                            counts=dict(outcome.invalid), example=outcome.first_problem,
                            suppressed_lines=suppressed)
        return outcome


def _sink_options(settings: Settings, url: str, headers: dict[str, str]) -> SinkOptions:
    return SinkOptions(
        url=url, headers=headers, framing=settings.sink_framing, confirm=settings.sink_confirm,
        reconnect_min_s=settings.reconnect_min_s,
        reconnect_max_s=settings.reconnect_max_s,
        shutdown_timeout_s=settings.shutdown_timeout_ms / 1000,
    )


def build_flow(settings: Settings, transform: Transform | None, status: ConnectionStatus,
               stopping: threading.Event) -> Dataflow:
    """The dataflow for these settings; `stopping` set means: stop reading, flush, end."""
    feeds = settings.feeds
    source = WebSocketSource(feeds, SourceOptions(
        payload=settings.payload,
        batch_size=settings.batch_size,
        batch_timeout=timedelta(milliseconds=settings.batch_timeout_ms),
        linger=timedelta(milliseconds=settings.batch_linger_ms),
        reconnect_min_s=settings.reconnect_min_s,
        reconnect_max_s=settings.reconnect_max_s,
    ), status, stopping)
    builder = EnvelopeBuilder(
        payload=settings.payload,
        max_message_bytes={feed.name: feed.max_message_bytes for feed in feeds},
        on_invalid=settings.on_invalid,
        transform=transform,
    )
    flow = Dataflow("ws_ingest")
    chunks = op.input("feeds", flow, source)
    outcomes = op.map("envelope", chunks, _Envelopes(builder))
    encoded = op.filter_map("valid", outcomes,
                            lambda outcome: outcome.encoded if outcome.encoded.messages else None)
    op.output("sink", encoded, WebSocketSink(
        _sink_options(settings, settings.sink_url, reveal(settings.sink_headers)), status, stopping,
        record_delivery))
    if settings.on_invalid == "dead-letter":
        assert settings.dead_letter_url is not None
        rejected = op.filter_map(
            "rejected", outcomes,
            lambda outcome: Encoded(outcome.encoded.source, outcome.dead_letters)
            if outcome.dead_letters else None)
        op.output("dead_letter", rejected, WebSocketSink(
            _sink_options(settings, settings.dead_letter_url, {}), status, stopping,
            record_dead_letters, name="dead_letter"))
    return flow
