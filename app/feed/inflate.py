"""Inflating compressed binary frames (the feed's `decompress`), never past a size limit. Pure.

`inflate(data, method, limit) -> bytes`:

- `gzip`, `zlib` (RFC 1950), `deflate` (raw RFC 1951, as OKX's old API and some others send);
  `auto`: gzip by its magic bytes 1f 8b, zlib by its header check (CM 8, FCHECK), anything else
  is returned as it is (a venue that compresses only some frames); `none`: as it is.
- The output is produced in steps of at most `STEP` bytes and stops as soon as it passes
  `limit`: `TooLarge` (carrying `limit`), so a small frame that would inflate to gigabytes costs
  about `limit + STEP` bytes of memory (plus zlib's own ~40 KiB of state and window) and the
  time to inflate `limit` bytes (a 1 MiB limit: a few milliseconds). The caller counts it
  as `too_large`. A frame within the limit briefly needs its size twice (steps, then one joined
  copy) unless it fits in one step.
- Corrupt or truncated data is `InflateError` (a ValueError too), which the caller counts as
  `decode`. gzip and zlib streams must be complete (their checksum is verified); a raw deflate
  stream may end without its final block (venues that flush per message, like permessage-deflate,
  send it so). Bytes after the end of the stream are ignored.

Both exceptions derive from app.errors.IngestError.
"""

from __future__ import annotations

import zlib
from typing import Literal

from app.errors import IngestError

__all__ = ["STEP", "InflateError", "Method", "TooLarge", "detect", "inflate"]

Method = Literal["none", "gzip", "zlib", "deflate", "auto"]

STEP = 32 * 1024
"""Most bytes inflated at once (zlib's first output block: one allocation per step)."""
_INPUT_STEP = 16 * 1024

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "zlib": zlib.MAX_WBITS, "deflate": -zlib.MAX_WBITS}


class InflateError(IngestError, ValueError):
    """A frame is not valid data for its compression method (counted as `decode`)."""


class TooLarge(IngestError):
    """A frame inflates past the limit (counted as `too_large`); `limit` is that limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"inflates to more than {limit} bytes")
        self.limit = limit


def detect(data: bytes) -> Literal["gzip", "zlib", "none"]:
    """What `auto` takes `data` for, by its first two bytes."""
    if data[:2] == b"\x1f\x8b":
        return "gzip"
    if len(data) >= 2 and data[0] & 0x0F == 8 and data[0] >> 4 <= 7 and (
        (data[0] << 8 | data[1]) % 31 == 0
    ):
        return "zlib"
    return "none"


def inflate(data: bytes, method: Method, limit: int) -> bytes:
    """`data` inflated by `method`; TooLarge past `limit` bytes, InflateError if corrupt."""
    if method == "auto":
        method = detect(data)
    if method == "none":
        return data
    wbits = _WBITS.get(method)
    if wbits is None:
        raise ValueError(f"unknown compression method {method!r}")
    inflater = zlib.decompressobj(wbits)
    view = memoryview(data)
    chunks: list[bytes] = []
    size = used = 0
    tail: bytes | memoryview = b""
    try:
        while True:
            if not tail and used < len(data):
                # Input goes in slices too: zlib copies what it leaves unused (unconsumed_tail),
                # which must not be a megabyte per step.
                tail = view[used:used + _INPUT_STEP]
                used += len(tail)
            want = min(STEP, limit + 1 - size)
            chunk = inflater.decompress(tail, want)
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise TooLarge(limit)
            tail = inflater.unconsumed_tail  # may be empty with output still pending
            if inflater.eof or (len(chunk) < want and not tail and used >= len(data)):
                break
    except zlib.error as exc:
        raise InflateError(f"not valid {method} data: {exc}") from None
    if not inflater.eof and method != "deflate":
        raise InflateError(f"truncated {method} data")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
