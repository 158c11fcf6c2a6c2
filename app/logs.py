"""structlog configuration: one pipeline for our events and the standard library's (websockets).

Console rendering on a terminal, JSON lines otherwise (INGEST_LOG_FORMAT). Errors (ERROR and
above) go to stderr, everything else to stdout; what native code prints on stdout (timely's
"error connecting to worker 0 ...; retrying" while a cluster forms) joins the same pipeline. No
URL password reaches a line: every rendered line is masked last, whatever carried the URL (an
event field, an exception's text, a traceback, a record of the standard library's).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:'\"]*):[^\s/?#'\"]*@")
"""`scheme://user:password@`; greedy to the last @ of the authority, as urlsplit reads it."""


def mask_passwords(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***."""
    return _URL_PASSWORD.sub(r"\1:***@", text) if "@" in text else text


def _masked(renderer: structlog.typing.Processor) -> structlog.typing.Processor:
    """The renderer, then `mask_passwords` over the line it rendered."""
    def render(logger: Any, name: str, event: structlog.typing.EventDict) -> str:
        line = renderer(logger, name, event)
        return mask_passwords(line if isinstance(line, str) else str(line))

    return render


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog and route `logging` through the same processors and renderer."""
    if fmt == "auto":
        fmt = "console" if sys.stdout.isatty() else "json"
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # JSON carries a traceback as a string; the console renderer prints it itself.
            *([structlog.processors.format_exc_info] if fmt == "json" else []),
            _masked(renderer),
        ],
    )
    below_error = logging.StreamHandler(sys.stdout)
    below_error.addFilter(lambda record: record.levelno < logging.ERROR)
    errors = logging.StreamHandler(sys.stderr)
    errors.setLevel(logging.ERROR)
    for handler in (below_error, errors):
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [below_error, errors]
    root.setLevel(level.upper())
    # websockets logs every failed handshake and keepalive timeout at INFO/ERROR with a
    # traceback; our own connect/disconnect events already say the same with context.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))


class RateLimiter:
    """Allows one event per key per `interval` seconds and counts what it held back."""

    def __init__(self, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[object, float] = {}
        self._suppressed: dict[object, int] = {}

    def allow(self, key: object) -> int | None:
        """None to stay quiet; else the number of events suppressed since the last one."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)


def capture_native_stdout() -> None:
    """Route what native code writes to file descriptor 1 into the log pipeline (logger
    `bytewax`), so stdout carries only log lines. Call before `configure_logging()`: Python's
    own `sys.stdout` moves to a copy of the real stdout, and fd 1 becomes a pipe read here."""
    sys.stdout.flush()
    sys.stdout = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    read_end, write_end = os.pipe()
    os.dup2(write_end, 1)
    os.close(write_end)

    def relay() -> None:
        log = logging.getLogger("bytewax")
        with os.fdopen(read_end, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                text = line.strip()
                # Retried every second while a peer is missing; `waiting_for_cluster` says it.
                level = logging.DEBUG if "error connecting to worker" in text else logging.INFO
                if text:
                    log.log(level, text.replace("\t", " "))

    threading.Thread(target=relay, name="native-stdout", daemon=True).start()
