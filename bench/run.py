"""ws-ingest against a plain asyncio relay, measured side by side in one run.

    python -m bench.run [--quick] [--out bench/results/NAME.json]

For each case a load generator and a receiver run in processes of their own; the relay under
test (the service, `python -m app`, or the baseline, `python -m bench.baseline`) runs between
them. Figures: messages/s at saturation (first to last arrival at the receiver), end-to-end
latency at a fixed offered rate, peak RSS, CPU seconds per million messages (start-up
excluded), and the ratios service / baseline. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.service import free_port, http_get

ROOT = Path(__file__).resolve().parent.parent

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def write_bytes(pid: int) -> int:
    """Bytes this process caused to be written to storage (/proc/<pid>/io)."""
    try:
        with open(f"/proc/{pid}/io") as io:
            for line in io:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


@dataclass
class Case:
    name: str
    relay: str  # "service" | "baseline"
    count: int  # messages per feed
    rate: float = 0.0  # per feed; 0 = saturation
    feeds: int = 1
    workers: int = 1
    processes: int = 1
    spool: bool = False  # INGEST_SPOOL_DIR in a fresh temporary directory
    extra_env: dict[str, str] = field(default_factory=dict)


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_listening(port: int, timeout: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def relays(case: Case, source_port: int, sink_port: int) -> list[subprocess.Popen[bytes]]:
    urls = [f"ws://127.0.0.1:{source_port}/feed{i}" for i in range(case.feeds)]
    sink = f"ws://127.0.0.1:{sink_port}/bench"
    if case.relay == "baseline":
        return [start(["-m", "bench.baseline", "--source", url, "--sink", sink]) for url in urls]
    metrics_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "BYTEWAX_"))}
    env.update({"INGEST_SOURCE_URLS": ",".join(urls), "INGEST_SINK_URL": sink,
                "INGEST_WORKERS": str(case.workers), "INGEST_METRICS_HOST": "127.0.0.1",
                "INGEST_METRICS_PORT": str(metrics_port), "INGEST_LOG_LEVEL": "warning",
                "INGEST_LOG_FORMAT": "json", **case.extra_env})
    if case.spool:
        env["INGEST_SPOOL_DIR"] = tempfile.mkdtemp(prefix="bench-spool-")
    if case.processes == 1:
        processes = [start(["-m", "app"], env)]
    else:
        addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(case.processes))
        processes = [start(["-m", "app"], {**env, "BYTEWAX_ADDRESSES": addresses,
                                           "BYTEWAX_PROCESS_ID": str(i)})
                     for i in range(case.processes)]
    for i in range(case.processes):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if http_get(f"http://127.0.0.1:{metrics_port + i}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            raise RuntimeError("the service did not become ready")
    return processes


def run_case(case: Case) -> dict[str, Any]:
    source_port, sink_port = free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    start_file, out = workdir / "go", workdir / "receiver.json"
    total = case.count * case.feeds
    receiver = start(["-m", "bench.receiver", "--port", str(sink_port), "--expect", str(total),
                      "--out", str(out), *(["--latency"] if case.rate else [])])
    loadgen = start(["-m", "bench.loadgen", "--port", str(source_port), "--count",
                     str(case.count), "--rate", str(case.rate), "--start-file", str(start_file)])
    wait_listening(sink_port)
    wait_listening(source_port)
    relay = relays(case, source_port, sink_port)
    try:
        time.sleep(0.5)  # connected, subscribed, idle
        cpu_before = sum(cpu_seconds(p.pid) for p in relay)
        written_before = sum(write_bytes(p.pid) for p in relay)
        rss_samples: list[tuple[float, int]] = []
        started = time.monotonic()
        start_file.touch()
        while receiver.poll() is None:
            rss_samples.append((time.monotonic() - started,
                                sum(memory_kib(p.pid, "VmRSS") for p in relay)))
            time.sleep(0.5)
            if time.monotonic() - started > 150:
                receiver.kill()
        cpu = sum(cpu_seconds(p.pid) for p in relay) - cpu_before
        written = sum(write_bytes(p.pid) for p in relay) - written_before
        wall = time.monotonic() - started
        peak_rss_mib = max(memory_kib(p.pid, "VmHWM") for p in relay) / 1024
    finally:
        for process in (*relay, loadgen):
            process.terminate()
        for process in (*relay, loadgen, receiver):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
    result = json.loads(out.read_text())
    received = result["count"]
    seconds = max(1e-9, result["last"] - result["first"]) if received else float("nan")
    figures: dict[str, Any] = {
        "case": case.name, "relay": case.relay + (" + spool" if case.spool else ""),
        "feeds": case.feeds, "workers": case.workers,
        "processes": case.processes, "offered_rate": case.rate * case.feeds or "saturation",
        "messages": received, "complete": received == total,
        "messages_per_s": round(received / seconds),
        "peak_rss_mib": round(peak_rss_mib, 1),
        "cpu_s_per_million": round(cpu / max(1, received) * 1e6, 2),
        "cores_used": round(cpu / wall, 2),  # by the relay, start file to last arrival
        "disk_bytes_per_message": round(written / max(1, received)),
    }
    if case.rate:
        latencies = sorted(result["latencies"])
        figures.update({f"latency_{k}_ms": round(percentile(latencies, q) * 1000, 2)
                        for k, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))})
        tail = [kib for t, kib in rss_samples if t >= 10]
        if len(tail) >= 2:
            figures["rss_mib_at_10s"] = round(tail[0] / 1024, 1)
            figures["rss_mib_at_end"] = round(tail[-1] / 1024, 1)
    return figures


def cases(quick: bool) -> list[Case]:
    n = 50_000 if quick else 200_000
    fixed = 5_000
    seconds = 10 if quick else 60
    return [
        Case("saturation", "baseline", n),
        Case("saturation", "service", n),
        Case("saturation, 2 feeds", "baseline", n, feeds=2),
        Case("saturation, 2 feeds, 2 workers", "service", n, feeds=2, workers=2),
        Case("saturation, 2 feeds, 2 processes", "service", n, feeds=2, processes=2),
        Case("5000 msg/s", "baseline", fixed * min(seconds, 20), rate=fixed),
        Case("5000 msg/s", "service", fixed * seconds, rate=fixed),
        Case("saturation", "service", n, spool=True),
        Case("5000 msg/s", "service", fixed * seconds, rate=fixed, spool=True),
    ]


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = ["case", "relay", "messages_per_s", "latency_p50_ms", "latency_p99_ms",
               "latency_max_ms", "peak_rss_mib", "cpu_s_per_million", "cores_used",
               "disk_bytes_per_message", "rss_mib_at_10s",
               "rss_mib_at_end", "complete"]
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row.get(c, "")) for c in columns))


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    def find(case: str, relay: str) -> dict[str, Any]:
        return next(r for r in rows if r["case"] == case and r["relay"] == relay)

    service, baseline = find("saturation", "service"), find("saturation", "baseline")
    fixed_s, fixed_b = find("5000 msg/s", "service"), find("5000 msg/s", "baseline")
    spooled, fixed_spooled = (find("saturation", "service + spool"),
                              find("5000 msg/s", "service + spool"))
    return {
        "throughput with spool / without": round(spooled["messages_per_s"]
                                                 / service["messages_per_s"], 2),
        "p99 latency at 5000 msg/s with spool (ms)": fixed_spooled["latency_p99_ms"],
        "disk bytes per message with spool (saturation)": spooled["disk_bytes_per_message"],
        "throughput service/baseline": round(service["messages_per_s"]
                                             / baseline["messages_per_s"], 2),
        "cpu per message service/baseline": round(service["cpu_s_per_million"]
                                                  / baseline["cpu_s_per_million"], 2),
        "p99 latency service/baseline": round(fixed_s["latency_p99_ms"]
                                              / fixed_b["latency_p99_ms"], 2),
        "2 workers / 1 worker (2 feeds vs 1)": round(
            find("saturation, 2 feeds, 2 workers", "service")["messages_per_s"]
            / service["messages_per_s"], 2),
        "2 processes / 1 process (2 feeds vs 1)": round(
            find("saturation, 2 feeds, 2 processes", "service")["messages_per_s"]
            / service["messages_per_s"], 2),
        "2 feeds: service 2 processes / baseline 2 relays": round(
            find("saturation, 2 feeds, 2 processes", "service")["messages_per_s"]
            / find("saturation, 2 feeds", "baseline")["messages_per_s"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke check")
    parser.add_argument("--only", help="run only the cases whose name and relay (with "
                        "' spool' for the spool cases) contain this")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    for case in cases(args.quick):
        if args.only and args.only not in f"{case.name} {case.relay}{' spool' * case.spool}":
            continue
        rows.append(run_case(case))
        print(json.dumps(rows[-1]), flush=True)
    print()
    print_table(rows)
    summary: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        "results": rows,
    }
    if not args.only:
        summary["ratios"] = ratios(rows)
        print()
        for name, value in summary["ratios"].items():
            print(f"{name}: {value}")
    out = args.out or ROOT / "bench" / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
