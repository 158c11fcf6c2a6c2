"""Where a feed's `seq` starts and how far it may go: numbers that survive a restart.

Without a spool a process numbers every feed from 1 (`SeqBlocks`). With one (`SpooledSeqBlocks`),
a feed starts after the highest number an earlier run reserved, and reserves numbers a block at a
time, durably, before handing them out: a restart (SIGKILL included) never reuses a number, so
`source` + `seq` stay unique downstream. The price is a jump of at most one block in `seq` after
a restart (the unused rest of the last block), and one small commit per block.

Called from the feed's event loop (`FeedReader`): once at start, then once per block.
"""

from __future__ import annotations

import sys

from app.sink.spool import Spool

SEQ_BLOCK = 10_000
"""Numbers reserved per commit."""


class SeqBlocks:
    """No store: numbers from 1, nothing to reserve."""

    def resume(self, source: str) -> int:
        """The last number an earlier run may have used: the feed goes on after it."""
        return 0

    def reserve(self, source: str, seq: int) -> int:
        """Make `seq` (and those after it) usable; return the highest number now usable."""
        return sys.maxsize


class SpooledSeqBlocks(SeqBlocks):
    """Numbers reserved in the spool's `seq` marks, `block` at a time."""

    def __init__(self, spool: Spool, block: int = SEQ_BLOCK) -> None:
        self._spool = spool
        self._block = block

    def resume(self, source: str) -> int:
        return self._spool.seq_floor(source)

    def reserve(self, source: str, seq: int) -> int:
        # SpoolError (a full disk) escapes: the feed's session ends and reconnects rather than
        # hand out a number a restart could hand out again.
        upto = seq + self._block - 1
        self._spool.reserve_seq(source, upto)
        return upto
