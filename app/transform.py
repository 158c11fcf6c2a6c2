"""The user hook of INGEST_TRANSFORM: loading it (the only I/O here) and applying it (pure)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, cast

from app.errors import ConfigError, TransformError

Envelope = dict[str, Any]
Transform = Callable[[Envelope], "Envelope | list[Envelope] | None"]


def load_callable(path: str, where: str) -> Callable[..., Any]:
    """Import `package.module:function`; any failure is a ConfigError naming `where` (the
    setting). Shared by INGEST_TRANSFORM and the feeds' connect_hook."""
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except Exception as exc:  # an import runs arbitrary code: report whatever it raised
        raise ConfigError([f"{where}: cannot load {path!r} ({exc!r})"]) from None
    if not callable(target):
        raise ConfigError([f"{where}: {path!r} is not callable"])
    return cast(Callable[..., Any], target)


def load_transform(path: str | None) -> Transform | None:
    """The INGEST_TRANSFORM hook, or None when unset."""
    return None if path is None else cast(Transform, load_callable(path, "INGEST_TRANSFORM"))


def apply_transform(transform: Transform, envelope: Envelope) -> list[Envelope]:
    """The envelopes to forward: [] when the hook drops the message."""
    try:
        result = transform(envelope)
    except Exception as exc:
        raise TransformError(f"raised {exc!r}") from exc
    if result is None:
        return []
    if isinstance(result, dict):
        return [result]
    if isinstance(result, list) and all(isinstance(item, dict) for item in result):
        return result
    raise TransformError(f"returned {type(result).__name__}, expected dict, list of dicts or None")
