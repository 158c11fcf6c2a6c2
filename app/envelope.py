"""Frames in, envelopes out: decoding, validation, envelope and transform. Pure: no I/O.

A source partition hands over a `Chunk` per poll: the frames one feed delivered since the last
poll, each numbered by the feed's `seq`. `EnvelopeBuilder` turns a chunk into an `Outcome`: the
encoded envelopes for the sink, the dead-letter records, and the counts of what was invalid or
dropped, in the order the frames arrived.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, NamedTuple

import orjson

from app.errors import IngestError, InvalidMessageError, TransformError
from app.settings import EnvelopeOptions
from app.transform import Transform, apply_transform

Payload = bytes | str

DEAD_LETTER_RAW_LIMIT = 1024
"""Bytes of an oversized frame kept in its dead-letter record."""


class Frame(NamedTuple):
    """One WebSocket message as received: `payload` is bytes for binary frames (and for text
    frames in `json` mode, where the parser takes bytes), str for text frames in `text` mode."""

    seq: int
    received_at: float  # Unix time, seconds
    payload: Payload
    size: int  # payload bytes: UTF-8 length of text, length of binary


class Chunk(NamedTuple):
    """One feed's frames of a poll, in the order received."""

    source: str
    frames: list[Frame]


Poll = list[Chunk]
"""What a source partition hands over in one poll: a chunk per feed that had frames. One
dataflow item per poll, not per feed, so a partition of a thousand quiet feeds pays the
dataflow's per-item cost once per poll."""


@dataclass(slots=True)
class Encoded:
    """Envelopes of one chunk, serialised, with the receipt time of each for latency and the
    `seq` of the frame each came from (the spool keeps it beside the envelope)."""

    source: str
    messages: list[bytes] = field(default_factory=list)
    received: list[float] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Outcome:
    """Everything one chunk became."""

    encoded: Encoded
    dead_letters: list[bytes] = field(default_factory=list)
    invalid: dict[str, int] = field(default_factory=dict)  # by reason
    dropped: int = 0
    first_problem: str | None = None  # one example for the (rate-limited) log line


@lru_cache(maxsize=8)
def _second(whole_seconds: int) -> str:
    return datetime.fromtimestamp(whole_seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def format_timestamp(unix_seconds: float) -> str:
    """RFC 3339 UTC with microseconds and a Z: 2026-11-25T16:54:10.123456Z."""
    whole, micros = divmod(round(unix_seconds * 1_000_000), 1_000_000)
    return f"{_second(whole)}.{micros:06d}Z"


def payload_size(payload: Payload) -> int:
    """Payload bytes as counted by ingest_bytes_received_total."""
    if isinstance(payload, bytes):
        return len(payload)
    return len(payload) if payload.isascii() else len(payload.encode())


class _Invalid(IngestError):
    """Raised and caught inside this module: the frame becomes a dead letter or a count."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _decode_json(payload: Payload) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise _Invalid("decode", "empty frame" if not payload else f"not JSON: {exc}") from None


def _decode_text(payload: Payload) -> Any:
    if isinstance(payload, bytes):
        return base64.b64encode(payload).decode("ascii")
    return payload


def _raw_field(payload: Payload, limit: int | None) -> dict[str, Any]:
    raw = payload[:limit] if limit is not None else payload
    if isinstance(raw, str):
        return {"raw": raw}
    try:
        return {"raw": raw.decode()}
    except UnicodeDecodeError:
        return {"raw": base64.b64encode(raw).decode("ascii"), "raw_encoding": "base64"}


class EnvelopeBuilder:
    """Turns chunks into outcomes for the given payload mode, size limits, hook and policy."""

    def __init__(self, options: EnvelopeOptions, transform: Transform | None = None) -> None:
        self._decode = _decode_json if options.payload == "json" else _decode_text
        self._max_bytes = options.max_message_bytes
        self._max_envelope = options.max_envelope_bytes
        self._on_invalid = options.on_invalid
        self._transform = transform

    def __call__(self, chunk: Chunk) -> Outcome:
        source = chunk.source
        outcome = Outcome(Encoded(source))
        encoded = outcome.encoded
        messages, received, seqs = encoded.messages, encoded.received, encoded.seqs
        decode, transform, dumps = self._decode, self._transform, orjson.dumps
        max_bytes = self._max_bytes[source]
        for frame in chunk.frames:
            try:
                if frame.size > max_bytes:
                    raise _Invalid("too_large", f"{frame.size} bytes > {max_bytes}")
                envelope = {
                    "source": source,
                    "seq": frame.seq,
                    "received_at": format_timestamp(frame.received_at),
                    "data": decode(frame.payload),
                }
                if transform is None:
                    messages.append(self._fitting(dumps(envelope)))
                    received.append(frame.received_at)
                    seqs.append(frame.seq)
                    continue
                results = [self._fitting(result)
                           for result in self._transformed(transform, envelope)]
                if not results:
                    outcome.dropped += 1
                messages.extend(results)
                received.extend([frame.received_at] * len(results))
                seqs.extend([frame.seq] * len(results))
            except _Invalid as invalid:
                self._reject(outcome, source, frame, invalid)
        return outcome

    def _fitting(self, encoded: bytes) -> bytes:
        """The envelope, if the sink takes a frame of its size (else the sink would close with
        1009 and the same batch would be refused again and again)."""
        if len(encoded) > self._max_envelope:
            raise _Invalid("too_large", f"envelope of {len(encoded)} bytes > "
                                        f"{self._max_envelope} (INGEST_SINK_MAX_MESSAGE_BYTES)")
        return encoded

    @staticmethod
    def _transformed(transform: Transform, envelope: dict[str, Any]) -> list[bytes]:
        try:
            return [orjson.dumps(item) for item in apply_transform(transform, envelope)]
        except TransformError as exc:
            raise _Invalid("transform", str(exc)) from None
        except TypeError as exc:  # orjson: the hook returned something not serialisable
            raise _Invalid("transform", f"result is not JSON-serialisable: {exc}") from None

    def _reject(self, outcome: Outcome, source: str, frame: Frame, invalid: _Invalid) -> None:
        problem = f"seq {frame.seq}: {invalid.reason}: {invalid}"
        if self._on_invalid == "fail":
            raise InvalidMessageError(f"feed {source!r}, {problem}")
        outcome.invalid[invalid.reason] = outcome.invalid.get(invalid.reason, 0) + 1
        outcome.first_problem = outcome.first_problem or problem
        if self._on_invalid == "dead-letter":
            limit = DEAD_LETTER_RAW_LIMIT if invalid.reason == "too_large" else None
            record = {
                "source": source,
                "seq": frame.seq,
                "received_at": format_timestamp(frame.received_at),
                "reason": invalid.reason,
                "detail": str(invalid),
                "size": frame.size,
                **_raw_field(frame.payload, limit),
            }
            encoded = orjson.dumps(record)
            if len(encoded) > self._max_envelope:  # the dead-letter socket has the same limit
                record.update(_raw_field(frame.payload, DEAD_LETTER_RAW_LIMIT))
                encoded = orjson.dumps({**record, "raw_truncated": True})
            outcome.dead_letters.append(encoded)
