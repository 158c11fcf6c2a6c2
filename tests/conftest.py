from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from bytewax.testing import cluster_main, run_main
from prometheus_client import CollectorRegistry

from app.flow import build_flow
from app.metrics import Metrics
from app.settings import ENV_PREFIX, Settings
from app.shutdown import StopSignal
from app.sink.spooled import open_spool
from app.status import ConnectionStatus
from app.transform import load_transform
from support.servers import Sink, WsServer
from support.service import Service, free_port, http_get
from support.wait import wait_until


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink()
    yield server
    server.close()


@pytest.fixture
def servers() -> Iterator[Callable[..., WsServer]]:
    """Factory for feed servers, all closed at the end of the test."""
    started: list[WsServer] = []

    def start(handler: Any, **options: Any) -> WsServer:
        server = WsServer(handler, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def service() -> Iterator[Callable[..., Service]]:
    """Factory for `python -m app` processes, killed at the end of the test if still running."""
    started: list[Service] = []

    def start(env: dict[str, str], *args: str,
              preexec: Callable[[], None] | None = None) -> Service:
        process = Service(env, args, preexec=preexec)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


class InProcess:
    """The real dataflow, run in this process by Bytewax's testing runner, configured by the
    same INGEST_* variables as `python -m app` (given as a dict, not read from the
    environment), with a registry of its own. The same reading methods as `Service`."""

    def __init__(self, env: dict[str, str], workers: int = 1) -> None:
        fields = {key.removeprefix(ENV_PREFIX).lower(): value for key, value in env.items()}
        fields.setdefault("reconnect_min_ms", "50")
        fields.setdefault("reconnect_max_ms", "500")
        settings = Settings(_env_file=None, **fields)
        self.registry = CollectorRegistry()
        self.status = ConnectionStatus()
        self.stopping = StopSignal(settings.shutdown_timeout_ms / 1000)
        self.error: BaseException | None = None
        self._logs = structlog.testing.capture_logs()
        self._captured = self._logs.__enter__()
        options = settings.options()
        # As `python -m app` does: this process's spool, opened before the dataflow.
        self.spool = open_spool(options.spool, None) if options.spool else None
        flow = build_flow(options, workers=workers,
                          transform=load_transform(settings.transform), status=self.status,
                          metrics=Metrics(self.registry), stopping=self.stopping,
                          spool=self.spool)

        def run() -> None:
            try:
                if workers == 1:
                    run_main(flow)
                else:
                    cluster_main(flow, [], 0, worker_count_per_proc=workers)
            except BaseException as error:  # handed to the test by stop()
                self.error = error
            finally:
                if self.spool is not None:
                    self.spool.close()

        self._thread = threading.Thread(target=run, name="dataflow", daemon=True)
        self._thread.start()

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def logs(self) -> list[dict[str, Any]]:
        return list(self._captured)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10) -> None:
        """As SIGTERM does: stop reading, flush, close; raise what the dataflow raised."""
        self.stopping.set()
        self.join(timeout)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the dataflow did not end within {timeout} s"
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self._thread.is_alive():
            self.stopping.set()
            self._thread.join(15)
        self._logs.__exit__(None, None, None)


@pytest.fixture
def dataflow() -> Iterator[Callable[..., InProcess]]:
    """Factory for in-process dataflows, stopped at the end of the test."""
    started: list[InProcess] = []

    def start(env: dict[str, str], workers: int = 1) -> InProcess:
        flow = InProcess(env, workers)
        started.append(flow)
        return flow

    yield start
    for flow in reversed(started):
        flow.close()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Debian's prometheus on 127.0.0.1: `start(targets, rule_files=())` scrapes the targets
    every second (job `ingest`), evaluates the rule files, and returns its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        hint = "Debian's prometheus is not on the PATH: `apt-get install prometheus` (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(hint)  # CI installs it: missing there is a broken setup, not a skip
        pytest.skip(hint)
    processes: list[subprocess.Popen[bytes]] = []

    def start(targets: list[str], rule_files: tuple[Path, ...] = ()) -> str:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        rules = f"rule_files: {json.dumps([str(f) for f in rule_files])}\n" if rule_files else ""
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n" + rules
            + "scrape_configs:\n"
            f"  - job_name: ingest\n    static_configs: [{{targets: {json.dumps(targets)}}}]\n")
        log = (tmp_path / "prometheus.log").open("w")
        processes.append(subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log))
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return http_get(base + "/-/ready")[0] == 200
            except OSError:
                return False

        wait_until(ready, 30, message=lambda: (tmp_path / "prometheus.log").read_text())
        return base

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)
