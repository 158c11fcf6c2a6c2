"""app/__main__.py in process: what the main thread does while the dataflow runs.

The rest of the entry point (arguments, exit codes, signals) is tested end to end, through
`python -m app` (tests/test_cli.py, tests/test_service.py, tests/test_shutdown.py).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator

import pytest

from app.__main__ import Cluster, _wait
from app.status import ConnectionStatus
from support.wait import holds_for, wait_until


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def _ready(status: ConnectionStatus) -> None:
    health = status.feed("f", stale_after=60)
    health.connected = True
    health.seen()
    status.set_sink("sink-0", True)


def _dataflow(until: Callable[[], object]) -> threading.Thread:
    """Stands in for Bytewax's runner thread: it runs until `until()` returns."""
    thread = threading.Thread(target=until, daemon=True)
    thread.start()
    return thread


def test_the_heap_is_frozen_once_the_service_is_ready(unfrozen: None):
    # With a thousand feeds' connections on the heap, full collections took up to 150 ms
    # (the tail of the 1 000 x 10 msg/s latency) until the heap was frozen (README).
    status = ConnectionStatus()
    _ready(status)
    _wait(_dataflow(lambda: wait_until(lambda: gc.get_freeze_count() > 0, 10)),
          Cluster(workers=1), status)
    assert gc.get_freeze_count() > 0


def test_nothing_is_frozen_before_the_service_is_ready(unfrozen: None):
    status = ConnectionStatus()  # no feed and no sink yet: not ready
    held: list[bool] = []
    _wait(_dataflow(lambda: held.append(holds_for(lambda: gc.get_freeze_count() == 0, 0.5))),
          Cluster(workers=1), status)
    assert held == [True]
