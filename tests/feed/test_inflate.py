import gzip
import time
import tracemalloc
import zlib

import pytest

from app.errors import IngestError
from app.feed.inflate import STEP, InflateError, TooLarge, detect, inflate

DATA = b'{"ch":"market.btcusdt.depth.step0","ts":1630000000000,"tick":{"bids":[[1.5,2]]}}' * 200
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03"


def raw_deflate(data, flush=zlib.Z_FINISH):
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush(flush)


COMPRESSED = {"gzip": gzip.compress(DATA), "zlib": zlib.compress(DATA),
              "deflate": raw_deflate(DATA)}


@pytest.mark.parametrize("method", ["gzip", "zlib", "deflate"])
def test_each_method_inflates_exactly_to_the_limit(method):
    assert inflate(COMPRESSED[method], method, len(DATA)) == DATA
    with pytest.raises(TooLarge) as caught:
        inflate(COMPRESSED[method], method, len(DATA) - 1)
    assert caught.value.limit == len(DATA) - 1 and str(len(DATA) - 1) in str(caught.value)


def test_auto_knows_gzip_and_zlib_by_their_headers_and_passes_the_rest():
    assert inflate(COMPRESSED["gzip"], "auto", 1 << 20) == DATA
    assert inflate(COMPRESSED["zlib"], "auto", 1 << 20) == DATA
    assert inflate(zlib.compress(DATA, 1), "auto", 1 << 20) == DATA  # header 78 01
    for plain in (b'{"a":1}', b"[1]", b"x", b"", DATA):
        assert inflate(plain, "auto", 10) is plain
    assert inflate(b"anything", "none", 1) == b"anything"
    assert [detect(COMPRESSED["gzip"]), detect(COMPRESSED["zlib"]), detect(b"{}"),
            detect(b"\x78"), detect(COMPRESSED["deflate"])] == ["gzip", "zlib", "none", "none",
                                                                "none"]


def test_output_larger_than_one_step_is_whole():
    big = bytes(range(256)) * (5 * STEP // 256 + 7)
    for method, packed in [("gzip", gzip.compress(big)), ("zlib", zlib.compress(big)),
                           ("deflate", raw_deflate(big))]:
        assert inflate(packed, method, len(big)) == big


@pytest.mark.parametrize(("method", "data", "problem"), [
    ("gzip", b"\x1f\x8b\x08garbage-garbage", "not valid gzip data"),
    ("zlib", b"\x78\x9cnot deflate at all", "not valid zlib data"),
    ("auto", b"\x78\x9cnot deflate at all", "not valid zlib data"),
    ("gzip", b'{"plain":"json"}', "not valid gzip data"),
    ("gzip", COMPRESSED["gzip"][:-6], "truncated gzip data"),
    ("zlib", COMPRESSED["zlib"][:-2], "truncated zlib data"),
    ("gzip", COMPRESSED["gzip"][:-4] + b"\0\0\0\0", "not valid gzip data"),  # wrong size field
    ("zlib", COMPRESSED["zlib"][:-1] + b"\0", "not valid zlib data"),  # wrong checksum
])
def test_corrupt_data_is_an_inflate_error(method, data, problem):
    with pytest.raises(InflateError, match=problem) as caught:
        inflate(data, method, 1 << 20)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, IngestError)


def test_raw_deflate_may_end_at_a_flush_without_its_final_block():
    assert inflate(raw_deflate(DATA, zlib.Z_SYNC_FLUSH), "deflate", len(DATA)) == DATA


def test_bytes_after_the_stream_are_ignored():
    assert inflate(COMPRESSED["zlib"] + b"trailing", "zlib", len(DATA)) == DATA


def test_too_large_is_an_ingest_error_but_not_a_decode_error():
    assert issubclass(TooLarge, IngestError) and not issubclass(TooLarge, InflateError)


def bomb(megabytes):
    """About 1 KiB per MiB of zeros: independent blocks, repeated (never inflated in full, so no
    trailer is needed)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = packer.compress(bytes(1 << 20)) + packer.flush(zlib.Z_FULL_FLUSH)
    return block * megabytes


@pytest.mark.parametrize(("method", "header"), [("deflate", b""), ("zlib", b"\x78\xda"),
                                                ("gzip", GZIP_HEADER), ("auto", GZIP_HEADER)])
def test_a_one_megabyte_frame_that_inflates_to_a_gigabyte_fails_fast_and_small(method, header):
    limit = 1 << 20
    data = header + bomb(1024)
    assert len(data) < 1.1 * limit
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(TooLarge):
            inflate(data, method, limit)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # limit + one step + zlib's own state and window (about 40 KiB).
    assert peak < limit + STEP + 48 * 1024, peak
    assert elapsed < 1.0  # inflating the whole gigabyte takes seconds


def test_an_unknown_method_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown compression method 'brotli'") as caught:
        inflate(b"x", "brotli", 10)
    assert not isinstance(caught.value, IngestError)


def test_a_zero_limit_takes_only_empty_frames():
    assert inflate(gzip.compress(b""), "gzip", 0) == b""
    with pytest.raises(TooLarge):
        inflate(gzip.compress(b"x"), "gzip", 0)
