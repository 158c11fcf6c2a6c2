"""Running `python -m app` as an operator would: a subprocess configured by environment."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from support.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent


PORTS_BELOW_EPHEMERAL = 12_000


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port() -> int:
    """A port free now, for a process started next to listen on. It is picked below the
    kernel's ephemeral range: ports in that range are also handed out as the source ports of
    outgoing connections, and under load one took a service's port before it could listen."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(max(1024, low - PORTS_BELOW_EPHEMERAL), low) if low > 2048 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port")


def free_ports(count: int) -> int:
    """A port p such that p, p+1, ..., p+count-1 are all free now (for a cluster's HTTP ports:
    process i listens on INGEST_METRICS_PORT + i)."""
    for _ in range(100):
        base = free_port()
        if base + count > 65535:
            continue
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports")


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class Service:
    """One `python -m app` process; its output goes to files so it never blocks on a pipe."""

    def __init__(self, env: dict[str, str], args: tuple[str, ...] = (), cwd: Path | None = None,
                 preexec: Callable[[], None] | None = None):
        """`preexec` runs in the child before `python -m app` (e.g. to lower a resource limit)."""
        self.port = int(env.get("INGEST_METRICS_PORT") or free_port())
        env.setdefault("INGEST_METRICS_PORT", str(self.port))
        self.port += int(env.get("BYTEWAX_PROCESS_ID") or 0)  # process i serves on port + i
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("INGEST_", "BYTEWAX_"))}
        full_env.update({
            "INGEST_METRICS_HOST": "127.0.0.1",
            "INGEST_METRICS_PORT": str(self.port),
            "INGEST_LOG_FORMAT": "json",
            "INGEST_RECONNECT_MIN_MS": "50",
            "INGEST_RECONNECT_MAX_MS": "500",
            "PYTHONPATH": str(ROOT),
            **env,
        })
        # Closed in close(): they outlive this method.
        self._out = tempfile.NamedTemporaryFile(prefix="ingest-out-", delete=False)  # noqa: SIM115
        self._err = tempfile.NamedTemporaryFile(prefix="ingest-err-", delete=False)  # noqa: SIM115
        self._stop_sent = False
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app", *args], env=full_env, cwd=cwd or ROOT,
            stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL, preexec_fn=preexec)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stdout(self) -> str:
        return Path(self._out.name).read_text()

    def stderr(self) -> str:
        return Path(self._err.name).read_text()

    def logs(self) -> list[dict[str, Any]]:
        """Every JSON log line: errors from stderr, the rest from stdout."""
        lines = (self.stdout() + self.stderr()).splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def get(self, path: str) -> tuple[int, bytes]:
        return http_get(self.base + path)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample as {(name, sorted labels): value}."""
        status, body = self.get("/metrics")
        assert status == 200
        samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics().get((name, tuple(sorted(labels.items()))))

    def wait_serving(self, timeout: float = 30) -> None:
        """Until the HTTP endpoints answer (whatever they say)."""
        def serving() -> bool:
            assert self.process.poll() is None, f"service exited:\n{self.stderr()}{self.stdout()}"
            try:
                self.get("/healthz")
            except OSError:
                return False
            return True

        wait_until(serving, timeout, interval=0.1, message="the HTTP endpoints never answered")

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, f"service exited:\n{self.stderr()}{self.stdout()}"
            try:
                return self.get("/readyz")[0] == 200
            except OSError:
                return False

        wait_until(ready, timeout, interval=0.1,
                   message=lambda: f"not ready in {timeout}s: {self.get('/readyz')}\n"
                                   f"{self.stdout()}")

    def stop(self) -> None:
        """Send SIGTERM once: a second signal would abort the shutdown (exit 130)."""
        if not self._stop_sent and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self._stop_sent = True

    def terminate(self, timeout: float = 10) -> int:
        """SIGTERM (unless sent already), then the exit status (killed, and an AssertionError,
        if it takes longer than `timeout`)."""
        self.stop()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"no exit {timeout}s after SIGTERM:\n{self.stdout()}") from None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for f in (self._out, self._err):
            f.close()
            os.unlink(f.name)
