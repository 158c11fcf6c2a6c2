"""build_flow(options) -> Dataflow: feeds -> envelopes -> sink (and dead-letter sink).

Every step is stateless, so nothing is exchanged between workers: a feed's chunks stay on the
worker that reads the feed, and per-feed order holds end to end.
"""

from __future__ import annotations

import threading

import bytewax.operators as op
import structlog
from bytewax.dataflow import Dataflow

from app.envelope import Encoded, EnvelopeBuilder, Outcome, Poll
from app.feed.source import WebSocketSource
from app.logs import RateLimiter
from app.metrics import Metrics
from app.settings import Options
from app.sink.sink import WebSocketSink
from app.status import ConnectionStatus
from app.transform import Transform

log = structlog.get_logger("app.flow")


class _Delivery:
    """Latency and counts for envelopes the sink has just written."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def __call__(self, items: list[Encoded], finished_at: float) -> None:
        oldest: dict[str, float] = {}
        observe = self._metrics.message_latency.observe
        count = 0
        for item in items:
            count += len(item.messages)
            for received_at in item.received:
                observe(finished_at - received_at)
            if item.received:
                first = item.received[0]
                oldest[item.source] = min(first, oldest.get(item.source, first))
        self._metrics.messages_sent.inc(count)
        for source, received_at in oldest.items():
            self._metrics.batch_latency.labels(source).observe(finished_at - received_at)


class _DeadLetters:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def __call__(self, items: list[Encoded], _finished_at: float) -> None:
        self._metrics.dead_letters_sent.inc(sum(len(item.messages) for item in items))


class _Envelopes:
    """The envelope step: the pure builder plus the counting and (rate-limited) logging."""

    def __init__(self, builder: EnvelopeBuilder, metrics: Metrics) -> None:
        self._builder = builder
        self._metrics = metrics
        self._quiet = RateLimiter()

    def __call__(self, poll: Poll) -> list[Outcome]:
        outcomes = [self._builder(chunk) for chunk in poll]
        for outcome in outcomes:
            if outcome.dropped or outcome.invalid:
                self._count(outcome)
        return outcomes

    def _count(self, outcome: Outcome) -> None:
        source = outcome.encoded.source
        if outcome.dropped:
            self._metrics.messages_dropped.labels(source).inc(outcome.dropped)
        for reason, count in outcome.invalid.items():
            self._metrics.messages_invalid.labels(source, reason).inc(count)
        if outcome.invalid:
            suppressed = self._quiet.allow(source)
            if suppressed is not None:  # counts of this chunk; the counters have every one
                log.warning("invalid_messages", source=source, counts=outcome.invalid,
                            example=outcome.first_problem, suppressed_lines=suppressed)


def _valid(outcomes: list[Outcome]) -> list[Encoded] | None:
    valid = [outcome.encoded for outcome in outcomes if outcome.encoded.messages]
    return valid or None


def _rejected(outcomes: list[Outcome]) -> list[Encoded] | None:
    rejected = [Encoded(outcome.encoded.source, outcome.dead_letters)
                for outcome in outcomes if outcome.dead_letters]
    return rejected or None


def build_flow(options: Options, *, workers: int, transform: Transform | None,
               status: ConnectionStatus, metrics: Metrics, stopping: threading.Event) -> Dataflow:
    """The dataflow for these options over `workers` workers (in the whole cluster);
    `stopping` set means: stop reading, flush, end."""
    metrics.sink_up.set_function(lambda: float(status.sink_up()))
    flow = Dataflow("ws_ingest")
    chunks = op.input("feeds", flow, WebSocketSource(
        options.source, workers, status, metrics, stopping))
    outcomes = op.map("envelope", chunks,
                      _Envelopes(EnvelopeBuilder(options.envelope, transform), metrics))
    op.output("sink", op.filter_map("valid", outcomes, _valid), WebSocketSink(
        options.sink, status, metrics, stopping, _Delivery(metrics)))
    if options.dead_letter is not None:
        op.output("dead_letter", op.filter_map("rejected", outcomes, _rejected), WebSocketSink(
            options.dead_letter, status, metrics, stopping, _DeadLetters(metrics)))
    return flow
