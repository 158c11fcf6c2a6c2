"""`python -m app`: settings -> logging -> HTTP endpoints -> run the dataflow.

The only module with side effects. Scaling flags and variables are Bytewax's own (`-w`, `-i`,
`-a`; BYTEWAX_WORKERS_PER_PROCESS, BYTEWAX_PROCESS_ID, BYTEWAX_ADDRESSES, and the hostfile and
StatefulSet variables); the dataflow runs under Bytewax's runner, `cli_main`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType
from typing import TypeVar, cast

import structlog
from bytewax.run import cli_main as _untyped_cli_main

from app.errors import ConfigError, IngestError
from app.flow import build_flow
from app.http import start_http_server
from app.logs import configure_logging
from app.metrics import Metrics
from app.settings import Options, Settings, load_settings
from app.sink.spool import Spool
from app.sink.spooled import leftover_spools, open_spool
from app.status import ConnectionStatus
from app.transform import Transform, load_transform

EPOCH_INTERVAL = timedelta(seconds=10)
cli_main = cast(Callable[..., None], _untyped_cli_main)  # Bytewax's runner, not annotated
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
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration, print it with secrets masked, exit")
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


def resolve_cluster(args: argparse.Namespace, settings: Settings,
                    env: Mapping[str, str]) -> Cluster:
    """Flags first, then Bytewax's variables (as `python -m bytewax.run` reads them)."""
    workers = args.workers_per_process or settings.workers
    if not args.workers_per_process and env.get("BYTEWAX_WORKERS_PER_PROCESS"):
        workers = _whole_number("BYTEWAX_WORKERS_PER_PROCESS",
                                env["BYTEWAX_WORKERS_PER_PROCESS"]) or settings.workers
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
    if process_id is None:
        return Cluster(workers)
    if not addresses:
        raise ConfigError(["BYTEWAX_ADDRESSES: required when a process id is given"])
    return Cluster(workers, process_id, addresses.split(";"))


def install_signal_handlers(stopping: threading.Event) -> None:
    """SIGTERM or SIGINT: stop reading and flush (the flow winds down); a second one: abort."""
    log = structlog.get_logger("app")

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():
            raise KeyboardInterrupt
        log.info("stopping", signal=signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _configure(argv: list[str] | None) -> tuple[argparse.Namespace, Settings, Transform | None,
                                                 Cluster]:
    args = parse_args(argv)
    settings = load_settings()
    transform = load_transform(settings.transform)
    return args, settings, transform, resolve_cluster(args, settings, os.environ)


def _cause(error: BaseException, kind: type[E]) -> E | None:
    """The `kind` exception behind Bytewax's wrapping of what a step raised, if any."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


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
        return _run(settings, options, transform, cluster, spool)
    finally:
        if spool is not None:
            spool.close()


def _run(settings: Settings, options: Options, transform: Transform | None, cluster: Cluster,
         spool: Spool | None) -> int:
    configure_logging(settings.log_level, settings.log_format)
    log = structlog.get_logger("app")
    stopping = threading.Event()
    install_signal_handlers(stopping)
    status = ConnectionStatus()
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
        cli_main(flow, workers_per_process=cluster.workers, process_id=cluster.process_id,
                 addresses=cluster.addresses, epoch_interval=EPOCH_INTERVAL)
    except SystemExit:
        raise
    except BaseException as error:  # a peer's death arrives as pyo3's PanicException
        if _cause(error, KeyboardInterrupt):  # a second signal: stop without flushing
            log.warning("aborted")
            return 130
        cause = _cause(error, IngestError)
        if cause is not None:
            log.error("failed", error=str(cause))
        else:
            log.error("failed", error=str(error), exc_info=True)
        return 1
    finally:
        status.running = False
        server.shutdown()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
