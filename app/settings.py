"""The one Settings class: every INGEST_* variable, validated before anything starts.

Build it once in the entry point with `load_settings()` and pass it down; nothing else reads the
environment. Header values are `SecretStr`, so they print masked everywhere.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from dotenv import dotenv_values
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.errors import ConfigError
from app.feed.control import (
    ControlRules,
    compile_copies,
    compile_match,
    compile_message,
    compile_reply,
)
from app.feed.pointer import Pointer
from app.feed.sequence import EventTime, SequenceTracker
from app.problems import names_variable, problems, unknown_variables
from app.retry import Backoff

ENV_PREFIX = "INGEST_"

PayloadMode = Literal["json", "text"]
InvalidPolicy = Literal["drop", "dead-letter", "fail"]
Framing = Literal["message", "batch"]
Confirm = Literal["ping", "none", "ack"]
WhenFull = Literal["block", "drop_newest"]
SpoolSync = Literal["normal", "full"]


def _check_ws_url(url: str) -> str:
    if not url.startswith(("ws://", "wss://")):
        raise ValueError("must start with ws:// or wss://")
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError("has no host")
    if "#" in url:  # websockets would refuse it at every attempt, the URL in its message
        raise ValueError("must not have a #fragment (RFC 6455)")
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = 0
    if port == 0:
        raise ValueError("has a bad port (a number from 1 to 65535)")
    return url


def _parse_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at position {exc.pos})") from None
    return value


def mask_url(url: str) -> str:
    """The URL with any password in it replaced by ***, for logs and --check-config."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]  # as written: [IPv6] brackets and port included
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def reveal(headers: dict[str, SecretStr]) -> dict[str, str]:
    """Header values in clear, for the handshake only."""
    return {name: value.get_secret_value() for name, value in headers.items()}


def derive_name(url: str) -> str:
    """A feed's default name: host[:port] and path, e.g. `stream.example.com/ws/btc`."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return (host + parts.path).rstrip("/")


def _match(value: Any) -> Any:
    compile_match(value)
    return value


def _optional_match(value: Any) -> Any:
    return None if value is None else _match(value)


def _message(value: Any) -> Any:
    compile_message(value)
    return value


def _pointer(value: str) -> str:
    Pointer(value)
    return value


MatchSpec = Annotated[Any, AfterValidator(_match)]
"""A string (a text frame equal to it) or a JSON object (see app.feed.control)."""
OptionalMatch = Annotated[Any, AfterValidator(_optional_match)]
MessageSpec = Annotated[Any, AfterValidator(_message)]
"""A string sent as-is, or a JSON object or array sent as JSON text."""
PointerText = Annotated[str, AfterValidator(_pointer)]
"""An RFC 6901 JSON pointer."""

_HOOK = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
_PROXY_SCHEMES = ("http", "https", "socks5", "socks5h", "socks4")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, value: Any) -> Any:
        # Else pydantic's message names our class: "... or instance of HeartbeatSettings".
        if not isinstance(value, (dict, BaseModel)):
            raise ValueError("must be a JSON object")
        return value


class HeartbeatSettings(_Strict):
    """`heartbeat`: our application-level ping and what answers it."""

    send: MessageSpec
    interval: float = Field(20, gt=0)
    expect: OptionalMatch = None
    timeout: float = Field(10, gt=0)

    def message(self) -> str:
        """`send` as sent: a string as-is, an object or array as compact JSON text."""
        return compile_message(self.send)


class ReplySettings(_Strict):
    """An item of `replies`: how to answer a server-side application ping."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    when: MatchSpec
    send: MessageSpec
    copy_: dict[str, str] = Field(default_factory=dict, alias="copy")

    @field_validator("copy_")
    @classmethod
    def _copies(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if "send" in info.data:  # else `send` is already reported
            compile_copies(info.data["send"], value)
        return value

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The field is copy_ only because BaseModel has a copy() method; users write "copy".
        data: dict[str, Any] = handler(self)
        if "copy_" in data:
            data["copy"] = data.pop("copy_")
        return data


class SubscribeAckSettings(_Strict):
    """`subscribe_ack`: one `expect` per subscribe message within `timeout`; `error` refuses."""

    expect: MatchSpec
    error: OptionalMatch = None
    timeout: float = Field(5, gt=0)


class SequenceSettings(_Strict):
    """`sequence`: the upstream sequence number, and what it counts per."""

    path: PointerText
    scope: PointerText | None = None


class EventTimeSettings(_Strict):
    """`event_time`: the venue's event time and its unit."""

    path: PointerText
    unit: Literal["s", "ms", "us", "ns", "iso"] = "ms"


class TlsSettings(_Strict):
    """`tls` (also INGEST_SINK_TLS): custom CA, client certificate, verification."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _exists(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isfile(value):
            raise ValueError(f"no such file: {value}")
        return value

    @model_validator(mode="after")
    def _key_needs_cert(self) -> TlsSettings:
        if self.key_file and not self.cert_file:
            raise ValueError("key_file needs cert_file")
        return self


class FeedSettings(BaseModel):
    """One upstream feed, an item of INGEST_SOURCES."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    url: str
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    subscribe: list[MessageSpec] = Field(default_factory=list)
    subprotocols: list[str] = Field(default_factory=list)
    ping_interval: float = Field(20, gt=0)
    ping_timeout: float = Field(20, gt=0)
    open_timeout: float = Field(10, gt=0)
    idle_timeout: float = Field(0, ge=0)
    max_message_bytes: int = Field(1_048_576, gt=0)
    # Real venues (CONTRACT.md); each is compiled here once so a bad one stops start-up.
    heartbeat: HeartbeatSettings | None = None
    replies: list[ReplySettings] = Field(default_factory=list)
    control: list[MatchSpec] = Field(default_factory=list)
    subscribe_ack: SubscribeAckSettings | None = None
    decompress: Literal["none", "gzip", "zlib", "deflate", "auto"] = "none"
    compression: Literal["deflate", "none"] = "deflate"
    rotate_after: float = Field(0, ge=0)
    rotate_on: OptionalMatch = None
    sequence: SequenceSettings | None = None
    event_time: EventTimeSettings | None = None
    connect_hook: str | None = None
    tls: TlsSettings | None = None
    proxy: str | None = None  # None: the standard proxy variables apply; "none": no proxy

    @field_validator("url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        return _check_ws_url(value)

    @field_validator("connect_hook")
    @classmethod
    def _hook_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _HOOK.fullmatch(value.strip()):
            raise ValueError("must be package.module:function")
        return value.strip()

    @field_validator("proxy")
    @classmethod
    def _proxy_url(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() == "none":
            return None if value is None else "none"
        parts = urlsplit(value.strip())
        if parts.scheme.lower() not in _PROXY_SCHEMES:
            raise ValueError(f"must be a URL with scheme {', '.join(_PROXY_SCHEMES)}, or none")
        if not parts.hostname:
            raise ValueError("has no host")
        try:
            parts.port  # noqa: B018 (raises on a port that is not a number from 0 to 65535)
        except ValueError:
            raise ValueError("has a bad port (a number from 1 to 65535)") from None
        return value.strip()

    @model_validator(mode="after")
    def _default_name(self) -> FeedSettings:
        if not self.name:
            self.name = derive_name(self.url)
        return self

    def subscribe_messages(self) -> list[str]:
        """The subscribe messages as sent: objects and lists as JSON text, strings as they are."""
        return [m if isinstance(m, str) else json.dumps(m, separators=(",", ":"))
                for m in self.subscribe]

    def control_rules(self) -> ControlRules:
        """The compiled control rules; falsy when the feed has none (skip classifying then)."""
        heartbeat, ack = self.heartbeat, self.subscribe_ack
        return ControlRules(
            heartbeat=heartbeat.expect if heartbeat else None,
            replies=[compile_reply(r.when, r.send, r.copy_) for r in self.replies],
            ack=ack.expect if ack else None,
            ack_error=ack.error if ack else None,
            notice=self.rotate_on,
            control=self.control,
        )

    def sequence_tracker(self) -> SequenceTracker | None:
        """A fresh tracker of the upstream sequence, or None without `sequence`."""
        if self.sequence is None:
            return None
        return SequenceTracker(self.sequence.path, self.sequence.scope)

    def event_time_reader(self) -> EventTime | None:
        """The reader of the venue's event time, or None without `event_time`."""
        if self.event_time is None:
            return None
        return EventTime(self.event_time.path, self.event_time.unit)


class Settings(BaseSettings):
    """Every INGEST_* environment variable (also read from a `.env` file)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", validate_default=True,
        use_attribute_docstrings=True,  # each docstring is the variable's line in --help
    )

    sources: Annotated[list[FeedSettings], NoDecode] = Field(default_factory=list)
    """JSON list of feeds, [{"url": "wss://...", ...}]; this or INGEST_SOURCE_URLS is required"""
    source_urls: Annotated[list[FeedSettings], NoDecode] = Field(default_factory=list)
    """shorthand: comma-separated feed URLs, each with default settings"""
    sink_url: str
    """the outbound ws:// or wss:// URL the envelopes are written to"""
    sink_headers: Annotated[dict[str, SecretStr], NoDecode] = Field(default_factory=dict)
    """JSON object of handshake headers for the sink (values never logged)"""
    sink_framing: Framing = "message"
    """message: one text frame per envelope; batch: one frame per batch (a JSON array)"""
    sink_confirm: Confirm = "ping"
    """ping: a batch is written once a ping sent after it is answered; ack: once the sink
    acknowledged it ({"ack": n}, see README); none: once sent"""
    sink_max_message_bytes: int = Field(1_048_576, ge=4096)
    """largest frame the sink takes: a bigger envelope is invalid (too_large)"""
    sink_tls: Annotated[TlsSettings | None, NoDecode] = None
    """JSON object as a feed's `tls`: ca_file, cert_file, key_file, verify (for the sink)"""
    batch_size: int = Field(1000, ge=1)
    """most messages a feed hands over per poll"""
    batch_timeout_ms: int = Field(10, ge=1)
    """longest a poll waits for messages"""
    batch_linger_ms: int = Field(0, ge=0)
    """after a short batch, wait this long before polling that feed again (0: lowest latency)"""
    payload: PayloadMode = "json"
    """json: payloads must be JSON, else invalid; text: forwarded as a string (binary as base64)"""
    transform: str | None = None
    """optional package.module:function called with each envelope"""
    on_invalid: InvalidPolicy = "drop"
    """invalid messages: drop, dead-letter (also send to INGEST_DEAD_LETTER_URL) or fail (stop)"""
    dead_letter_url: str | None = None
    """outbound ws:// or wss:// URL for invalid messages (required with dead-letter)"""
    reconnect_min_ms: int = Field(100, ge=1)
    """first reconnect delay cap (exponential backoff, full jitter)"""
    reconnect_max_ms: int = Field(30_000, ge=1)
    """largest reconnect delay cap"""
    shutdown_timeout_ms: int = Field(5_000, ge=0)
    """on SIGTERM, how long writes may wait for an unreachable sink"""
    metrics_host: str = "0.0.0.0"
    """address the /metrics, /healthz and /readyz server listens on"""
    metrics_port: int = Field(9108, ge=0, le=65535)
    """its port (process i of a cluster uses this + i)"""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """debug, info, warning or error"""
    log_format: Literal["json", "console", "auto"] = "auto"
    """json, console, or auto (console on a terminal, else json)"""
    workers: int = Field(1, ge=1)
    """Bytewax workers in this process (-w or BYTEWAX_WORKERS_PER_PROCESS win)"""
    spool_dir: str | None = None
    """a directory for the crash-safe spool between the dataflow and the sink (off when unset)"""
    spool_max_bytes: int = Field(1_073_741_824, ge=1)
    """the spool's limit, in bytes of envelopes"""
    spool_when_full: WhenFull = "block"
    """block: backpressure, as without a spool; drop_newest: refuse new batches, counted"""
    spool_sync: SpoolSync = "normal"
    """normal: a commit survives a crash of the process; full: a power loss too (slower)"""

    @field_validator("sources", mode="before")
    @classmethod
    def _sources_json(cls, value: Any) -> Any:
        value = _parse_json(value)
        if value in ("", None):
            return []
        return value

    @field_validator("source_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [{"url": url.strip()} for url in value.split(",") if url.strip()]
        return value

    @field_validator("sink_headers", mode="before")
    @classmethod
    def _headers_json(cls, value: Any) -> Any:
        return _parse_json(value) or {}

    @field_validator("sink_tls", mode="before")
    @classmethod
    def _tls_json(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None  # set but empty, as templates often leave it: no TLS settings
        return _parse_json(value)

    @field_validator("sink_url", "dead_letter_url")
    @classmethod
    def _ws_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_ws_url(value)

    @field_validator("log_level", "log_format", "payload", "on_invalid", "sink_framing",
                     "sink_confirm", "spool_when_full", "spool_sync", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("spool_dir")
    @classmethod
    def _spool_dir(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("transform")
    @classmethod
    def _transform_path(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        module, _, function = value.strip().partition(":")
        if not module or not function:
            raise ValueError("must be package.module:function")
        return value.strip()

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        problems = []
        if not self.feeds:
            problems.append("INGEST_SOURCES or INGEST_SOURCE_URLS: at least one feed is required")
        seen: set[str] = set()
        for feed in self.feeds:
            if feed.name in seen:
                problems.append(f"INGEST_SOURCES: duplicate feed name {feed.name!r}")
            seen.add(feed.name)
        if self.on_invalid == "dead-letter" and not self.dead_letter_url:
            problems.append("INGEST_DEAD_LETTER_URL: required when INGEST_ON_INVALID=dead-letter")
        if self.reconnect_min_ms > self.reconnect_max_ms:
            problems.append("INGEST_RECONNECT_MIN_MS: must not exceed INGEST_RECONNECT_MAX_MS")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def feeds(self) -> list[FeedSettings]:
        """Every feed, from INGEST_SOURCES then INGEST_SOURCE_URLS."""
        return [*self.sources, *self.source_urls]

    def options(self) -> Options:
        """The typed options each part of the service takes; secrets revealed only here."""
        backoff = Backoff(self.reconnect_min_ms / 1000, self.reconnect_max_ms / 1000)

        def sink(name: SinkName, url: str, headers: dict[str, str]) -> SinkOptions:
            return SinkOptions(
                name=name, url=url, headers=headers, framing=self.sink_framing,
                confirm=self.sink_confirm, max_message_bytes=self.sink_max_message_bytes,
                reconnect=backoff, shutdown_timeout_s=self.shutdown_timeout_ms / 1000,
                tls=self.sink_tls if name == "sink" else None)

        return Options(
            source=SourceOptions(
                feeds=tuple(self.feeds), payload=self.payload, batch_size=self.batch_size,
                batch_timeout=timedelta(milliseconds=self.batch_timeout_ms),
                linger=timedelta(milliseconds=self.batch_linger_ms), reconnect=backoff),
            envelope=EnvelopeOptions(
                payload=self.payload, on_invalid=self.on_invalid,
                max_message_bytes={feed.name: feed.max_message_bytes for feed in self.feeds},
                # a batch frame adds its brackets around a single envelope
                max_envelope_bytes=self.sink_max_message_bytes - (
                    2 if self.sink_framing == "batch" else 0)),
            sink=sink("sink", self.sink_url, reveal(self.sink_headers)),
            dead_letter=(sink("dead_letter", self.dead_letter_url, {})
                         if self.on_invalid == "dead-letter" and self.dead_letter_url else None),
            spool=(SpoolOptions(
                directory=self.spool_dir, max_bytes=self.spool_max_bytes,
                when_full=self.spool_when_full, synchronous=self.spool_sync)
                if self.spool_dir else None),
        )

    def masked(self) -> dict[str, Any]:
        """The effective configuration, secrets masked, as --check-config prints it."""
        data = self.model_dump(mode="json", exclude={"sources", "source_urls"})
        data["feeds"] = [feed.model_dump(mode="json") for feed in self.feeds]
        for item in (data, *data["feeds"]):
            for key in ("url", "sink_url", "dead_letter_url", "proxy"):
                if item.get(key):
                    item[key] = mask_url(item[key])
        return data


SinkName = Literal["sink", "dead_letter"]


@dataclass(frozen=True)
class SourceOptions:
    """What the source needs: the feeds and how to poll and reconnect them."""

    feeds: tuple[FeedSettings, ...]
    payload: PayloadMode
    batch_size: int
    batch_timeout: timedelta
    linger: timedelta
    reconnect: Backoff
    buffer_bytes: int = 4 * 1024 * 1024
    """Bytes a feed's frames may take while they wait for a poll (at least 2 x its
    max_message_bytes): past it the feed is not read (backpressure, not memory)."""


@dataclass(frozen=True)
class EnvelopeOptions:
    """What the envelope step needs (the transform hook is loaded apart: it is code)."""

    payload: PayloadMode
    on_invalid: InvalidPolicy
    max_message_bytes: dict[str, int]
    max_envelope_bytes: int = 1_048_576


@dataclass(frozen=True)
class SinkOptions:
    """One outbound connection per worker: the sink, or the dead-letter socket."""

    name: SinkName
    url: str
    headers: dict[str, str]
    framing: Framing
    confirm: Confirm
    max_message_bytes: int
    reconnect: Backoff
    shutdown_timeout_s: float
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    tls: TlsSettings | None = None  # INGEST_SINK_TLS (the dead-letter socket has none)


@dataclass(frozen=True)
class SpoolOptions:
    """The on-disk spool between the dataflow and the sink (INGEST_SPOOL_*)."""

    directory: str
    max_bytes: int
    when_full: WhenFull
    synchronous: SpoolSync = "normal"

    def for_process(self, process_id: int | None) -> SpoolOptions:
        """Each process of a cluster spools under `<directory>/<process id>` (a single process
        is process 0), so growing a single process into a cluster keeps its spool."""
        return replace(self, directory=os.path.join(self.directory, str(process_id or 0)))


@dataclass(frozen=True)
class Options:
    """Everything `build_flow` needs, typed."""

    source: SourceOptions
    envelope: EnvelopeOptions
    sink: SinkOptions
    dead_letter: SinkOptions | None
    spool: SpoolOptions | None = None


# A valid value for each required variable, so a second pass can run the consistency checks
# while that variable has a problem of its own.
STAND_INS: dict[str, Any] = {"sink_url": "ws://stand-in.invalid/"}


def variables() -> list[str]:
    """Every INGEST_* variable, from the Settings model."""
    return [ENV_PREFIX + name.upper() for name in Settings.model_fields]


def _unknown(environ: Mapping[str, str], env_file: str | Path | None) -> list[str]:
    lines = unknown_variables(environ, ENV_PREFIX, variables())
    if env_file is not None and Path(env_file).is_file():
        found = dotenv_values(env_file)
        lines += unknown_variables(found, ENV_PREFIX, variables(), where=f" (in {env_file})")
    return lines


def _despite(error: ValidationError, build: Callable[..., Settings]) -> list[str]:
    """The consistency checks' problems, which pydantic skips while any field has one: run
    again with a stand-in for each field in error, keeping what does not name those fields."""
    failed = {str(item["loc"][0]) for item in error.errors() if item["loc"]}
    if not failed:  # the consistency checks ran: their problems are in `error`
        return []
    stand_ins = {}
    for name in failed:
        field = Settings.model_fields[name]
        if field.is_required() and name not in STAND_INS:
            return []
        stand_ins[name] = (STAND_INS[name] if field.is_required()
                           else field.get_default(call_default_factory=True))
    try:
        build(**stand_ins)
    except ValidationError as again:
        named = [ENV_PREFIX + name.upper() for name in failed]
        return [line for line in problems(again, Settings, ENV_PREFIX)
                if not any(names_variable(line, variable) for variable in named)]
    return []


def load_settings(_env_file: str | Path | None = ".env", environ: Mapping[str, str] | None = None,
                  **overrides: Any) -> Settings:
    """Settings from the environment and the env file, or ConfigError listing every problem:
    unknown INGEST_* variables, bad values, and the consistency checks, in one pass."""
    lines = _unknown(os.environ if environ is None else environ, _env_file)

    def build(**stand_ins: Any) -> Settings:
        return Settings(_env_file=_env_file, **{**overrides, **stand_ins})  # type: ignore[call-arg]

    try:
        settings = build()
    except ValidationError as error:
        raise ConfigError(lines + problems(error, Settings, ENV_PREFIX)
                          + _despite(error, build)) from None
    if lines:
        raise ConfigError(lines)
    return settings
