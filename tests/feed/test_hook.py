"""app.feed.hook: loading a connect_hook, calling it (sync or async) and checking its result."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from app.errors import ConfigError, ConnectHookError
from app.feed.hook import Attempt, Connector, apply_overrides, load_connect_hook, load_connect_hooks
from app.net import Endpoint
from app.settings import FeedSettings

BASE = Endpoint("ws://127.0.0.1:1/ws", headers={"User-Agent": "ingest", "X-Key": "k-1234"})
SUBSCRIBE = ['{"op":"subscribe"}']
CALLS: list[tuple[str, dict[str, Any], str]] = []


def sync_hook(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    CALLS.append((name, settings, threading.current_thread().name))
    return {"url": "wss://127.0.0.1:2/fresh?token=t", "headers": {"X-Token": "t"}}


async def async_hook(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    CALLS.append((name, settings, threading.current_thread().name))
    return {"subscribe": [{"op": "login", "sig": "abc"}, "ping"]}


def none_hook(name: str, settings: dict[str, Any]) -> None:
    return None


async def slow_hook(name: str, settings: dict[str, Any]) -> None:
    await asyncio.sleep(10)


def blocking_slow_hook(name: str, settings: dict[str, Any]) -> None:
    threading.Event().wait(1.0)


NOT_CALLABLE = 42


def _feed(hook: str, **keys: Any) -> FeedSettings:
    return FeedSettings(**{"url": "ws://127.0.0.1:1/ws", "name": "f",
                           "connect_hook": f"tests.feed.test_hook:{hook}",
                           "headers": {"X-Key": "k-1234"}, "subscribe": [{"op": "subscribe"}],
                           **keys})


def _resolve(feed: FeedSettings) -> Attempt:
    return asyncio.run(Connector(feed, BASE).resolve())


def test_without_a_hook_the_configured_endpoint_and_subscribe_are_used():
    feed = FeedSettings(url="ws://127.0.0.1:1/ws", subscribe=[{"op": "subscribe"}])
    assert asyncio.run(Connector(feed, BASE).resolve()) == Attempt(BASE, SUBSCRIBE)


def test_a_sync_hook_runs_in_a_thread_with_the_name_and_settings_in_clear():
    CALLS.clear()
    attempt = _resolve(_feed("sync_hook"))
    assert attempt.endpoint.url == "wss://127.0.0.1:2/fresh?token=t"
    # Headers merge: the configured ones stay, the hook's win by name.
    assert attempt.endpoint.headers == {"User-Agent": "ingest", "X-Key": "k-1234", "X-Token": "t"}
    assert attempt.subscribe == SUBSCRIBE
    name, settings, thread = CALLS[0]
    assert name == "f" and thread != threading.main_thread().name
    assert settings["headers"] == {"X-Key": "k-1234"}
    assert settings["url"] == "ws://127.0.0.1:1/ws" and settings["open_timeout"] == 10


def test_an_async_hook_runs_in_the_loop_and_may_replace_subscribe():
    CALLS.clear()
    attempt = _resolve(_feed("async_hook"))
    assert attempt.endpoint == BASE
    assert attempt.subscribe == ['{"op":"login","sig":"abc"}', "ping"]
    assert CALLS[0][2] == threading.main_thread().name


def test_a_hook_returning_none_changes_nothing():
    assert _resolve(_feed("none_hook")) == Attempt(BASE, SUBSCRIBE)


@pytest.mark.parametrize("hook", ["slow_hook", "blocking_slow_hook"])
def test_a_hook_slower_than_open_timeout_fails_the_attempt(hook):
    with pytest.raises(ConnectHookError, match=r"did not return within open_timeout \(0.1 s\)"):
        _resolve(_feed(hook, open_timeout=0.1))


@pytest.mark.parametrize(("result", "message"), [
    ("wss://x", "returned str, expected a dict or None"),
    ({"url": "ws://h/", "token": "t", "Auth": 1}, r"unknown keys \['Auth', 'token'\]"),
    ({"url": "https://127.0.0.1/"}, "url that is not ws:// or wss://"),
    ({"url": "ws:///nohost"}, "url that is not ws:// or wss://"),
    ({"url": 5}, "url that is not ws:// or wss://"),
    ({"headers": {"X-Token": 5}}, "headers that are not a dict of strings to strings"),
    ({"headers": ["X-Token"]}, "headers that are not a dict"),
    ({"subscribe": "ping"}, "subscribe that is not a list"),
    ({"subscribe": [3]}, "bad subscribe message"),
])
def test_an_unusable_result_fails_the_attempt_without_quoting_values(result, message):
    with pytest.raises(ConnectHookError, match=message) as raised:
        apply_overrides(BASE, SUBSCRIBE, result)
    assert "k-1234" not in str(raised.value)


def test_an_exception_in_the_hook_is_reported_with_configured_secrets_masked():
    feed = FeedSettings(url="ws://127.0.0.1:1/ws", name="f",
                        headers={"X-Api-Key": "k-1234"}, connect_hook="tests.hooks:leaky")
    with pytest.raises(ConnectHookError) as raised:
        asyncio.run(Connector(feed, BASE).resolve())
    assert str(raised.value) == "connect_hook raised PermissionError: key *** was refused"


def test_loading_names_the_variable():
    assert load_connect_hook("tests.feed.test_hook:sync_hook", "where") is sync_hook
    with pytest.raises(ConfigError, match=r"^INGEST_SOURCES\[1\].connect_hook: cannot load "
                                          r"'tests.nowhere:f' \(ModuleNotFoundError"):
        load_connect_hooks([FeedSettings(url="ws://127.0.0.1:1/a"),
                            FeedSettings(url="ws://127.0.0.1:1/b",
                                         connect_hook="tests.nowhere:f")])
    with pytest.raises(ConfigError) as raised:
        load_connect_hooks([_feed("missing"), _feed("NOT_CALLABLE", name="h")])
    assert raised.value.problems == [
        "INGEST_SOURCES[0].connect_hook: cannot load 'tests.feed.test_hook:missing' "
        "(AttributeError(\"module 'tests.feed.test_hook' has no attribute 'missing'\"))",
        "INGEST_SOURCES[1].connect_hook: 'tests.feed.test_hook:NOT_CALLABLE' is not callable"]


def test_python_m_app_stops_with_status_2_when_a_hook_cannot_load(service):
    app = service({"INGEST_SOURCES": '[{"url": "ws://127.0.0.1:1/a", '
                                     '"connect_hook": "tests.nowhere:hook"}]',
                   "INGEST_SINK_URL": "ws://127.0.0.1:2/out"})
    assert app.process.wait(20) == 2
    assert app.stderr().startswith("INGEST_SOURCES[0].connect_hook: cannot load "
                                   "'tests.nowhere:hook'")
