from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from support.servers import Sink, WsServer
from support.service import Service


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink()
    yield server
    server.close()


@pytest.fixture
def servers() -> Iterator[Callable[..., WsServer]]:
    """Factory for feed servers, all closed at the end of the test."""
    started: list[WsServer] = []

    def start(handler: Any, **options: Any) -> WsServer:
        server = WsServer(handler, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def service() -> Iterator[Callable[..., Service]]:
    """Factory for `python -m app` processes, killed at the end of the test if still running."""
    started: list[Service] = []

    def start(env: dict[str, str], *args: str) -> Service:
        process = Service(env, args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()
