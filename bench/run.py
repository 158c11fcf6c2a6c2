"""ws-ingest against a plain asyncio relay, measured side by side in one run.

    python -m bench.run [--quick] [--out bench/results/NAME.json]

For each case a load generator and a receiver run in processes of their own; the relay under
test (the service, `python -m app`, or the baseline, `python -m bench.baseline`) runs between
them. Figures: messages/s at saturation (first to last arrival at the receiver), end-to-end
latency at a fixed offered rate, peak RSS, CPU seconds per million messages (start-up
excluded), and the ratios service / baseline; then the CPU ratios of the rate-limited cases
again, as the median of a few short back-to-back pairs (`--rounds`). All traffic stays on
127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
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
    count: int  # messages per busy feed
    rate: float = 0.0  # per busy feed; 0 = saturation
    feeds: int = 1  # busy feeds
    idle: int = 0  # feeds that send nothing
    workers: int = 1
    processes: int = 1  # of the service; for the baseline, relays the feeds are split over
    spool: bool = False  # INGEST_SPOOL_DIR in a fresh temporary directory
    extra_env: dict[str, str] = field(default_factory=dict)
    feed_keys: dict[str, Any] = field(default_factory=dict)  # more keys of every feed

    def urls(self, port: int) -> list[str]:
        return ([f"ws://127.0.0.1:{port}/feed{i}" for i in range(self.feeds)]
                + [f"ws://127.0.0.1:{port}/idle{i}?count=0" for i in range(self.idle)])


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


def relays(case: Case, source_port: int,
           sink_port: int) -> tuple[list[subprocess.Popen[bytes]], float, int | None]:
    """The relay processes, once ready, the seconds they took to get there, and the service's
    first metrics port (None for the baseline)."""
    urls = case.urls(source_port)
    sink = f"ws://127.0.0.1:{sink_port}/bench"
    started = time.monotonic()
    if case.relay == "baseline":
        groups = [urls[i::case.processes] for i in range(case.processes)]
        return [start(["-m", "bench.baseline", "--sink", sink,
                       *(arg for url in group for arg in ("--source", url))])
                for group in groups], 0.0, None
    metrics_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "BYTEWAX_"))}
    feeds = json.dumps([{"url": url, **case.feed_keys} for url in urls])
    env.update({"INGEST_SOURCES": feeds, "INGEST_SINK_URL": sink,
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
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if http_get(f"http://127.0.0.1:{metrics_port + i}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            raise RuntimeError("the service did not become ready")
    return processes, time.monotonic() - started, metrics_port


def scraped_counts(metrics_port: int | None, processes: int) -> dict[str, float]:
    """Sink writes so far (one per poll with data), summed over the service's processes: the
    messages each carries are what the fixed cost of a poll and a write is spread over."""
    wanted = {"ingest_sink_write_seconds_count": "sink_writes"}
    totals = dict.fromkeys(wanted.values(), 0.0)
    if metrics_port is None:
        return totals
    for i in range(processes):
        _, body = http_get(f"http://127.0.0.1:{metrics_port + i}/metrics")
        for line in body.decode().splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in wanted:
                totals[wanted[name]] += float(line.rsplit(" ", 1)[1])
    return totals


def stop(processes: Sequence[subprocess.Popen[bytes]],
         then_wait_for: Sequence[subprocess.Popen[bytes]] = ()) -> None:
    """SIGTERM `processes`; wait for them and `then_wait_for` (which end by themselves), up
    to 10 s each, then kill."""
    for process in processes:
        process.terminate()
    for process in (*processes, *then_wait_for):
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def run_idle_case(case: Case, seconds: float) -> dict[str, Any]:
    """Feeds that send nothing: start-up to all connected, then cores, RSS and descriptors."""
    source_port, sink_port = free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    receiver = start(["-m", "bench.receiver", "--port", str(sink_port), "--expect", "1",
                      "--out", str(workdir / "receiver.json")])
    loadgen = start(["-m", "bench.loadgen", "--port", str(source_port), "--count", "0"])
    wait_listening(sink_port)
    wait_listening(source_port)
    relay, startup, _ = relays(case, source_port, sink_port)
    try:
        time.sleep(1.0)  # settle after start-up
        cpu_before, started = sum(cpu_seconds(p.pid) for p in relay), time.monotonic()
        time.sleep(seconds)
        cores = (sum(cpu_seconds(p.pid) for p in relay) - cpu_before) / (
            time.monotonic() - started)
        fds = sum(open_fds(p.pid) for p in relay)
        rss = sum(memory_kib(p.pid, "VmRSS") for p in relay) / 1024
    finally:
        stop([*relay, loadgen, receiver])
    feeds = case.feeds + case.idle
    return {"case": case.name, "relay": case.relay, "feeds": feeds, "startup_s": round(startup, 2),
            "idle_cores": round(cores, 3), "rss_mib": round(rss, 1), "open_fds": fds,
            "fds_per_feed": round(fds / feeds, 2)}


def run_case(case: Case) -> dict[str, Any]:
    source_port, sink_port = free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    start_file, out = workdir / "go", workdir / "receiver.json"
    if case.count == 0:
        return run_idle_case(case, 5.0)
    total = case.count * case.feeds
    receiver = start(["-m", "bench.receiver", "--port", str(sink_port), "--expect", str(total),
                      "--out", str(out), *(["--latency"] if case.rate else [])])
    loadgen = start(["-m", "bench.loadgen", "--port", str(source_port), "--count",
                     str(case.count), "--rate", str(case.rate), "--start-file", str(start_file)])
    wait_listening(sink_port)
    wait_listening(source_port)
    relay, startup, metrics_port = relays(case, source_port, sink_port)
    try:
        time.sleep(0.5)  # connected, subscribed, idle
        counts_before = scraped_counts(metrics_port, case.processes)
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
        counts = scraped_counts(metrics_port, case.processes)
    finally:
        stop([*relay, loadgen], then_wait_for=[receiver])
    result = json.loads(out.read_text())
    received = result["count"]
    seconds = max(1e-9, result["last"] - result["first"]) if received else float("nan")
    figures: dict[str, Any] = {
        "case": case.name, "relay": case.relay + (" + spool" if case.spool else ""),
        "feeds": case.feeds + case.idle, "workers": case.workers,
        "startup_s": round(startup, 2),
        "processes": case.processes, "offered_rate": case.rate * case.feeds or "saturation",
        "messages": received, "complete": received == total,
        "messages_per_s": round(received / seconds),
        "peak_rss_mib": round(peak_rss_mib, 1),
        "cpu_s_per_million": round(cpu / max(1, received) * 1e6, 2),
        "cores_used": round(cpu / wall, 2),  # by the relay, start file to last arrival
        "disk_bytes_per_message": round(written / max(1, received)),
    }
    if metrics_port is not None:
        writes = counts["sink_writes"] - counts_before["sink_writes"]
        figures["messages_per_sink_write"] = round(received / max(1.0, writes), 1)
    if case.rate:
        latencies = sorted(result["latencies"])
        figures.update({f"latency_{k}_ms": round(percentile(latencies, q) * 1000, 2)
                        for k, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))})
        tail = [kib for t, kib in rss_samples if t >= 10]
        if len(tail) >= 2:
            figures["rss_mib_at_10s"] = round(tail[0] / 1024, 1)
            figures["rss_mib_at_end"] = round(tail[-1] / 1024, 1)
    return figures


VENUE_RULES: dict[str, Any] = {
    # An OKX-, HTX- and Kraken-like mix: a heartbeat and its reply, a server ping to answer,
    # chatter to skip. The load generator's frames match none of them, as a venue's data.
    "heartbeat": {"send": "ping", "interval": 20, "expect": "pong", "timeout": 20},
    "replies": [{"when": {"ping": "*"}, "send": {"pong": 0}, "copy": {"/pong": "/ping"}}],
    "control": [{"event": "subscribe"}, {"channel": "heartbeat"}, {"type": "welcome"}],
}


def cases(quick: bool) -> list[Case]:
    n = 50_000 if quick else 200_000
    fixed = 5_000
    seconds = 10 if quick else 60
    many = 10 if quick else 20  # seconds of the many-feeds cases
    return [
        Case("saturation", "baseline", n),
        Case("saturation", "service", n),
        Case("saturation, 2 feeds", "baseline", n, feeds=2, processes=2),
        Case("saturation, 2 feeds, 2 workers", "service", n, feeds=2, workers=2),
        Case("saturation, 2 feeds, 2 processes", "service", n, feeds=2, processes=2),
        Case("5000 msg/s", "baseline", fixed * min(seconds, 20), rate=fixed),
        Case("5000 msg/s", "service", fixed * seconds, rate=fixed),
        # The baseline confirms nothing: the same without the ping per batch, for comparison.
        Case("5000 msg/s, INGEST_SINK_CONFIRM=none", "service", fixed * seconds, rate=fixed,
             extra_env={"INGEST_SINK_CONFIRM": "none"}),
        # Real venues (issue 13): the control rules of a venue on every frame, none matching.
        Case("saturation, venue rules", "service", n, feed_keys=VENUE_RULES),
        # Many feeds (issue 10): one process, one worker.
        Case("1000 feeds: 999 idle + 1 at 5000 msg/s", "baseline", fixed * many, rate=fixed,
             idle=999),
        Case("1000 feeds: 999 idle + 1 at 5000 msg/s", "service", fixed * many, rate=fixed,
             idle=999),
        Case("1000 feeds x 10 msg/s", "baseline", 10 * many, rate=10, feeds=1000),
        Case("1000 feeds x 10 msg/s", "service", 10 * many, rate=10, feeds=1000),
        Case("1000 idle feeds", "service", 0, feeds=0, idle=1000),
        Case("saturation", "service", n, spool=True),
        Case("5000 msg/s", "service", fixed * seconds, rate=fixed, spool=True),
    ]


ROUND_CASES = ("5000 msg/s", "1000 feeds x 10 msg/s", "1000 feeds: 999 idle + 1 at 5000 msg/s")
"""The CPU ratios measured again in rounds (see `ratio_rounds`)."""


def ratio_rounds(all_cases: list[Case], rounds: int, seconds: float) -> dict[str, Any]:
    """CPU per message, service / baseline, for each of ROUND_CASES, measured again in `rounds`
    short pairs run back to back, which of the two goes first alternating. This machine's speed
    drifts by 10-15 % from one minute to the next, for both relays alike, so a single pair can
    land on either side of a bound: the median of the rounds' ratios is the figure to quote."""
    figures: dict[str, Any] = {}
    for name in ROUND_CASES:
        pair = {case.relay: case for case in all_cases if case.name == name and not case.spool}
        shortened = {relay: replace(case, count=max(1, round(case.rate * seconds)))
                     for relay, case in pair.items()}
        cpu: dict[str, list[float]] = {"service": [], "baseline": []}
        for index in range(rounds):
            order = ("baseline", "service") if index % 2 == 0 else ("service", "baseline")
            for relay in order:
                cpu[relay].append(run_case(shortened[relay])["cpu_s_per_million"])
        each = [round(s / b, 2) for s, b in zip(cpu["service"], cpu["baseline"], strict=True)]
        figures[name] = {"ratios": each, "median": round(statistics.median(each), 2),
                         "service_cpu_s_per_million": cpu["service"],
                         "baseline_cpu_s_per_million": cpu["baseline"]}
        print(json.dumps({"rounds": name, **figures[name]}), flush=True)
    return figures


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = ["case", "relay", "messages_per_s", "latency_p50_ms", "latency_p99_ms",
               "latency_max_ms", "peak_rss_mib", "cpu_s_per_million", "cores_used",
               "disk_bytes_per_message", "messages_per_sink_write", "rss_mib_at_10s",
               "rss_mib_at_end", "startup_s", "idle_cores", "rss_mib", "fds_per_feed", "complete"]
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row.get(c, "")) for c in columns))


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    def find(case: str, relay: str) -> dict[str, Any]:
        return next(r for r in rows if r["case"] == case and r["relay"] == relay)

    def throughput(case: str, relay: str = "service") -> float:
        return float(find(case, relay)["messages_per_s"])

    def cpu_ratio(case: str) -> float:
        return round(find(case, "service")["cpu_s_per_million"]
                     / find(case, "baseline")["cpu_s_per_million"], 2)

    service, baseline = find("saturation", "service"), find("saturation", "baseline")
    fixed_s, fixed_b = find("5000 msg/s", "service"), find("5000 msg/s", "baseline")
    spooled, fixed_spooled = (find("saturation", "service + spool"),
                              find("5000 msg/s", "service + spool"))
    return {
        "venue rules / none, saturation throughput": round(
            throughput("saturation, venue rules") / throughput("saturation"), 2),
        "cpu per message service/baseline, 5000 msg/s": cpu_ratio("5000 msg/s"),
        "cpu per message service (confirm=none)/baseline, 5000 msg/s": round(
            find("5000 msg/s, INGEST_SINK_CONFIRM=none", "service")["cpu_s_per_million"]
            / fixed_b["cpu_s_per_million"], 2),
        "cpu per message service/baseline, 1000 feeds x 10 msg/s": cpu_ratio(
            "1000 feeds x 10 msg/s"),
        "cpu per message service/baseline, 999 idle + 1 busy": cpu_ratio(
            "1000 feeds: 999 idle + 1 at 5000 msg/s"),
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
    parser.add_argument("--rounds", type=int, help="pairs per CPU ratio measured again in "
                        "rounds after the cases (default 3, --quick 1; 0: none)")
    args = parser.parse_args()
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    all_cases = cases(args.quick)
    rows = []
    for case in all_cases:
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
        if rounds:
            seconds = 5 if args.quick else 10
            summary["ratio_rounds"] = ratio_rounds(all_cases, rounds, seconds)
            print(f"\nCPU per message service/baseline, {rounds} more rounds of {seconds} s "
                  "(median, each):")
            for name, figures in summary["ratio_rounds"].items():
                print(f"{name}: {figures['median']} {figures['ratios']}")
    out = args.out or ROOT / "bench" / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
