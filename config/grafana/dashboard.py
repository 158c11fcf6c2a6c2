"""The ws-ingest Grafana dashboard, as data: `python config/grafana/dashboard.py` writes
config/grafana/ws-ingest.json (the committed JSON model; tests/test_dashboard.py checks it is
this script's output and runs every query against a real Prometheus).

Plain Python rather than a dashboard library: the panels are one table below, and the JSON model
they become is small enough to write out here (no dependency to keep up to date).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "ws-ingest.json"
UID = "ws-ingest"
# Label matchers every query carries: the dashboard's two variables.
FEED = 'job=~"$job", source=~"$source"'
JOB = 'job=~"$job"'
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str = ""
    kind: str = "timeseries"
    # Options of this panel kind beyond the defaults (e.g. stacking).
    custom: dict[str, Any] = field(default_factory=dict)


def quantiles(metric: str, by: str, labels: str, qs: tuple[float, ...]) -> tuple[Query, ...]:
    """histogram_quantile of `metric` for each of `qs`, one series per `by` value."""
    keys = f"le, {by}" if by else "le"
    legend_prefix = f"{{{{{by}}}}} " if by else ""
    return tuple(
        Query(f"histogram_quantile({q}, sum by ({keys}) "
              f"(rate({metric}_bucket{{{labels}}}[{RATE}])))",
              f"{legend_prefix}p{round(q * 100, 1):g}")
        for q in qs)


def per_feed_rate(metric: str, by: str = "source", legend: str = "{{source}}") -> Query:
    return Query(f"sum by ({by}) (rate({metric}{{{FEED}}}[{RATE}]))", legend)


ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    ("Feeds", (
        Panel("Messages received per second", "ops",
              (per_feed_rate("ingest_messages_received_total"),),
              "Frames received per feed, valid or not (control frames apart)."),
        Panel("Bytes received per second", "Bps",
              (per_feed_rate("ingest_bytes_received_total"),),
              "Payload bytes per feed, without WebSocket framing."),
        Panel("Feed connected", "short",
              (Query(f"max by (source) (ingest_source_up{{{FEED}}})", "{{source}}"),),
              "1 while connected. In a cluster each feed is up on exactly one process.",
              kind="state-timeline"),
        Panel("Seconds since the last message", "s",
              (Query(f"time() - max by (source) "
                     f"(ingest_source_last_message_timestamp_seconds{{{FEED}}})",
                     "{{source}}"),),
              "A connected feed whose line climbs is silent (alert IngestFeedSilent)."),
        Panel("Connects per interval", "short",
              (Query(f"sum by (source) (increase(ingest_source_connects_total{{{FEED}}}"
                     f"[{RATE}]))", "{{source}}"),),
              "Successful (re)connects. Each reconnect lost what the feed sent meanwhile."),
        Panel("Connection failures per second by reason", "ops",
              (per_feed_rate("ingest_source_connect_failures_total", "source, reason",
                             "{{source}} {{reason}}"),),
              "Failed attempts: dns, refused, timeout, tls, rejected (an HTTP status), other."),
        Panel("Invalid frames per second by reason", "ops",
              (per_feed_rate("ingest_messages_invalid_total", "source, reason",
                             "{{source}} {{reason}}"),),
              "decode, too_large, transform: skipped (or dead-lettered)."),
        Panel("Share of invalid frames", "percentunit",
              (Query(f"sum by (source) (rate(ingest_messages_invalid_total{{{FEED}}}[{RATE}]))"
                     f" / sum by (source) (rate(ingest_messages_received_total{{{FEED}}}"
                     f"[{RATE}]))", "{{source}}"),),
              "Alert IngestInvalidFramesHigh at 1 %."),
        Panel("Dropped by the transform per second", "ops",
              (per_feed_rate("ingest_messages_dropped_total"),),
              "Envelopes for which INGEST_TRANSFORM returned None."),
        Panel("Messages per source poll", "short",
              quantiles("ingest_source_batch_size", "source", FEED, (0.5, 0.99)),
              "Near INGEST_BATCH_SIZE: the feed delivers faster than one worker takes it."),
    )),
    ("Latency", (
        Panel("Batch latency by feed (receipt of the oldest message to end of write)", "s",
              quantiles("ingest_batch_latency_seconds", "source", FEED, (0.5, 0.99)),
              "Alert IngestBatchLatencyHigh: p99 over 1 s."),
        Panel("Message latency (receipt to end of write)", "s",
              quantiles("ingest_message_latency_seconds", "", JOB, (0.5, 0.99, 0.999)),
              "Every message of every feed of the selected jobs."),
        Panel("Sink write duration", "s",
              quantiles("ingest_sink_write_seconds", "", JOB, (0.5, 0.99)),
              "One write_batch, including the ping confirmation."),
    )),
    ("Sink", (
        Panel("Messages sent per second", "ops",
              (Query(f"sum by (instance) (rate(ingest_messages_sent_total{{{JOB}}}[{RATE}]))",
                     "{{instance}}"),),
              "Envelopes written to the sink, per process."),
        Panel("Sink connected", "short",
              (Query(f"min by (instance) (ingest_sink_up{{{JOB}}})", "{{instance}}"),),
              "1 while every sink connection of the process is open.",
              kind="state-timeline"),
        Panel("Sink retries and dead letters per second", "ops",
              (Query(f"sum by (instance) (rate(ingest_sink_retries_total{{{JOB}}}[{RATE}]))",
                     "retries {{instance}}"),
               Query(f"sum by (instance) "
                     f"(rate(ingest_dead_letters_sent_total{{{JOB}}}[{RATE}]))",
                     "dead letters {{instance}}")),
              "A retry resends a batch after a failed write (may repeat frames)."),
    )),
    ("Spool", (
        Panel("Spool size", "bytes",
              (Query(f"sum by (instance) (ingest_spool_bytes{{{JOB}}})", "{{instance}}"),),
              "Bytes waiting for the sink (0 without INGEST_SPOOL_DIR)."),
        Panel("Messages waiting in the spool", "short",
              (Query(f"sum by (instance) (ingest_spool_messages{{{JOB}}})", "{{instance}}"),)),
        Panel("Sink behind by (age of the oldest spooled message)", "s",
              (Query(f"max by (instance) (ingest_spool_oldest_age_seconds{{{JOB}}})",
                     "{{instance}}"),),
              "Alert IngestSpoolBehind over 60 s."),
        Panel("Refused by a full spool per second", "ops",
              (Query(f"sum by (instance) (rate(ingest_spool_dropped_total{{{JOB}}}[{RATE}]))",
                     "{{instance}}"),),
              "Only with INGEST_SPOOL_WHEN_FULL=drop_newest: data lost."),
    )),
    ("Venues and continuity", (
        Panel("Lag behind the venue's event time", "s",
              quantiles("ingest_upstream_lag_seconds", "source", FEED, (0.5, 0.99)),
              "Feeds with an `event_time` only. A skewed clock shows here too."),
        Panel("Upstream sequence numbers missed per second", "ops",
              (per_feed_rate("ingest_upstream_missing_total"),),
              "Feeds with a `sequence` only."),
        Panel("Control frames per second by kind", "ops",
              (per_feed_rate("ingest_control_messages_total", "source, kind",
                             "{{source}} {{kind}}"),),
              "heartbeat, reply, control, ack, notice: not data, not forwarded."),
        Panel("Subscribe failures and rotations per interval", "short",
              (Query(f"sum by (source) (increase(ingest_subscribe_failures_total{{{FEED}}}"
                     f"[{RATE}]))", "subscribe failed {{source}}"),
               Query(f"sum by (source, reason) "
                     f"(increase(ingest_source_rotations_total{{{FEED}}}[{RATE}]))",
                     "rotation {{source}} {{reason}}")),
              "Rotations are planned make-before-break reconnects (age, notice)."),
    )),
    ("Processes", (
        Panel("CPU (cores)", "short",
              (Query(f"sum by (instance) (rate(process_cpu_seconds_total{{{JOB}}}[{RATE}]))",
                     "{{instance}}"),),
              "One process uses about one core at most: scale with processes."),
        Panel("Resident memory", "bytes",
              (Query(f"sum by (instance) (process_resident_memory_bytes{{{JOB}}})",
                     "{{instance}}"),),
              "Measured 48-61 MiB per process."),
    )),
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
WIDTH, HEIGHT = 12, 8


def panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": HEIGHT, "w": WIDTH, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit, "custom": panel.custom},
                        "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [{"datasource": DATASOURCE, "expr": q.expr, "legendFormat": q.legend,
                     "refId": chr(ord("A") + i)} for i, q in enumerate(panel.queries)],
    }


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name, "label": label, "type": "query", "datasource": DATASOURCE,
        "query": {"query": query, "refId": name}, "definition": query,
        "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1,
    }


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    for title, row in ROWS:
        panels.append({"id": len(panels) + 1, "type": "row", "title": title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        y += 1
        for i, panel in enumerate(row):
            panels.append(panel_json(panel, len(panels) + 1, (i % 2) * WIDTH,
                                     y + (i // 2) * HEIGHT))
        y += (len(row) + 1) // 2 * HEIGHT
    return {
        "uid": UID,
        "title": "ws-ingest",
        "description": "WebSocket feeds in, envelopes out: feeds, latency, sink, spool, venues.",
        "tags": ["ws-ingest", "bytewax", "websocket"],
        "timezone": "utc",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "schemaVersion": 39,
        "version": 1,
        "links": [],
        "annotations": {"list": []},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource",
             "query": "prometheus", "current": {}, "hide": 0, "refresh": 1},
            variable("job", "Job", "label_values(ingest_source_up, job)"),
            variable("source", "Feed", 'label_values(ingest_source_up{job=~"$job"}, source)'),
        ]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
