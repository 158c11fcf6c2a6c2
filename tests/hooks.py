"""connect_hook functions the tests name in INGEST_SOURCES (`tests.hooks:...`)."""

from __future__ import annotations

from typing import Any


def broken(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("token service down")
