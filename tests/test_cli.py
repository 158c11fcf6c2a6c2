"""`python -m app` as an operator meets it: configuration errors and --check-config."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support.service import ROOT

SINK = "ws://127.0.0.1:9/out"


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "BYTEWAX_"))}
    return subprocess.run([sys.executable, "-m", "app", *args], env={**clean, **env},
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("env", "expected"), [
    ({"INGEST_SOURCE_URLS": "ws://a"}, ["INGEST_SINK_URL: required"]),
    ({"INGEST_SOURCE_URLS": "ws://a", "INGEST_SINK_URL": "http://x"},
     ["INGEST_SINK_URL: must start with ws:// or wss://"]),
    ({"INGEST_SOURCES": "[{oops", "INGEST_SINK_URL": SINK},
     ["INGEST_SOURCES: not valid JSON (Expecting property name enclosed in double quotes "
      "at position 2)"]),
    ({"INGEST_SOURCE_URLS": "ws://a/x,ws://a/x", "INGEST_SINK_URL": SINK},
     ["INGEST_SOURCES: duplicate feed name 'a/x'"]),
    ({"INGEST_SOURCE_URLS": "ws://a", "INGEST_SINK_URL": SINK,
      "INGEST_TRANSFORM": "no_such_module_zz:fn"},
     ["INGEST_TRANSFORM: cannot load 'no_such_module_zz:fn' "
      "(ModuleNotFoundError(\"No module named 'no_such_module_zz'\"))"]),
    ({"INGEST_SOURCE_URLS": "wss://a", "INGEST_SINK_URL": "ftp://b", "INGEST_WORKERS": "0"},
     ["INGEST_SINK_URL: must start with ws:// or wss://",
      "INGEST_WORKERS: must be at least 1, got 0"]),
])
def test_bad_configuration_exits_2_with_one_line_per_problem(env, expected):
    result = run(env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == expected
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_check_config_prints_the_effective_configuration_masked():
    secret_sources = json.dumps([{"name": "x", "url": "wss://feed.example/ws",
                                  "headers": {"Authorization": "Bearer hunter2"}}])
    result = run({"INGEST_SOURCES": secret_sources, "INGEST_SINK_URL": "wss://u:pw@sink/x",
                  "INGEST_SINK_HEADERS": '{"X-Api-Key": "abc123"}'}, "--check-config")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["feeds"][0]["name"] == "x" and shown["sink_framing"] == "message"
    for secret in ("hunter2", "abc123", ":pw@"):
        assert secret not in result.stdout
    assert shown["cluster"] == {"workers": 1, "process_id": None, "addresses": None}


def test_cluster_flags_are_bytewax_ones():
    result = run({"INGEST_SOURCE_URLS": "ws://a", "INGEST_SINK_URL": SINK,
                  "BYTEWAX_PROCESS_ID": "1", "BYTEWAX_ADDRESSES": "h:1;h:2"},
                 "--check-config", "-w", "3")
    assert json.loads(result.stdout)["cluster"] == {
        "workers": 3, "process_id": 1, "addresses": ["h:1", "h:2"]}
    result = run({"INGEST_SOURCE_URLS": "ws://a", "INGEST_SINK_URL": SINK,
                  "BYTEWAX_PROCESS_ID": "1"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "BYTEWAX_ADDRESSES: required when a process id is given"]


def test_bad_bytewax_numbers_are_configuration_errors():
    env = {"INGEST_SOURCE_URLS": "ws://a", "INGEST_SINK_URL": SINK}
    result = run({**env, "BYTEWAX_PROCESS_ID": "abc", "BYTEWAX_ADDRESSES": "h:1"})
    assert (result.returncode, result.stderr.splitlines()) == (
        2, ["BYTEWAX_PROCESS_ID: not a whole number: 'abc'"])
    result = run({**env, "BYTEWAX_WORKERS_PER_PROCESS": "two"})
    assert (result.returncode, result.stderr.splitlines()) == (
        2, ["BYTEWAX_WORKERS_PER_PROCESS: not a whole number: 'two'"])
    result = run({**env, "BYTEWAX_POD_NAME": "ingest-3", "BYTEWAX_STATEFULSET_NAME": "ingest",
                  "BYTEWAX_ADDRESSES": "h:1;h:2;h:3;h:4"}, "--check-config")
    assert json.loads(result.stdout)["cluster"]["process_id"] == 3
