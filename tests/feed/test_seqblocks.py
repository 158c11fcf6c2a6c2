"""seqblocks.py: where a feed's seq starts, and its blocks reserved in the spool."""

from __future__ import annotations

import sys

from app.feed.seqblocks import SeqBlocks, SpooledSeqBlocks
from app.sink.spool import Spool


def test_without_a_store_numbers_start_at_1_and_need_no_reservation():
    blocks = SeqBlocks()
    assert blocks.resume("f") == 0
    assert blocks.reserve("f", 1) == sys.maxsize


def test_blocks_are_reserved_durably_and_a_reopened_spool_goes_on_after_them(tmp_path):
    spool = Spool(tmp_path, 1_000_000)
    blocks = SpooledSeqBlocks(spool, block=100)
    assert blocks.resume("f") == 0
    assert blocks.reserve("f", 1) == 100
    assert blocks.reserve("f", 101) == 200
    assert blocks.resume("g") == 0  # per feed
    spool.close()

    again = Spool(tmp_path, 1_000_000)
    try:
        blocks = SpooledSeqBlocks(again, block=100)
        assert blocks.resume("f") == 200  # the next run numbers from 201: none used twice
        assert blocks.reserve("f", 201) == 300
    finally:
        again.close()
