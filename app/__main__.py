"""`python -m app`: settings -> logging -> HTTP endpoints -> run the dataflow.

The only module with side effects. Scaling flags and variables are Bytewax's own (`-w`, `-i`,
`-a`; BYTEWAX_WORKERS_PER_PROCESS, BYTEWAX_PROCESS_ID, BYTEWAX_ADDRESSES, and the hostfile and
StatefulSet variables); the dataflow runs under Bytewax's runner, `cli_main`, on a thread of its
own: the main thread only waits for it, so signals act at once, even while Bytewax blocks
waiting for a cluster's peers (which it does without ever returning to Python).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import TypeVar, cast

import structlog
from bytewax.dataflow import Dataflow
from bytewax.run import cli_main as _untyped_cli_main
from dotenv import dotenv_values

from app.configdoc import help_text
from app.errors import ConfigError, IngestError
from app.fds import FdLimit, descriptors_needed, ensure_fd_limit
from app.feed.hook import load_connect_hooks
from app.flow import build_flow
from app.http import HttpLimits, start_http_server
from app.logs import capture_native_stdout, configure_logging
from app.metrics import Metrics
from app.settings import Options, Settings, load_settings
from app.shutdown import StopSignal
from app.sink.spool import Spool
from app.sink.spooled import leftover_spools, open_spool
from app.status import ConnectionStatus
from app.tls import check_tls
from app.transform import Transform, load_transform

EPOCH_INTERVAL = timedelta(seconds=10)
cli_main = cast(Callable[..., None], _untyped_cli_main)  # Bytewax's runner, not annotated
WAITING_FIRST_S = 1.0  # a cluster whose peers are all up starts well within this
WAITING_EVERY_S = 5.0
CLUSTER_HELP = """cluster (Bytewax's own variables; the flags above win):
  BYTEWAX_ADDRESSES           host:port of every process, ';'-separated, the same everywhere
  BYTEWAX_PROCESS_ID          this process's index in BYTEWAX_ADDRESSES
  BYTEWAX_WORKERS_PER_PROCESS workers in this process (else INGEST_WORKERS)"""
E = TypeVar("E", bound=BaseException)


@dataclass(frozen=True)
class Cluster:
    """Where this process stands in a Bytewax cluster (a single process by default)."""

    workers: int
    process_id: int | None = None
    addresses: list[str] | None = None

    @property
    def total_workers(self) -> int:
        return self.workers * len(self.addresses or [""])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="ws-ingest: reads WebSocket feeds, wraps each message in a JSON envelope\n"
                    "and writes them to one outbound WebSocket, in a Bytewax dataflow.",
        epilog=f"{help_text()}\n\n{CLUSTER_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration, print it with secrets masked, exit")
    parser.add_argument("--env-file", metavar="PATH",
                        help="read variables from this file instead of ./.env "
                             "(variables set in the environment win)")
    parser.add_argument("-w", "--workers-per-process", type=int,
                        help="Bytewax workers in this process (default: "
                             "BYTEWAX_WORKERS_PER_PROCESS, else INGEST_WORKERS)")
    parser.add_argument("-i", "--process-id", type=int,
                        help="this process's index in the cluster (BYTEWAX_PROCESS_ID)")
    parser.add_argument("-a", "--addresses",
                        help="host:port of every process, ';'-separated (BYTEWAX_ADDRESSES)")
    return parser.parse_args(argv)


def _whole_number(variable: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError([f"{variable}: not a whole number: {value!r}"]) from None
    if number < 0:
        raise ConfigError([f"{variable}: must not be negative"])
    return number


def resolve_cluster(args: argparse.Namespace, default_workers: int,
                    env: Mapping[str, str]) -> Cluster:
    """Flags first, then Bytewax's variables (as `python -m bytewax.run` reads them);
    `default_workers` is INGEST_WORKERS."""
    workers = args.workers_per_process or default_workers
    if not args.workers_per_process and env.get("BYTEWAX_WORKERS_PER_PROCESS"):
        workers = _whole_number("BYTEWAX_WORKERS_PER_PROCESS",
                                env["BYTEWAX_WORKERS_PER_PROCESS"]) or default_workers
    process_id = args.process_id
    if process_id is None and env.get("BYTEWAX_PROCESS_ID"):
        process_id = _whole_number("BYTEWAX_PROCESS_ID", env["BYTEWAX_PROCESS_ID"])
    if process_id is None and "BYTEWAX_POD_NAME" in env and "BYTEWAX_STATEFULSET_NAME" in env:
        pod, statefulset = env["BYTEWAX_POD_NAME"], env["BYTEWAX_STATEFULSET_NAME"]
        process_id = _whole_number("BYTEWAX_POD_NAME", pod.removeprefix(statefulset + "-"))
    addresses = args.addresses or env.get("BYTEWAX_ADDRESSES")
    if process_id is not None and not addresses and "BYTEWAX_HOSTFILE_PATH" in env:
        with open(env["BYTEWAX_HOSTFILE_PATH"]) as hostfile:
            addresses = ";".join(line.strip() for line in hostfile if line.strip())
    if process_id is not None and not addresses:
        raise ConfigError(["BYTEWAX_ADDRESSES: required when a process id is given"])
    if process_id is None or addresses is None:
        return Cluster(workers)
    every = addresses.split(";")
    if process_id >= len(every):
        raise ConfigError([f"BYTEWAX_PROCESS_ID: {process_id} is past the end of "
                           f"BYTEWAX_ADDRESSES ({len(every)} addresses; the first is 0)"])
    return Cluster(workers, process_id, every)


def install_signal_handlers(stopping: threading.Event, status: ConnectionStatus) -> None:
    """SIGTERM or SIGINT: stop reading and flush (the flow winds down), or, while the dataflow
    has not started (a cluster waiting for its peers), exit 0 at once: nothing was read. A
    second signal: exit 130 at once, without flushing.

    The handlers run on the main thread, which only waits for the dataflow's thread, so they
    run at once even while Bytewax blocks (connecting to peers)."""
    log = structlog.get_logger("app")

    def handle(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stopping.is_set():
            log.warning("aborted", signal=name)
            os._exit(130)  # Bytewax's threads cannot be interrupted; nothing else can end them
        stopping.set()
        log.info("stopping", signal=name)
        if not status.running:
            log.info("stopped", dataflow_started=False)
            os._exit(0)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _configure(argv: list[str] | None) -> tuple[argparse.Namespace, Settings, Transform | None,
                                                 Cluster]:
    args = parse_args(argv)
    env_file = args.env_file or ".env"
    if args.env_file and not Path(args.env_file).is_file():
        raise ConfigError([f"--env-file: no such file: {args.env_file}"])
    # Bytewax's variables may be in the env file too; the environment wins, as for ours.
    from_file = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    problems: list[str] = []
    try:
        settings = load_settings(env_file)
        transform = load_transform(settings.transform)
        load_connect_hooks(settings.feeds)  # a hook that cannot load stops start-up (exit 2)
        check_tls(settings)  # and so does a certificate file that cannot be loaded
    except ConfigError as error:
        problems += error.problems
    try:  # Bytewax's variables are checked too, so every problem is told in one pass
        cluster = resolve_cluster(args, settings.workers if not problems else 1,
                                  {**from_file, **os.environ})
    except ConfigError as error:
        problems += error.problems
    if problems:
        raise ConfigError(problems)
    return args, settings, transform, cluster


def _cause(error: BaseException, kind: type[E]) -> E | None:
    """The `kind` exception behind Bytewax's wrapping of what a step raised, if any."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _run_in_thread(flow: Dataflow, cluster: Cluster) -> tuple[threading.Thread,
                                                               list[BaseException]]:
    """Bytewax's runner on a thread of its own, so the main thread stays free for signals."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            cli_main(flow, workers_per_process=cluster.workers, process_id=cluster.process_id,
                     addresses=cluster.addresses, epoch_interval=EPOCH_INTERVAL)
        except BaseException as error:  # a peer's death arrives as pyo3's PanicException
            errors.append(error)

    thread = threading.Thread(target=run, name="dataflow", daemon=True)
    thread.start()
    return thread, errors


def _wait(thread: threading.Thread, cluster: Cluster, status: ConnectionStatus) -> None:
    """Until the dataflow ends; meanwhile say so while a cluster waits for its peers."""
    log = structlog.get_logger("app")
    started = time.monotonic()
    next_log = started + WAITING_FIRST_S
    frozen = False
    while thread.is_alive():
        thread.join(0.1)
        if not frozen and status.readiness()["ready"]:
            # Built and connected: most of the heap now lives as long as the process. Frozen,
            # the collector's full passes no longer walk it (with 1 000 feeds each took up to
            # ~150 ms, stalling every feed: the tail of their latency).
            gc.collect()
            gc.freeze()
            frozen = True
        if cluster.addresses and not status.running and time.monotonic() >= next_log:
            log.info("waiting_for_cluster", process_id=cluster.process_id,
                     addresses=cluster.addresses, waited_s=round(time.monotonic() - started))
            next_log += WAITING_EVERY_S


def _cluster_port_problem(error: BaseException, cluster: Cluster) -> str | None:
    """`BYTEWAX_ADDRESSES: ...` when Bytewax could not listen on this process's address."""
    found = re.search(r"failed to initialize networking: (.*?)(?: \(os error \d+\))?$",
                      str(error), re.MULTILINE)
    if found is None or cluster.addresses is None or cluster.process_id is None:
        return None
    own = cluster.addresses[cluster.process_id]
    return (f"BYTEWAX_ADDRESSES: process {cluster.process_id} cannot listen on {own} "
            f"({found.group(1).lower()}): is another process using that port?")


def check_fd_limit(settings: Settings, cluster: Cluster) -> FdLimit:
    """Enough file descriptors for every feed (at most all of them on this process)?"""
    sinks = 2 if settings.on_invalid == "dead-letter" else 1
    return ensure_fd_limit(descriptors_needed(
        len(settings.feeds), cluster.workers, sinks, HttpLimits().max_connections))


def main(argv: list[str] | None = None) -> int:
    try:
        args, settings, transform, cluster = _configure(argv)
    except ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 2
    if args.check_config:
        print(json.dumps({**settings.masked(), "cluster": cluster.__dict__}, indent=2))
        return 0
    try:
        fds = check_fd_limit(settings, cluster)
    except ConfigError as error:
        print(*error.problems, sep="\n", file=sys.stderr)
        return 2

    options = settings.options()
    spool: Spool | None = None
    if options.spool is not None:
        try:  # before anything starts: a spool it cannot use is a configuration error
            spool = open_spool(options.spool, cluster.process_id)
        except ConfigError as error:
            for problem in error.problems:
                print(problem, file=sys.stderr)
            return 2
    try:
        return _run(settings, options, transform, cluster, spool, fds)
    finally:
        if spool is not None:
            spool.close()


def _run(settings: Settings, options: Options, transform: Transform | None, cluster: Cluster,
         spool: Spool | None, fds: FdLimit) -> int:
    capture_native_stdout()
    configure_logging(settings.log_level, settings.log_format)
    log = structlog.get_logger("app")
    if fds.raised_from is not None:
        log.info("fd_limit_raised", needed=fds.needed, soft=fds.soft, was=fds.raised_from)
    stopping = StopSignal(settings.shutdown_timeout_ms / 1000)
    status = ConnectionStatus((feed.name for feed in settings.feeds),
                              all_local=cluster.addresses is None)
    install_signal_handlers(stopping, status)
    metrics = Metrics()
    port = settings.metrics_port + (cluster.process_id or 0)
    try:
        server = start_http_server(settings.metrics_host, port, status, metrics.registry)
    except OSError as exc:
        print(f"INGEST_METRICS_PORT: cannot listen on {settings.metrics_host}:{port} ({exc})",
              file=sys.stderr)
        return 2
    flow = build_flow(options, workers=cluster.total_workers, transform=transform,
                      status=status, metrics=metrics, stopping=stopping, spool=spool)
    log.info("starting", feeds=[feed.name for feed in settings.feeds], metrics_port=port,
             **cluster.__dict__)
    if options.spool is not None:  # the cluster shrank: these spools are not read
        for leftover in leftover_spools(options.spool, len(cluster.addresses or [""])):
            log.warning("spool_left_behind", directory=str(leftover),
                        hint="no process of this cluster has its id: it is not sent")
    status.running = True
    try:
        thread, errors = _run_in_thread(flow, cluster)
        _wait(thread, cluster, status)
    finally:
        status.running = False
        server.shutdown()
    if errors:
        failure = errors[0]
        port_problem = _cluster_port_problem(failure, cluster)
        if port_problem is not None:
            print(port_problem, file=sys.stderr)
            return 2
        cause = _cause(failure, IngestError)
        if cause is not None:
            log.error("failed", error=str(cause))
        else:
            log.error("failed", error=str(failure), exc_info=failure)
        return 1
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
