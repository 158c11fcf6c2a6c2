"""A feed's `connect_hook`: loading it at start, and asking it before every connection attempt
where and how to connect (fresh tokens, listen keys, signed logins).

The hook is `package.module:function`, called as `function(name, settings)`: the feed's name
and a fresh dict of its settings (header values in clear, so it can sign with them). It returns
None (connect as configured) or a dict overriding any of `url`, `headers` (merged over the
configured ones, the hook's value winning per name) and `subscribe` (replacing the list). A sync
hook runs in a thread of its own (it may block on I/O without stalling the other feeds of its
partition); an async one runs in the partition's loop. Either must return within the feed's
`open_timeout`. Whatever goes wrong in it is a `ConnectHookError`: a failed attempt, reason
`other`, whose message never holds a secret.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

from app.errors import ConfigError, ConnectHookError
from app.feed.control import compile_message
from app.net import Endpoint
from app.settings import FeedSettings, reveal
from app.transform import load_callable

ConnectHook = Callable[[str, dict[str, Any]], Any]
"""`(name, settings) -> dict | None`, or a coroutine function returning that."""
OVERRIDES = ("headers", "subscribe", "url")
_MESSAGE_CHARS = 200


@dataclass(frozen=True)
class Attempt:
    """Where and how to open one connection, and what to send once it is open."""

    endpoint: Endpoint
    subscribe: list[str]


def load_connect_hook(path: str, where: str) -> ConnectHook:
    """Import `package.module:function`; any failure is a ConfigError naming `where`."""
    return cast(ConnectHook, load_callable(path, where))


def load_connect_hooks(feeds: Sequence[FeedSettings]) -> None:
    """Load every feed's hook once, at start: a ConfigError lists every one that fails.

    `feeds` as `Settings.feeds` orders them (INGEST_SOURCES first, so index i is item i).
    """
    problems: list[str] = []
    for index, feed in enumerate(feeds):
        if feed.connect_hook:
            try:
                load_connect_hook(feed.connect_hook, f"INGEST_SOURCES[{index}].connect_hook")
            except ConfigError as error:
                problems.extend(error.problems)
    if problems:
        raise ConfigError(problems)


class Connector:
    """How one feed connects: the configured endpoint, or what its hook says for this attempt.

    Runs in the feed's partition loop; `resolve()` before every attempt.
    """

    def __init__(self, feed: FeedSettings, endpoint: Endpoint) -> None:
        self._feed = feed
        self._endpoint = endpoint
        self._subscribe = feed.subscribe_messages()
        self._hook = (load_connect_hook(feed.connect_hook, f"{feed.name}: connect_hook")
                      if feed.connect_hook else None)
        # Masked in anything the hook's exceptions say: they may quote the headers we gave it.
        self._secrets = [value for value in reveal(feed.headers).values() if len(value) >= 4]

    async def resolve(self) -> Attempt:
        """The endpoint and subscribe messages for this attempt; ConnectHookError if the hook
        raises, hangs past `open_timeout` or returns something unusable."""
        if self._hook is None:
            return Attempt(self._endpoint, self._subscribe)
        result = await self._call(self._hook)
        return apply_overrides(self._endpoint, self._subscribe, result)

    async def _call(self, hook: ConnectHook) -> Any:
        settings = self._feed.model_dump(mode="json")
        settings["headers"] = reveal(self._feed.headers)
        timeout = self._feed.open_timeout
        try:
            if inspect.iscoroutinefunction(hook):
                return await asyncio.wait_for(hook(self._feed.name, settings), timeout)
            result = await asyncio.wait_for(
                asyncio.to_thread(hook, self._feed.name, settings), timeout)
            if inspect.isawaitable(result):  # e.g. a functools.partial of a coroutine function
                result = await asyncio.wait_for(result, timeout)
            return result
        except asyncio.TimeoutError:
            raise ConnectHookError(
                f"connect_hook did not return within open_timeout ({timeout:g} s)") from None
        except Exception as exc:
            raise ConnectHookError(
                f"connect_hook raised {type(exc).__name__}: {self._masked(str(exc))}") from None

    def _masked(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:_MESSAGE_CHARS]


def apply_overrides(endpoint: Endpoint, subscribe: list[str], result: Any) -> Attempt:
    """The attempt a hook's result asks for (pure). Error messages name keys, never values."""
    if result is None:
        return Attempt(endpoint, subscribe)
    if not isinstance(result, dict):
        raise ConnectHookError(
            f"connect_hook returned {type(result).__name__}, expected a dict or None")
    unknown = sorted(str(key) for key in result if key not in OVERRIDES)
    if unknown:
        raise ConnectHookError(f"connect_hook returned unknown keys {unknown}; "
                               f"it may override {', '.join(OVERRIDES)}")
    changes: dict[str, Any] = {}
    if "url" in result:
        url = result["url"]
        if not (isinstance(url, str) and url.startswith(("ws://", "wss://"))
                and urlsplit(url).hostname):
            raise ConnectHookError("connect_hook returned a url that is not ws:// or wss:// "
                                   "with a host")
        changes["url"] = url
    if "headers" in result:
        headers = result["headers"]
        if not (isinstance(headers, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items())):
            raise ConnectHookError("connect_hook returned headers that are not a dict of "
                                   "strings to strings")
        changes["headers"] = {**endpoint.headers, **headers}
    if "subscribe" in result:
        messages = result["subscribe"]
        if not isinstance(messages, list):
            raise ConnectHookError("connect_hook returned a subscribe that is not a list")
        try:
            subscribe = [compile_message(message) for message in messages]
        except ValueError as exc:
            raise ConnectHookError(f"connect_hook returned a bad subscribe message ({exc})"
                                   ) from None
    return Attempt(dataclasses.replace(endpoint, **changes), subscribe)
