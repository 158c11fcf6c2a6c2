"""File descriptors: how many the service needs, and making sure the process may open them.

Measured with /proc/<pid>/fd (200 feeds, 1 and 2 workers): one socket per feed (a partition
reads all its feeds in one event loop), 3 per source partition (its loop: an epoll descriptor
and a self-pipe pair), 4 per sink partition (its loop and its socket), the same again per worker
for the dead-letter sink, 4 for the HTTP server's loop and listening socket plus one per HTTP
connection (at most `HttpLimits.max_connections`), 3 for stdin, stdout and stderr, and 2 for
the relay of what native code prints on stdout (a pipe, and the saved real stdout).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from app.errors import ConfigError

PER_FEED = 1
PER_SOURCE_PARTITION = 3
PER_SINK_PARTITION = 4
HTTP_BASE = 4
STDIO = 3 + 2  # and the native-stdout relay
MARGIN = 32
"""Room for what is not counted: a reconnect's overlap, the cluster's connections, files."""


def descriptors_needed(feeds: int, workers: int, sinks: int, http_connections: int) -> int:
    """Every descriptor a process with these feeds (all of them, at most) and workers can hold
    at once; `sinks`: 1, or 2 with a dead-letter sink."""
    return (PER_FEED * feeds + (PER_SOURCE_PARTITION + PER_SINK_PARTITION * sinks) * workers
            + HTTP_BASE + http_connections + STDIO + MARGIN)


@dataclass(frozen=True)
class FdLimit:
    """RLIMIT_NOFILE after `ensure_fd_limit`; `raised_from` the soft limit before, if raised."""

    needed: int
    soft: int
    hard: int
    raised_from: int | None = None


def ensure_fd_limit(needed: int) -> FdLimit:
    """Raise the soft RLIMIT_NOFILE up to the hard one if `needed` is more than it allows;
    ConfigError (one line, with the numbers) if even the hard limit is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return FdLimit(needed, soft, hard)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ConfigError([
            f"RLIMIT_NOFILE: the feeds and workers need about {needed} file descriptors, "
            f"the limit is {soft} (hard {hard}): raise it (ulimit -n {needed}) or run fewer "
            "feeds per process"])
    target = needed if hard == resource.RLIM_INFINITY else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        raise ConfigError([
            f"RLIMIT_NOFILE: the feeds and workers need about {needed} file descriptors, "
            f"the limit is {soft} and raising it to {target} failed ({exc})"]) from None
    return FdLimit(needed, target, hard, raised_from=soft)
