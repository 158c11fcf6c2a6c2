"""The exception tree.

    IngestError
    ├── ConfigError          a setting is wrong; start-up stops with exit status 2
    ├── InvalidMessageError  a frame is invalid and INGEST_ON_INVALID is `fail`
    ├── TransformError       the user hook raised or returned something unusable (app.transform)
    ├── ConnectHookError     a feed's connect_hook raised or returned something unusable: a
                             failed connection attempt, reason `other` (app.feed.hook)
    └── ShutdownTimeout      the sink was unreachable for the whole shutdown grace period
                             (app.sink.sink; the batch is logged as unsent, exit status 0)

Every exception ws-ingest raises on purpose is one of these (or a private subclass inside the
module that raises and catches it); anything else is a bug or comes from a library.
"""

from __future__ import annotations


class IngestError(Exception):
    """Root of every error ws-ingest raises on purpose."""


class ConfigError(IngestError):
    """One or more settings are wrong; each problem is one line naming its variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class InvalidMessageError(IngestError):
    """A frame could not be turned into an envelope and the policy is to stop."""


class TransformError(IngestError):
    """The hook raised, or returned something other than a dict, a list of dicts or None."""


class ConnectHookError(IngestError):
    """A feed's connect_hook failed; the message is safe to log (it holds no secrets)."""


class ShutdownTimeout(IngestError):
    """The sink was still unreachable when the shutdown grace period ran out."""

    def __init__(self, unconfirmed: list[bytes] | None = None) -> None:
        super().__init__("shutdown timeout")
        self.unconfirmed = unconfirmed or []  # the frames of the batch not confirmed
