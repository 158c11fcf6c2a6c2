"""An event loop run by the thread that owns it whenever it needs it, and by a standby thread
whenever it does not.

A Bytewax worker thread runs its partitions' loops itself: the source's while it polls
(`batch_async`), the sink's while it writes a batch, so a batch goes from feed to sink with no
hand-over between threads (handing each batch to a sink thread and back cost more CPU than the
rest of a poll). But a loop must also run while its owner is elsewhere: a sink connection
answers the server's pings and notices closes between batches, and feeds keep answering their
venues' pings while the worker waits on a sink. So once the owner has left the loop alone for
`STANDBY_AFTER_S`, a standby thread runs it; the owner takes it back on its next poll or write
(the standby stops after its current turn, and does not take the loop again until the owner
has had it).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Literal, TypeVar

STANDBY_AFTER_S = 0.05
"""How long the loop may go unrun before the standby thread runs it."""

T = TypeVar("T")


class StandbyLoop:
    """An event loop for its owner to run (`with` it, or `run`), and for a standby thread to
    run while the owner does not. `close` once done."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._state = threading.Condition()
        self._holder: Literal["owner", "standby"] | None = None
        self._owner_waits = False
        self._released_at = time.monotonic()
        self._closed = False
        self._standby = threading.Thread(target=self._stand_by, name=f"{name}-standby",
                                         daemon=True)
        self._standby.start()

    def __enter__(self) -> asyncio.AbstractEventLoop:
        """Take the loop for the calling thread to run (stopping the standby if it runs it)."""
        with self._state:
            self._owner_waits = True  # so the standby, once stopped, does not take it again
            if self._holder == "standby":
                self.loop.call_soon_threadsafe(self.loop.stop)  # after its current turn
            while self._holder is not None:
                self._state.wait()
            self._holder, self._owner_waits = "owner", False
        return self.loop

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        with self._state:
            # No notify: the standby looks again within STANDBY_AFTER_S (waking it on every
            # poll would cost a thread switch per poll).
            self._holder = None
            self._released_at = time.monotonic()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` to completion in the loop, on the calling thread."""
        with self as loop:
            return loop.run_until_complete(coroutine)

    def _stand_by(self) -> None:
        while True:
            with self._state:
                while not self._closed:
                    if self._holder is not None or self._owner_waits:
                        self._state.wait(STANDBY_AFTER_S)
                        continue
                    idle_for = time.monotonic() - self._released_at
                    if idle_for >= STANDBY_AFTER_S:
                        break
                    self._state.wait(STANDBY_AFTER_S - idle_for)
                if self._closed:
                    return
                self._holder = "standby"
            try:
                self.loop.run_forever()
            finally:
                with self._state:
                    self._holder = None
                    self._state.notify_all()

    def close(self) -> None:
        """Cancel every task left in the loop, end the standby thread, close the loop."""
        with self as loop:
            loop.run_until_complete(_cancel_all())
            loop.run_until_complete(loop.shutdown_asyncgens())
            with self._state:
                self._closed = True
                self._state.notify_all()
        self._standby.join()
        self.loop.close()


async def _cancel_all() -> None:
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
