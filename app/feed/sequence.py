"""The venue's own numbering and clock in data frames (the feed's `sequence`, `event_time`). Pure.

`SequenceTracker(path, scope=None)` follows the upstream sequence number of parsed frames, per
scope (the value at the `scope` pointer, e.g. the symbol; without one, a single scope). It keeps
the last number it accepted per scope:

- `observe(frame) -> Step | None`: None when the frame has no number (not an error: snapshots,
  status frames). Otherwise the step from the last number: `first` (nothing known for the scope),
  `in_order` (last + 1), `gap` (higher: `missing` numbers never came), `duplicate` (equal) or
  `backwards` (lower). `first`, `in_order` and `gap` move the last number up; `duplicate` and
  `backwards` leave it, so they are what a make-before-break overlap must not forward again.
  A number is an integer, or a string of digits (some venues quote them); anything else is
  treated as no number. Numbers must rise by one per message in their scope.
- `is_new(frame) -> bool`: the query for exact make-before-break without changing anything:
  True when the frame's number is greater than the last accepted for its scope, or the frame has
  none or its scope is unknown; False means "already forwarded".
- `reset()`: a fresh connection (not a make-before-break overlap) starts over: its first frame is
  `first`, not a gap.

`EventTime(path, unit)` (or the one-shot `event_time_seconds(frame, path, unit)`) reads the
venue's event time as Unix seconds, for `ingest_upstream_lag_seconds`: units `s`, `ms`, `us`, `ns`
(a number or a numeric string) or `iso` (an ISO 8601 / RFC 3339 date-time with `Z` or an offset,
fractional seconds as venues send them, up to nanoseconds, kept to the microsecond; e.g.
Coinbase's "2026-11-25T16:54:10.123456Z"). A missing or malformed field is None, and so is a
date-time without a zone (local to whom?).
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal, NamedTuple

from app.feed.pointer import MISSING, Pointer

__all__ = [
    "EventTime",
    "SequenceTracker",
    "Step",
    "StepKind",
    "TimeUnit",
    "event_time_seconds",
]

StepKind = Literal["first", "in_order", "gap", "duplicate", "backwards"]
TimeUnit = Literal["s", "ms", "us", "ns", "iso"]


class Step(NamedTuple):
    """What one numbered frame was: `expected` is last + 1 (None for `first`), `missing` the
    numbers skipped by a gap (0 otherwise)."""

    kind: StepKind
    scope: Any
    received: int
    expected: int | None = None
    missing: int = 0


def _number(value: Any) -> int | None:
    if type(value) is int:
        return value
    if isinstance(value, str) and value.isdigit() and value.isascii():
        return int(value)
    return None


def _scope_key(value: Any) -> Any:
    # Scopes are dict keys: lists and objects (odd, but possible) are keyed by their repr.
    return repr(value) if isinstance(value, (dict, list)) else value


class SequenceTracker:
    """The upstream sequence per scope; see the module docstring."""

    __slots__ = ("_last", "path", "scope")

    def __init__(self, path: str | Pointer, scope: str | Pointer | None = None) -> None:
        self.path = path if isinstance(path, Pointer) else Pointer(path)
        self.scope = scope if scope is None or isinstance(scope, Pointer) else Pointer(scope)
        self._last: dict[Any, int] = {}

    def _read(self, frame: Any) -> tuple[Any, int | None]:
        number = self.path.get(frame)
        if type(number) is not int:
            number = _number(number)
        if number is None or self.scope is None:
            return None, number
        scope = self.scope.get(frame)
        if type(scope) is str:
            return scope, number
        return (None if scope is MISSING else _scope_key(scope)), number

    def observe(self, frame: Any) -> Step | None:
        scope, number = self._read(frame)
        if number is None:
            return None
        last = self._last.get(scope)
        if last is None:
            self._last[scope] = number
            return Step("first", scope, number)
        expected = last + 1
        if number == expected:
            self._last[scope] = number
            return Step("in_order", scope, number, expected)
        if number > expected:
            self._last[scope] = number
            return Step("gap", scope, number, expected, number - expected)
        return Step("duplicate" if number == last else "backwards", scope, number, expected)

    def position(self, frame: Any) -> tuple[Any, int | None]:
        """(scope key, number) of a frame; number None when it has none."""
        scope, number = self._read(frame)
        return _scope_key(scope), number

    def is_new(self, frame: Any) -> bool:
        scope, number = self._read(frame)
        if number is None:
            return True
        last = self._last.get(scope)
        return last is None or number > last

    def last(self, scope: Any = None) -> int | None:
        """The last number accepted for a scope (None: nothing yet)."""
        return self._last.get(_scope_key(scope))

    def reset(self) -> None:
        self._last.clear()


_ISO = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d\d):?(\d\d))"
)
_DIVISOR = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


@lru_cache(maxsize=16)
def _midnight(year: int, month: int, day: int) -> int | None:
    # Cached: a feed's event times fall on one or two days.
    if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]):
        return None
    return calendar.timegm((year, month, day, 0, 0, 0, 0, 0, 0))


def parse_iso(text: str) -> float | None:
    """Unix seconds for an ISO 8601 / RFC 3339 date-time with a zone (Z or ±hh:mm), else None
    (a time without a zone is ambiguous). Digits past microseconds are dropped by the fast path
    (Python 3.11's C parser), kept by the fallback (older Pythons, lower-case t and z)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return _parse_rfc3339(text)
    return None if moment.tzinfo is None else moment.timestamp()


def _parse_rfc3339(text: str) -> float | None:
    found = _ISO.fullmatch(text)
    if found is None:
        return None
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = found.groups()
    midnight = _midnight(int(year), int(month), int(day))
    if midnight is None or hour > "23" or minute > "59" or second > "59":
        return None  # leap seconds (60) are not representable in Unix time
    if sign and (off_h > "23" or off_m > "59"):
        return None
    seconds = midnight + int(hour) * 3600 + int(minute) * 60 + int(second)
    if not zulu:
        offset = int(off_h) * 3600 + int(off_m) * 60
        seconds -= offset if sign == "+" else -offset
    return seconds + int(fraction) / 10 ** len(fraction) if fraction else float(seconds)


class EventTime:
    """The venue's event time at `path` in `unit`, compiled once; `seconds(frame)` per frame."""

    __slots__ = ("_divisor", "path", "unit")

    def __init__(self, path: str | Pointer, unit: TimeUnit = "ms") -> None:
        if unit != "iso" and unit not in _DIVISOR:
            raise ValueError(f"unknown time unit {unit!r} (s, ms, us, ns or iso)")
        self.path = path if isinstance(path, Pointer) else Pointer(path)
        self.unit = unit
        self._divisor = _DIVISOR.get(unit, 0)

    def seconds(self, frame: Any) -> float | None:
        """Unix seconds, or None when the field is missing or malformed."""
        value = self.path.get(frame)
        divisor = self._divisor
        if type(value) is int and divisor:  # the usual case first; bool is no int here
            # Whole seconds apart keep a nanosecond count exact to well below a microsecond.
            return value // divisor + value % divisor / divisor
        if not divisor:
            return parse_iso(value) if isinstance(value, str) else None
        if isinstance(value, str):
            try:
                value = int(value) if value.isdigit() and value.isascii() else float(value)
            except ValueError:
                return None
            if type(value) is int:
                return value // divisor + value % divisor / divisor
        elif type(value) is not float:
            return None
        if value != value or value in (_INF, -_INF):
            return None
        return float(value) / divisor


_INF = float("inf")


@lru_cache(maxsize=64)
def _event_time(path: str, unit: TimeUnit) -> EventTime:
    return EventTime(path, unit)


def event_time_seconds(frame: Any, path: str, unit: TimeUnit) -> float | None:
    """The event time in `frame` as Unix seconds (None if missing or malformed)."""
    return _event_time(path, unit).seconds(frame)
