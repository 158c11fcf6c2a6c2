"""The exception tree.

    IngestError
    ├── ConfigError          a setting is wrong; start-up stops with exit status 2
    └── InvalidMessageError  a frame is invalid and INGEST_ON_INVALID is `fail`
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
