"""Issue 15, cluster start-up and signals: real `python -m app` processes on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from support.servers import Sink, WsServer, feed_handler
from support.service import Service, free_port, free_ports
from support.wait import wait_until

StartService = Callable[..., Service]


def events(process: Service, name: str) -> list[dict[str, Any]]:
    return [event for event in process.logs() if event.get("event") == name]


def cluster_env(feeds: list[str], sink_url: str) -> dict[str, str]:
    return {"INGEST_SOURCE_URLS": ",".join(feeds), "INGEST_SINK_URL": sink_url,
            "INGEST_METRICS_PORT": str(free_ports(2)),
            "BYTEWAX_ADDRESSES": f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"}


def http_status(process: Service, path: str) -> int | None:
    try:
        return process.get(path)[0]
    except OSError:  # not listening yet
        return None


def test_a_process_waiting_for_its_peers_says_so_and_is_not_healthy(
        sink: Sink, servers: Callable[..., WsServer], service: StartService) -> None:
    feeds = [servers(feed_handler(10**6, name=f"w{i}", interval=0.005)) for i in range(2)]
    env = cluster_env([f.url for f in feeds], sink.url)
    first = service({**env, "BYTEWAX_PROCESS_ID": "0"})
    wait_until(lambda: events(first, "waiting_for_cluster"), 15,
               message=lambda: f"no waiting_for_cluster:\n{first.stdout()}")
    waiting = events(first, "waiting_for_cluster")[0]
    assert waiting["process_id"] == 0
    assert waiting["addresses"] == env["BYTEWAX_ADDRESSES"].split(";")
    assert first.get("/healthz")[0] == 503
    code, body = first.get("/readyz")
    assert code == 503
    assert json.loads(body)["sources_down"] == sorted(f.url.removeprefix("ws://") for f in feeds)
    # Every line on stdout is a JSON log line (timely's own messages included).
    assert all(line.startswith("{") for line in first.stdout().splitlines())

    second = service({**env, "BYTEWAX_PROCESS_ID": "1"})
    for process in (first, second):
        wait_until(lambda p=process: http_status(p, "/healthz") == 200, 30,
                   message=lambda p=process: p.stdout())
        process.wait_ready()
    logged = len(events(first, "waiting_for_cluster"))
    for process in (first, second):
        process.stop()
    assert [p.terminate() for p in (first, second)] == [0, 0]
    assert len(events(first, "waiting_for_cluster")) == logged  # none once running


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_process_waiting_for_its_peers_exits_0_at_once_on_a_signal(
        sink: Sink, service: StartService, signum: signal.Signals) -> None:
    env = cluster_env(["ws://127.0.0.1:9/never"], sink.url)
    for process_id in ("1", "0"):  # 1 retries connecting to 0; 0 waits for 1 to connect
        process = service({**env, "BYTEWAX_PROCESS_ID": process_id})
        wait_until(lambda p=process: events(p, "waiting_for_cluster"), 15,
                   message=lambda p=process: p.stdout())
        process.process.send_signal(signum)
        started = time.monotonic()
        assert process.process.wait(5) == 0
        assert time.monotonic() - started < 3
        assert events(process, "stopping")[0]["signal"] == signum.name
        assert events(process, "stopped")
        assert process.stderr() == ""


def test_a_cluster_port_in_use_exits_2_with_one_line(sink: Sink, service: StartService) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = cluster_env(["ws://127.0.0.1:9/never"], sink.url)
        env["BYTEWAX_ADDRESSES"] = f"127.0.0.1:{port};127.0.0.1:{free_port()}"
        process = service({**env, "BYTEWAX_PROCESS_ID": "0"})
        assert process.process.wait(20) == 2
    assert process.stderr().splitlines() == [
        f"BYTEWAX_ADDRESSES: process 0 cannot listen on 127.0.0.1:{port} (address already in "
        "use): is another process using that port?"]


def test_a_second_signal_exits_130_quietly_with_one_log_line(
        servers: Callable[..., WsServer], service: StartService) -> None:
    feed = servers(feed_handler(10**6, name="f", interval=0.002))
    # Nothing listens at the sink: the first SIGTERM waits for it (up to 30 s) to flush.
    process = service({"INGEST_SOURCE_URLS": feed.url,
                       "INGEST_SINK_URL": f"ws://127.0.0.1:{free_port()}/sink",
                       "INGEST_SHUTDOWN_TIMEOUT_MS": "30000"})
    wait_until(lambda: http_status(process, "/healthz") == 200, 20)
    wait_until(lambda: process.metric("ingest_source_up", source=feed.url[5:]) == 1, 20)
    process.stop()
    wait_until(lambda: events(process, "stopping"), 10)
    process.process.send_signal(signal.SIGTERM)
    assert process.process.wait(5) == 130
    assert process.stderr() == ""  # no panic, no traceback, no "Task was destroyed"
    assert len(events(process, "aborted")) == 1
    assert all(line.startswith("{") for line in process.stdout().splitlines())
