"""Issue 16's dashboard: every panel's PromQL, run against a real Prometheus scraping the running
service, parses and returns data; the committed JSON is the generator's output. The same
Prometheus loads config/prometheus/alerts.yml and evaluates every rule without error."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import sys
import urllib.parse
from collections.abc import Callable
from types import ModuleType
from typing import Any

import yaml
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from support.servers import Sink, WsServer, tick
from support.service import ROOT, Service, http_get
from support.wait import wait_until

DASHBOARD = ROOT / "config" / "grafana" / "ws-ingest.json"
GENERATOR = ROOT / "config" / "grafana" / "dashboard.py"
RULES = ROOT / "config" / "prometheus" / "alerts.yml"
JOB = "ingest"
# What Grafana puts in for the dashboard's variables: every feed of the job, and a rate window
# of a few scrapes (Prometheus scrapes every second here).
VARIABLES = {"$__rate_interval": "5s", "$job": JOB, "$source": ".*"}
# Metrics of features that have not landed: their series exist (at 0) but hold no observation,
# so a quantile over them is NaN. Every other query must return a number.
NOT_YET_OBSERVED = ("ingest_upstream_lag_seconds",)


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ws_ingest_dashboard", GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def targets() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel of the committed JSON."""
    return [(panel["title"], target["expr"])
            for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


def test_the_committed_json_is_the_generators_output() -> None:
    assert DASHBOARD.read_text() == load_generator().render(), (
        "config/grafana/ws-ingest.json is stale: run `python config/grafana/dashboard.py`")


def test_the_dashboard_model_is_well_formed() -> None:
    model = dashboard()
    ids = [panel["id"] for panel in model["panels"]]
    assert len(ids) == len(set(ids))
    assert [v["name"] for v in model["templating"]["list"]] == ["datasource", "job", "source"]
    queries = [panel for panel in model["panels"] if panel["type"] != "row"]
    assert len(queries) >= 20
    for panel in queries:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
    exprs = " ".join(expr for _, expr in targets())
    # What issue 16 asks the dashboard to show.
    for metric in ("ingest_messages_received_total", "ingest_batch_latency_seconds_bucket",
                   "ingest_message_latency_seconds_bucket", "ingest_source_up",
                   "ingest_source_connects_total", "ingest_messages_invalid_total",
                   "ingest_messages_sent_total", "ingest_sink_retries_total",
                   "ingest_spool_bytes", "ingest_upstream_lag_seconds_bucket"):
        assert metric in exprs, metric


def mixed_feed(name: str, invalid_every: int) -> Callable[[ServerConnection], Any]:
    """Ticks every 5 ms, one in `invalid_every` of them not JSON (an invalid `decode` frame)."""

    async def handle(ws: ServerConnection) -> None:
        try:
            for n in range(1, 100_000):
                await ws.send("not json" if invalid_every and n % invalid_every == 0
                              else tick(name, n))
                await asyncio.sleep(0.005)
        except ConnectionClosed:
            pass

    return handle


def api(base: str, path: str, **params: str) -> Any:
    status, body = http_get(f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}")
    decoded = json.loads(body)
    assert status == 200 and decoded["status"] == "success", (path, params, body)
    return decoded["data"]


def values(result: list[dict[str, Any]]) -> list[float]:
    return [float(series["value"][1]) for series in result]


def test_every_panel_query_returns_data_from_the_running_service(
        sink: Sink, servers: Callable[..., WsServer], service: Callable[..., Service],
        prometheus: Callable[[list[str]], str]) -> None:
    feeds = {"alpha": servers(mixed_feed("alpha", 0)), "beta": servers(mixed_feed("beta", 10))}
    sources = [{"name": name, "url": feed.url} for name, feed in feeds.items()]
    app = service({"INGEST_SOURCES": json.dumps(sources), "INGEST_SINK_URL": sink.url})
    app.wait_ready()
    base = prometheus([f"127.0.0.1:{app.port}"], rule_files=(RULES,))

    def unanswered() -> dict[str, Any]:
        """Each query that does not (yet) return what it should, with what it returned."""
        missing: dict[str, Any] = {}
        for title, expr in targets():
            result = api(base, "query", query=substitute(expr))["result"]
            numbers = [v for v in values(result) if math.isfinite(v)]
            if not result or not (numbers or any(m in expr for m in NOT_YET_OBSERVED)):
                missing[f"{title}: {expr}"] = result
        return missing

    # Rates need two scrapes within their window: poll until every query answers.
    missing: dict[str, Any] = {}

    def all_answered() -> bool:
        missing.clear()
        missing.update(unanswered())
        return not missing

    wait_until(all_answered, 20, interval=0.5, message=lambda: json.dumps(missing, indent=1))
    print(f"{len(targets())} panel queries returned data")

    # And the data says what the service does.
    def by_source(expr: str) -> dict[str, float]:
        result = api(base, "query", query=substitute(expr))["result"]
        return {series["metric"]["source"]: float(series["value"][1]) for series in result}

    received = by_source('sum by (source) (rate(ingest_messages_received_total'
                         '{job=~"$job", source=~"$source"}[$__rate_interval]))')
    assert set(received) == {"alpha", "beta"} and min(received.values()) > 0, received
    invalid = api(base, "query", query=substitute(
        'sum by (source, reason) (rate(ingest_messages_invalid_total'
        '{job=~"$job", source=~"$source"}[$__rate_interval]))'))["result"]
    decode = {s["metric"]["source"]: float(s["value"][1]) for s in invalid
              if s["metric"]["reason"] == "decode"}
    assert decode["beta"] > 0 and decode["alpha"] == 0, invalid
    up = by_source('max by (source) (ingest_source_up{job=~"$job", source=~"$source"})')
    assert up == {"alpha": 1.0, "beta": 1.0}

    # The dashboard's variables, as Grafana's label_values() asks Prometheus for them.
    assert api(base, "label/job/values", **{"match[]": "ingest_source_up"}) == [JOB]
    assert api(base, "label/source/values",
               **{"match[]": f'ingest_source_up{{job=~"{JOB}"}}'}) == ["alpha", "beta"]

    # The alert rules: loaded, evaluated without error against the real series, none firing.
    def rules_now() -> list[dict[str, Any]]:
        return [rule for group in api(base, "rules")["groups"] for rule in group["rules"]]

    wait_until(lambda: (found := rules_now()) and all(r["health"] == "ok" for r in found), 10,
               interval=0.5)
    rules = rules_now()
    expected = [r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert sorted(rule["name"] for rule in rules) == sorted(expected)
    assert {rule["health"] for rule in rules} == {"ok"}, rules
    assert [a for a in api(base, "alerts")["alerts"] if a["state"] == "firing"] == []
    assert app.terminate() == 0
