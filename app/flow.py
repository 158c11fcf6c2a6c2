"""build_flow(options) -> Dataflow: feeds -> envelopes -> sink (and dead-letter sink).

Every step is stateless, so nothing is exchanged between workers: a feed's chunks stay on the
worker that reads the feed, and per-feed order holds end to end.
"""

from __future__ import annotations

import threading
import time

import bytewax.operators as op
import structlog
from bytewax.dataflow import Dataflow

from app.envelope import Encoded, EnvelopeBuilder, Outcome, Poll
from app.feed.seqblocks import SpooledSeqBlocks
from app.feed.source import WebSocketSource
from app.logs import RateLimiter
from app.metrics import Metrics, OwnedHistogram, observe_all
from app.settings import Options
from app.sink.sink import WebSocketSink
from app.sink.spool import Spool
from app.sink.spooled import SpooledSink
from app.status import ConnectionStatus
from app.transform import Transform

log = structlog.get_logger("app.flow")


class _Delivery:
    """Latency and counts for envelopes the sink has just written."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        # Per source, written by the one thread that delivers the source's batches (the
        # worker that reads the feed, or the spool's drainer): no lock, see OwnedHistogram.
        self._batch_latency: dict[str, OwnedHistogram] = {}

    def __call__(self, items: list[Encoded], finished_at: float) -> None:
        oldest: dict[str, float] = {}
        latencies: list[float] = []
        count = 0
        for item in items:
            count += len(item.messages)
            if item.received:
                latencies += [finished_at - received_at for received_at in item.received]
                first = item.received[0]
                oldest[item.source] = min(first, oldest.get(item.source, first))
        observe_all(self._metrics.message_latency, latencies)
        self._metrics.messages_sent.inc(count)
        for source, received_at in oldest.items():
            latency = self._batch_latency.get(source)
            if latency is None:
                latency = self._batch_latency[source] = OwnedHistogram(
                    self._metrics.batch_latency.labels(source))
            latency.observe(finished_at - received_at)


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


def _watch_spool(spool: Spool, metrics: Metrics) -> None:
    """The spool gauges, read from the spool's counters when scraped."""
    def oldest_age() -> float:
        oldest = spool.stats().oldest_received_at
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    metrics.spool_bytes.set_function(lambda: float(spool.stats().bytes))
    metrics.spool_messages.set_function(lambda: float(spool.stats().messages))
    metrics.spool_oldest_age.set_function(oldest_age)


def build_flow(options: Options, *, workers: int, transform: Transform | None,
               status: ConnectionStatus, metrics: Metrics, stopping: threading.Event,
               spool: Spool | None = None) -> Dataflow:
    """The dataflow for these options over `workers` workers (in the whole cluster);
    `stopping` set means: stop reading, flush, end. `spool`: this process's spool, opened by
    the caller (and closed by it once the dataflow has ended) when `options.spool` is set."""
    metrics.sink_up.set_function(lambda: float(status.sink_up()))
    if options.spool is not None and spool is None:
        raise ValueError("options.spool is set: open the Spool and pass it in")
    flow = Dataflow("ws_ingest")
    chunks = op.input("feeds", flow, WebSocketSource(
        options.source, workers, status, metrics, stopping,
        SpooledSeqBlocks(spool) if spool is not None else None))
    outcomes = op.map("envelope", chunks,
                      _Envelopes(EnvelopeBuilder(options.envelope, transform), metrics))
    sink: WebSocketSink | SpooledSink
    if spool is not None and options.spool is not None:
        _watch_spool(spool, metrics)
        spooled = SpooledSink(spool, options.spool, options.sink, status, metrics, stopping,
                              _Delivery(metrics))
        status.set_spool(spooled.state)
        sink = spooled
    else:
        sink = WebSocketSink(options.sink, status, metrics, stopping, _Delivery(metrics))
    op.output("sink", op.filter_map("valid", outcomes, _valid), sink)
    if options.dead_letter is not None:
        op.output("dead_letter", op.filter_map("rejected", outcomes, _rejected), WebSocketSink(
            options.dead_letter, status, metrics, stopping, _DeadLetters(metrics)))
    return flow
