"""StandbyLoop: run by its owner's thread when the owner needs it, by the standby thread
otherwise, handed back and forth without loss or deadlock."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from app.standby_loop import STANDBY_AFTER_S, StandbyLoop


def in_thread(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_the_standby_runs_the_loop_while_the_owner_is_away():
    standby = StandbyLoop("away")
    fired = threading.Event()
    try:
        standby.loop.call_soon_threadsafe(
            standby.loop.call_later, 2 * STANDBY_AFTER_S, fired.set)
        assert fired.wait(10)  # a timer fired with the owner never running the loop
    finally:
        standby.close()
    assert standby.loop.is_closed()
    assert "away-standby" not in {thread.name for thread in threading.enumerate()}


def test_the_owner_takes_the_loop_back_every_time():
    # Away for less than, about, and more than STANDBY_AFTER_S, in turn: every `run` returns
    # on the owner's thread (the standby stops after its turn, and does not take the loop
    # again before the owner had it), and the loop's other tasks are served throughout.
    turns = 120
    finished: list[int] = []
    ticks = 0

    def owner() -> None:
        standby = StandbyLoop("turns")

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        async def thread_id() -> int:
            return threading.get_ident()

        standby.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(ticker()))
        away = threading.Event()
        for turn in range(turns):
            assert standby.run(thread_id()) == threading.get_ident()
            away.wait((0.0, STANDBY_AFTER_S * 0.9, STANDBY_AFTER_S, 2 * STANDBY_AFTER_S)[turn % 4])
            finished.append(turn)
        standby.close()

    thread = in_thread(owner)
    thread.join(60)
    assert not thread.is_alive(), f"stuck after {len(finished)} turns"
    assert finished == list(range(turns))
    assert ticks > turns  # the ticker ran all along, in whichever thread held the loop


def test_close_cancels_what_is_left():
    standby = StandbyLoop("left")
    with standby as loop:
        task = loop.create_task(asyncio.sleep(3600))
    standby.close()
    assert task.cancelled()
