"""A test client for the venue-set-B self-tests that behaves as ws-ingest is configured to.

It reads a feed object (from config/venues/<venue>.env, with the simulation's overrides), sends
its `subscribe` messages, answers `replies`, sends `heartbeat.send` every `heartbeat.interval`,
and sorts every frame received into control (matching `heartbeat.expect`, `replies`, `control`,
`subscribe_ack`) or data, with the contract's match rules. So a self-test checks the env file
against the simulation, not only the simulation.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

CONFIG = Path(__file__).resolve().parents[2] / "config" / "venues"
BASE_KEYS = {"name", "url", "headers", "subscribe", "subprotocols", "ping_interval",
             "ping_timeout", "open_timeout", "idle_timeout", "max_message_bytes"}


def load_feed(venue: str) -> dict[str, Any]:
    """The first feed of INGEST_SOURCES in config/venues/<venue>.env."""
    sources = dotenv_values(CONFIG / f"{venue}.env")["INGEST_SOURCES"]
    assert sources is not None
    feeds: list[dict[str, Any]] = json.loads(sources)
    return feeds[0]


def matches(frame: Any, pattern: Any) -> bool:
    """The contract's match: equal, "*" for anything, objects compared key by key."""
    if pattern == "*":
        return True
    if isinstance(pattern, dict):
        return isinstance(frame, dict) and all(
            key in frame and matches(frame[key], value) for key, value in pattern.items())
    return bool(frame == pattern)


def _pointer(pointer: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]


def reply_for(rule: dict[str, Any], frame: Any) -> Any:
    """`rule["send"]` with each `copy` target set to the value at its source pointer in frame."""
    message = copy.deepcopy(rule["send"])
    for target, source in rule.get("copy", {}).items():
        value = frame
        for part in _pointer(source):
            value = value[int(part)] if isinstance(value, list) else value[part]
        *parents, last = _pointer(target)
        node = message
        for part in parents:
            node = node[part]
        node[last] = value
    return message


@dataclass
class Session:
    data: list[Any] = field(default_factory=list)
    acks: list[Any] = field(default_factory=list)
    errors: list[Any] = field(default_factory=list)
    control: list[Any] = field(default_factory=list)
    heartbeat_replies: int = 0
    replies_sent: int = 0
    close_code: int | None = None
    close_reason: str = ""


def _text(message: Any) -> str:
    return message if isinstance(message, str) else json.dumps(message, separators=(",", ":"))


async def follow(feed: dict[str, Any], done: Callable[[Session], bool], timeout: float,
                 obey: bool = True) -> Session:
    """Connect, subscribe and read until `done(session)`, the connection closes, or timeout.

    `obey=False`: neither answer `replies` nor send `heartbeat` (a client breaking the rule).
    """
    session = Session()
    async with connect(feed["url"], ping_interval=None) as ws:
        for message in feed.get("subscribe", []):
            await ws.send(_text(message))
        beats = (asyncio.get_running_loop().create_task(_heartbeats(ws, feed["heartbeat"]))
                 if obey and "heartbeat" in feed else None)
        try:
            await asyncio.wait_for(_read(ws, feed, session, done, obey), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            if beats is not None:
                beats.cancel()
        if ws.close_code is not None:
            session.close_code, session.close_reason = ws.close_code, ws.close_reason or ""
    return session


async def _heartbeats(ws: ClientConnection, heartbeat: dict[str, Any]) -> None:
    try:
        while True:
            await asyncio.sleep(heartbeat["interval"])
            await ws.send(_text(heartbeat["send"]))
    except ConnectionClosed:
        pass


async def _read(ws: ClientConnection, feed: dict[str, Any], session: Session,
                done: Callable[[Session], bool], obey: bool) -> None:
    ack = feed.get("subscribe_ack", {})
    while not done(session):
        try:
            raw = await ws.recv()
        except ConnectionClosed:
            return
        frame = json.loads(raw)
        # the most specific rules first: Deribit's public/test answer also has a "result"
        if "heartbeat" in feed and matches(frame, feed["heartbeat"]["expect"]):
            session.heartbeat_replies += 1
        elif rule := next((r for r in feed.get("replies", []) if matches(frame, r["when"])),
                          None):
            session.control.append(frame)
            if obey:
                await ws.send(_text(reply_for(rule, frame)))
                session.replies_sent += 1
        elif any(matches(frame, m) for m in feed.get("control", [])):
            session.control.append(frame)
        elif "error" in ack and matches(frame, ack["error"]):
            session.errors.append(frame)
        elif "expect" in ack and matches(frame, ack["expect"]):
            session.acks.append(frame)
        else:
            session.data.append(frame)
