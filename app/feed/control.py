"""Control frames of a feed: which frames are protocol chatter, and what to answer. Pure.

Owns the contract's *match* and *message* (see CONTRACT.md, "Real venues"), the per-frame
classification, and two small pieces of timing state that take `now` as an argument:

- `compile_match(spec) -> Match`, `compile_message(msg) -> str`, `compile_reply(when, send, copy)
  -> Reply`: validate once at start-up (ValueError with a one-line reason).
- `ControlRules(...)` holds a feed's compiled rules; `rules.classify(payload) -> Verdict | None`
  tells a control frame from a data frame (None). `bool(rules)` is False when the feed has no
  rules: the reader then skips `classify` altogether.
- `HeartbeatClock` says when our `heartbeat.send` is due and when the connection is dead;
  `SubscribeTracker` counts subscription acknowledgements against a deadline.

Matching. A string match equals a text frame (compared as UTF-8 bytes when the payload is
bytes). An object match holds for a JSON-object frame that has every key of the match with an
equal value: nested objects compare the same way (a subset), arrays element by element with the
same length, numbers by value (1 == 1.0) but never a boolean with a number, and the value "*"
matches any value, so {"ping": "*"} means "has a key ping". A top-level string "*" is a string
match like any other (a frame that is the one character *). An empty object match is refused: it
would turn every data frame into control.

Precedence when a frame matches several rules, first wins:
    heartbeat.expect ("heartbeat"), replies[].when in order ("reply"), subscribe_ack.error
    ("ack_error"), subscribe_ack.expect ("ack"), rotate_on ("notice"), control[] in order
    ("control").
String matches are tried before object matches: a frame equal to a string match is not also
tested against object matches.

Replies. `Verdict.answer` is the reply's `send` as text: a string as-is, an object or list as
compact JSON, with each `copy` target pointer set to the value at the source pointer in the frame.
A source the frame does not have leaves the target as written in `send` (the answer still goes
out: a venue that pings without an id still gets its pong). Copy targets must have their parent in
`send` (checked at compile time), so building an answer never fails.

Hot path. `classify` runs on every frame of a feed with rules, so a data frame must cost little:
a string match is a dict lookup guarded by a length test. An object match holds *needles*: its
keys and plain string values, in double quotes (b'"event"'), which must all occur in the raw
payload of a frame it matches. A first level of few needles covering every rule (one, b'"event"',
for OKX) rules most data frames out with one or two substring tests; a frame holding one is
checked against each rule's needles (values first) and parsed with orjson only when some rule
has them all. When data frames keep holding a first-level needle (`NOISY_AFTER` in a row: a key
the venue's data has too, like Kraken's "channel" or Coinbase's "type"), the first level covers
those rules by their other needles from then on. None of this changes a verdict, only its cost.
Needles assume the venue does not backslash-escape plain ASCII letters (no JSON encoder does);
strings with characters some encoders escape ("/", "<", ">", "&", quotes, backslashes,
non-ASCII) are never needles. The payload is what the caller received: bytes (text frames as
UTF-8, binary frames already inflated) or str. `classify` keeps that small learning state, so
one `ControlRules` serves one feed on one thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import orjson

from app.feed.pointer import MISSING, Pointer, deep_copy

__all__ = [
    "ControlRules",
    "HeartbeatClock",
    "Kind",
    "Match",
    "Reply",
    "SubscribeTracker",
    "Verdict",
    "compile_copies",
    "compile_match",
    "compile_message",
    "compile_reply",
    "describe_frame",
]

Kind = Literal["heartbeat", "reply", "control", "ack", "ack_error", "notice"]
Payload = bytes | str

WILDCARD = "*"
_UNSAFE = frozenset('"\\/<>&')


class Verdict(NamedTuple):
    """A control frame: its `kind` and, for a reply, the `answer` text to send back.

    The `ack_error` kind counts as `ack` in ingest_control_messages_total."""

    kind: Kind
    answer: str | None = None


def _check_json(value: Any, where: str) -> None:
    if value is None or isinstance(value, (str, bool, int, float)):
        return
    if isinstance(value, list):
        for item in value:
            _check_json(item, where)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: object keys must be strings, not {key!r}")
            _check_json(item, where)
        return
    raise ValueError(f"{where}: {type(value).__name__} is not a JSON value")


def _value_matches(spec: Any, value: Any) -> bool:
    if isinstance(spec, str):
        return spec == WILDCARD or (isinstance(value, str) and value == spec)
    if isinstance(spec, dict):
        return isinstance(value, dict) and all(
            key in value and _value_matches(item, value[key]) for key, item in spec.items()
        )
    if isinstance(spec, list):
        return (isinstance(value, list) and len(value) == len(spec)
                and all(map(_value_matches, spec, value)))
    if isinstance(spec, bool) or isinstance(value, bool):
        return spec is value
    if spec is None:
        return value is None
    return isinstance(value, (int, float)) and value == spec


def _strings(spec: Any, is_value: bool = False) -> Iterable[tuple[bool, str]]:
    """(is a value, text) for every key and string value in a match, except the wildcard."""
    if isinstance(spec, dict):
        for key, item in spec.items():
            yield False, key
            yield from _strings(item, True)
    elif isinstance(spec, list):
        for item in spec:
            yield from _strings(item, True)
    elif isinstance(spec, str) and spec != WILDCARD and is_value:
        yield True, spec


def _safe_needle(text: str) -> bool:
    return bool(text) and text.isascii() and text.isprintable() and not _UNSAFE & set(text)


class Match:
    """A compiled match. `spec` is as given; `text` is set for a string match."""

    __slots__ = ("needles", "spec", "text")

    def __init__(self, spec: Any) -> None:
        if isinstance(spec, str):
            self.spec: str | dict[str, Any] = spec
            self.text: str | None = spec
            self.needles: tuple[str, ...] = ()
            return
        if not isinstance(spec, dict):
            raise ValueError(f"a match must be a string or a JSON object, not {_json_type(spec)}")
        if not spec:
            raise ValueError("an object match needs at least one key (an empty one matches "
                             "every JSON object)")
        _check_json(spec, "match")
        self.spec, self.text = spec, None
        # Strings that must occur, quoted, in the raw text of any frame this matches: values
        # first, as they tell frames apart better than keys ("heartbeat" vs "channel").
        strings = [(is_value, text) for is_value, text in _strings(spec) if _safe_needle(text)]
        values = {text for is_value, text in strings if is_value}
        keys = {text for is_value, text in strings if not is_value} - values
        self.needles = tuple(sorted(values, key=lambda t: (-len(t), t))
                             + sorted(keys, key=lambda t: (-len(t), t)))

    def __repr__(self) -> str:
        return f"Match({self.spec!r})"

    def matches(self, payload: Payload) -> bool:
        """Whether a frame matches; a convenience (ControlRules.classify is the fast path)."""
        if self.text is not None:
            return (payload == self.text.encode() if isinstance(payload, bytes)
                    else payload == self.text)
        return self.matches_parsed(_parse_object(payload))

    def matches_parsed(self, frame: Any) -> bool:
        """Whether an already parsed frame matches this object match (False for a string one)."""
        return self.text is None and _value_matches(self.spec, frame)


def _json_type(value: Any) -> str:
    names = {list: "an array", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _parse_object(payload: Payload) -> Any:
    try:
        frame = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return MISSING
    return frame if isinstance(frame, dict) else MISSING


def compile_match(spec: Any) -> Match:
    """A compiled match, or ValueError saying what is wrong with `spec`."""
    return spec if isinstance(spec, Match) else Match(spec)


def compile_message(message: Any) -> str:
    """A message as sent: a string as-is, a JSON object or array as compact JSON text."""
    if isinstance(message, str):
        return message
    if not isinstance(message, (dict, list)):
        raise ValueError(f"a message must be a string, a JSON object or an array, "
                         f"not {_json_type(message)}")
    _check_json(message, "message")
    try:
        return orjson.dumps(message).decode()
    except TypeError as exc:  # orjson: integers beyond 64 bits
        raise ValueError(f"message cannot be sent as JSON: {exc}") from None


@dataclass(frozen=True, slots=True)
class Reply:
    """A compiled `replies` item: frames matching `when` get `answer_for(frame)` back."""

    when: Match
    send: Any
    copies: tuple[tuple[Pointer, Pointer], ...]  # (target in send, source in the frame)
    text: str  # the answer when there is nothing to copy

    def answer_for(self, frame: Any) -> str:
        """The answer to a parsed frame (MISSING or any value when the frame is not JSON)."""
        if not self.copies:
            return self.text
        answer = deep_copy(self.send)
        for target, source in self.copies:
            value = source.get(frame)
            if value is not MISSING:
                answer = target.put(answer, value)
        try:
            return orjson.dumps(answer).decode()
        except TypeError:  # a copied integer beyond 64 bits: send the template as written
            return self.text


def compile_copies(send: Any, copy: Mapping[str, str]) -> tuple[tuple[Pointer, Pointer], ...]:
    """A reply's `copy` as (target, source) pointer pairs; ValueError unless every target
    pointer is valid in `send` and every source pointer is valid."""
    copies = []
    for target_text, source_text in copy.items():
        target, source = Pointer(target_text), Pointer(source_text)
        if target.tokens and not isinstance(send, (dict, list)):
            raise ValueError("send must be a JSON object or array to copy into it")
        target.check_settable(send)
        copies.append((target, source))
    return tuple(copies)


def compile_reply(when: Any, send: Any, copy: Mapping[str, str] | None = None) -> Reply:
    """A compiled reply rule, or ValueError naming the part that is wrong (when/send/copy)."""
    part = "when"
    try:
        match = compile_match(when)
        part = "send"
        text = compile_message(send)
        part = "copy"
        copies = compile_copies(send, copy or {})
    except ValueError as exc:
        raise ValueError(f"{part}: {exc}") from None
    return Reply(match, deep_copy(send), copies, text)


class _Rule(NamedTuple):
    match: Match
    verdict: Verdict | None  # None: a reply, answered per frame
    reply: Reply | None
    needles_bytes: tuple[bytes, ...]
    needles_str: tuple[str, ...]

    @classmethod
    def of(cls, match: Match, verdict: Verdict | None, reply: Reply | None = None) -> _Rule:
        quoted = tuple(f'"{needle}"' for needle in match.needles)
        return cls(match, verdict, reply, tuple(q.encode() for q in quoted), quoted)

    def verdict_for(self, frame: Any) -> Verdict:
        if self.reply is not None:
            return Verdict("reply", self.reply.answer_for(frame))
        assert self.verdict is not None
        return self.verdict


def _cover(rules: Sequence[_Rule], avoid: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """Few needles such that every rule holds one: a frame holding none matches no rule.

    Greedy set cover: rules of one venue share keys ("event", "op", "type"), so one or two
    substring tests usually rule a data frame out. Needles in `avoid` (found to be in the data
    frames too) are used only for rules that have no other."""
    left = [set(rule.match.needles) - avoid or set(rule.match.needles) for rule in rules]
    chosen: list[str] = []
    while left:
        counts: dict[str, int] = {}
        for needles in left:
            for needle in needles:
                counts[needle] = counts.get(needle, 0) + 1
        best = max(sorted(counts), key=lambda n: (counts[n], len(n)))
        chosen.append(best)
        left = [needles for needles in left if best not in needles]
    return tuple(chosen)


NOISY_AFTER = 32
"""Frames in a row that held a first-level needle and were data: the needle is dropped."""


class ControlRules:
    """A feed's compiled control rules; `classify(payload)` is the per-frame test.

    Arguments take raw specs (as in the settings) or compiled `Match`/`Reply` objects:
    `heartbeat` = heartbeat.expect, `replies`, `ack` / `ack_error` = subscribe_ack.expect /
    .error, `notice` = rotate_on, `control` = control[]."""

    __slots__ = ("_bytes", "_bytes_lengths", "_filtered", "_needles", "_needles_bytes",
                 "_needles_str", "_noisy", "_noisy_run", "_objects", "_text_lengths", "_texts",
                 "_unfiltered")

    def __init__(
        self,
        *,
        heartbeat: Any = None,
        replies: Sequence[Reply] = (),
        ack: Any = None,
        ack_error: Any = None,
        notice: Any = None,
        control: Sequence[Any] = (),
    ) -> None:
        rules: list[_Rule] = []

        def add(spec: Any, kind: Kind) -> None:
            if spec is not None:
                rules.append(_Rule.of(compile_match(spec), Verdict(kind)))

        add(heartbeat, "heartbeat")
        rules.extend(_Rule.of(reply.when, None, reply) for reply in replies)
        add(ack_error, "ack_error")
        add(ack, "ack")
        add(notice, "notice")
        for spec in control:
            add(spec, "control")

        # Two tables: a str and a bytes key of equal hash would compare (a BytesWarning).
        self._texts: dict[str, Verdict] = {}
        self._bytes: dict[bytes, Verdict] = {}
        for rule in rules:
            text = rule.match.text
            if text is not None:
                # The frame is this very text, so a reply's answer is known now.
                verdict = rule.verdict_for(_parse_object(text))
                self._texts.setdefault(text, verdict)  # the first rule (precedence) wins
                self._bytes.setdefault(text.encode(), verdict)
        # A length test first: hashing a long data frame would cost more than the rest.
        self._text_lengths = frozenset(len(key) for key in self._texts)
        self._bytes_lengths = frozenset(len(key) for key in self._bytes)
        self._objects = tuple(rule for rule in rules if rule.match.text is None)
        self._filtered = [rule for rule in self._objects if rule.match.needles]
        self._unfiltered = len(self._filtered) < len(self._objects)
        self._noisy: frozenset[str] = frozenset()
        self._noisy_run = 0
        self._use_needles(_cover(self._filtered))

    def _use_needles(self, needles: tuple[str, ...]) -> None:
        self._needles = needles
        self._needles_str = tuple(f'"{n}"' for n in needles)
        self._needles_bytes = tuple(n.encode() for n in self._needles_str)

    def _data_held(self, index: int) -> None:
        """A data frame held first-level needle `index`. When data frames keep holding one (a
        key the venue's data has too, like Kraken's "channel"), cover its rules by other
        needles (their values): fewer frames parsed, same verdicts."""
        self._noisy_run += 1
        if self._noisy_run >= NOISY_AFTER:
            self._noisy_run = 0
            self._noisy |= {self._needles[index]}
            self._use_needles(_cover(self._filtered, self._noisy))

    def __bool__(self) -> bool:
        return bool(self._texts or self._objects)

    def classify(self, payload: Payload) -> Verdict | None:
        """The verdict on a control frame, or None for a data frame."""
        if isinstance(payload, bytes):
            if len(payload) in self._bytes_lengths:
                verdict = self._bytes.get(payload)
                if verdict is not None:
                    return verdict
            for needle in self._needles_bytes:
                if needle in payload:
                    return self._after_needle(payload, self._needles_bytes.index(needle))
        else:
            if len(payload) in self._text_lengths:
                verdict = self._texts.get(payload)
                if verdict is not None:
                    return verdict
            for text_needle in self._needles_str:
                if text_needle in payload:
                    return self._after_needle(payload, self._needles_str.index(text_needle))
        if self._unfiltered:
            return self._classify_object(payload)
        return None

    def _after_needle(self, payload: Payload, index: int) -> Verdict | None:
        verdict = self._classify_object(payload)
        if verdict is None:
            self._data_held(index)
        else:
            self._noisy_run = 0
        return verdict

    def _classify_object(self, payload: Payload) -> Verdict | None:
        # A frame holding one needle: parse it only if it holds every needle of some rule.
        is_bytes = isinstance(payload, bytes)
        found: dict[Any, bool] = {}
        frame: Any = None
        for rule in self._objects:
            for needle in rule.needles_bytes if is_bytes else rule.needles_str:
                hit = found.get(needle)
                if hit is None:
                    hit = found[needle] = needle in payload  # type: ignore[operator]
                if not hit:
                    break
            else:
                if frame is None:
                    frame = _parse_object(payload)
                if frame is MISSING:
                    return None
                if _value_matches(rule.match.spec, frame):
                    return rule.verdict_for(frame)
        return None


class HeartbeatClock:
    """When our heartbeat is due and whether the connection is dead. Pure: every method takes
    `now` (seconds on any monotonic clock the caller uses consistently).

    Start it at connect time: the first heartbeat is due `interval` after. Call `sent(now)` after
    sending one (the next is due `interval` later) and `replied(now)` for a frame matching
    `heartbeat.expect`. The connection is dead (`dead(now)`) when a heartbeat has waited
    `timeout` without a reply; with several unanswered heartbeats the wait counts from the
    oldest, since replies cannot be told apart. Only replies count as liveness when `expect` is
    set (the contract: data flowing does not prove the venue still answers us); when it is not set,
    construct with `any_frame_is_reply=True` and call `received(now)` for every frame. The reader
    sleeps until `wake_at()`, the earlier of the next heartbeat and the reply deadline."""

    __slots__ = ("_next_send", "_waiting_since", "any_frame_is_reply", "interval", "timeout")

    def __init__(self, interval: float, timeout: float, now: float, *,
                 any_frame_is_reply: bool = False) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError("heartbeat interval and timeout must be positive")
        self.interval, self.timeout = interval, timeout
        self.any_frame_is_reply = any_frame_is_reply
        self._next_send = now + interval
        self._waiting_since: float | None = None

    @property
    def next_send(self) -> float:
        """When the next heartbeat is due."""
        return self._next_send

    @property
    def reply_deadline(self) -> float | None:
        """When the connection is dead without a reply, or None when no heartbeat waits."""
        return None if self._waiting_since is None else self._waiting_since + self.timeout

    def due(self, now: float) -> bool:
        return now >= self._next_send

    def sent(self, now: float) -> None:
        if self._waiting_since is None:
            self._waiting_since = now
        self._next_send = now + self.interval

    def replied(self, now: float) -> None:
        self._waiting_since = None

    def received(self, now: float) -> None:
        """Any frame arrived: a reply only when the feed has no `heartbeat.expect`."""
        if self.any_frame_is_reply:
            self._waiting_since = None

    def dead(self, now: float) -> bool:
        return self._waiting_since is not None and now - self._waiting_since >= self.timeout

    def wake_at(self) -> float:
        deadline = self.reply_deadline
        return self._next_send if deadline is None else min(self._next_send, deadline)


SubscribeState = Literal["pending", "done", "failed"]

DESCRIBE_LIMIT = 300
"""Characters of a frame quoted in a log line."""


def describe_frame(payload: Payload, limit: int = DESCRIBE_LIMIT) -> str:
    """A frame as text for a log line, cut to `limit` characters."""
    text = payload.decode(errors="replace") if isinstance(payload, bytes) else payload
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


class SubscribeTracker:
    """One subscription round after a (re)connect: `expected` acknowledgements due by
    `now + timeout`. Pure: takes `now`.

    `acked()` per `ack` verdict, `refused(payload)` per `ack_error` verdict, `check(now)` when
    the deadline may have passed; each returns the state: pending, done (every ack arrived) or
    failed, with `failure` the line to log (the refusing frame, or what timed out). An error frame
    fails the round even after every ack arrived (a venue may refuse one symbol of a request it
    acknowledged for others); acks beyond `expected` are ignored. Zero messages: done at once."""

    __slots__ = ("deadline", "expected", "failure", "received", "state", "timeout")

    def __init__(self, expected: int, timeout: float, now: float) -> None:
        self.expected, self.timeout = expected, timeout
        self.deadline = now + timeout
        self.received = 0
        self.failure: str | None = None
        self.state: SubscribeState = "done" if expected <= 0 else "pending"

    def acked(self) -> SubscribeState:
        self.received += 1
        if self.state == "pending" and self.received >= self.expected:
            self.state = "done"
        return self.state

    def refused(self, payload: Payload) -> SubscribeState:
        if self.state != "failed":
            self.state = "failed"
            self.failure = f"subscription refused: {describe_frame(payload)}"
        return self.state

    def check(self, now: float) -> SubscribeState:
        if self.state == "pending" and now >= self.deadline:
            self.state = "failed"
            self.failure = (f"subscription not acknowledged within {self.timeout:g} s "
                            f"({self.received} of {self.expected} acknowledgements)")
        return self.state
