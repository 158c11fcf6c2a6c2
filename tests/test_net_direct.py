"""DirectConnection's own frame splitting, byte for byte against what websockets makes of the
same stream: data frames taken straight off the stream, every other frame left to websockets.

The connection is real (opened against a silent websockets server, so its replies go to a real
socket); the stream is fed to its data_received in chunks of every size, as TCP may cut it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import websockets.frames
from websockets.asyncio.server import ServerConnection, serve
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import CloseCode
from websockets.protocol import Protocol, Side, State

from app.net import DirectConnection, Endpoint, open_connection
from support.wait import until

MAX_SIZE = 128 * 1024
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, 1.3


def _frame(head: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """A frame as a server writes it (RFC 6455, 5.2), or a masked one when `mask` is given."""
    second = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", head, second | n)
    elif n < 65536:
        header = struct.pack("!BBH", head, second | 126, n)
    else:
        header = struct.pack("!BBQ", head, second | 127, n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return header + mask + payload
    return header + payload


def _server_side(client: Protocol) -> Protocol:
    """A server-side protocol whose compressor matches the client's decompressor."""
    server = Protocol(Side.SERVER, max_size=None)
    server.state = State.OPEN
    if client.extensions:
        (deflate,) = client.extensions
        assert isinstance(deflate, PerMessageDeflate)
        server.extensions = [PerMessageDeflate(
            deflate.local_no_context_takeover, deflate.remote_no_context_takeover,
            deflate.local_max_window_bits, deflate.remote_max_window_bits)]
    return server


class _Parses:
    """How many frames from the server websockets' own parser has parsed: so far, and when
    `_run` stopped feeding (before the closing handshake)."""

    count = 0
    when_fed = 0


@pytest.fixture
def client_parses(monkeypatch: pytest.MonkeyPatch) -> _Parses:
    parses = _Parses()
    real_parse = websockets.frames.Frame.parse

    def counting_parse(*args: Any, **kwargs: Any) -> Any:
        parses.count += not kwargs["mask"]  # a server's frame, parsed by the client
        return (yield from real_parse(*args, **kwargs))

    monkeypatch.setattr(websockets.frames.Frame, "parse", counting_parse)
    return parses


def _run(stream_of: Callable[[Protocol], bytes], chunk: int, compression: bool = True,
         parses: _Parses | None = None) -> tuple[list[bytes], int | None]:
    """Messages delivered and the close code sent (None: still open), for the stream
    `stream_of(server side)` fed to a real connection in chunks of `chunk` bytes."""
    async def run() -> tuple[list[bytes], int | None]:
        async def silent(ws: ServerConnection) -> None:
            await ws.wait_closed()

        async with serve(silent, "127.0.0.1", 0, close_timeout=0.2) as server:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            endpoint = Endpoint(url, max_size=MAX_SIZE, compression=compression)
            async with open_connection(endpoint, DirectConnection) as ws:
                got: list[bytes] = []
                ws.deliver_to(got.append)
                stream = stream_of(_server_side(ws.protocol))
                for start in range(0, len(stream), chunk):
                    ws.data_received(stream[start:start + chunk])
                if parses is not None:
                    parses.when_fed = parses.count
                sent = ws.protocol.close_sent
                return got, sent.code if sent else None

    return asyncio.run(run())


def _mixed(server: Protocol) -> bytes:
    """Compressed and uncompressed data frames of every header size, a ping, a fragmented
    message and an empty one, as a venue might send them."""
    server.send_text(b'{"a":1}')
    server.send_binary(b"\x00\x01" * 100)
    server.send_ping(b"are you there")
    server.send_text(b'{"b":' + b"2" * 70_000 + b"}", fin=True)
    server.send_text(b'{"frag', fin=False)
    server.send_continuation(b'mented":3}', fin=True)
    server.send_text(b"")
    compressed = b"".join(server.data_to_send())
    return (compressed + _frame(0x81, b'{"plain":4}') + _frame(0x82, b"\xff" * 300)
            + _frame(0x81, b"x" * 70_000))


MIXED_MESSAGES = [b'{"a":1}', b"\x00\x01" * 100, b'{"b":' + b"2" * 70_000 + b"}",
                  b'{"fragmented":3}', b"", b'{"plain":4}', b"\xff" * 300, b"x" * 70_000]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 100, 1 << 20])
def test_a_stream_cut_anywhere_arrives_whole_and_in_order(client_parses: _Parses, chunk: int):
    got, code = _run(_mixed, chunk, parses=client_parses)
    assert code is None
    assert got == MIXED_MESSAGES
    # Only the ping and the two fragments went through websockets' parser.
    assert client_parses.when_fed == 3


def _compressed(server: Protocol, payload: bytes) -> bytes:
    server.send_text(payload)
    return b"".join(server.data_to_send())


def _raw_deflate(payload: bytes) -> bytes:
    encoder = zlib.compressobj(wbits=-12)
    return (encoder.compress(payload) + encoder.flush(zlib.Z_SYNC_FLUSH))[:-4]


@pytest.mark.parametrize(("bad", "code"), [
    # Longer than max_size by its header alone: refused before it arrives.
    (lambda s: bytes([0x82, 127]) + struct.pack("!Q", MAX_SIZE + 1), CloseCode.MESSAGE_TOO_BIG),
    # Small on the wire, over max_size once inflated.
    (lambda s: _compressed(s, b"0" * (MAX_SIZE + 1)), CloseCode.MESSAGE_TOO_BIG),
    # Not deflate data.
    (lambda s: _frame(0xC1, b"\xff\xfe\xfd not deflate"), CloseCode.PROTOCOL_ERROR),
    # A server must not mask its frames.
    (lambda s: _frame(0x81, b'{"masked":1}', mask=b"\x01\x02\x03\x04"), CloseCode.PROTOCOL_ERROR),
    # Reserved opcode; reserved bit 2 set.
    (lambda s: _frame(0x83, b"?"), CloseCode.PROTOCOL_ERROR),
    (lambda s: _frame(0xA1, b"?"), CloseCode.PROTOCOL_ERROR),
    # A new message while one is in fragments.
    (lambda s: _frame(0x01, b'{"frag') + _frame(0x81, b"{}"), CloseCode.PROTOCOL_ERROR),
])
@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
def test_a_frame_websockets_refuses_closes_the_connection_with_its_code(
        bad: Callable[[Protocol], bytes], code: int, chunk: int):
    def stream(server: Protocol) -> bytes:
        before = _compressed(server, b'{"before":1}')
        return before + bad(server) + _frame(0x81, b'{"after":1}')

    got, sent = _run(stream, chunk)
    assert got == [b'{"before":1}']
    assert sent == code


def test_without_compression_a_compressed_frame_is_refused():
    got, sent = _run(lambda s: _frame(0xC1, _raw_deflate(b'{"a":1}')), 3, compression=False)
    assert got == []
    assert sent == CloseCode.PROTOCOL_ERROR


def test_frames_in_the_handshakes_packet_are_split_from_the_first(client_parses: _Parses):
    # A feed that floods from the start: its first frames share a write with the handshake's
    # response, the last one cut in two. websockets reads the response; the frames are ours.
    frames = b"".join(_frame(0x81, b'{"n":%d}' % i) for i in range(50))
    async def handshake_then_flood(reader: asyncio.StreamReader,
                                   writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                     + frames[:-3])
        await writer.drain()
        writer.write(frames[-3:])
        await reader.read()  # until the client closes

    async def run() -> list[bytes]:
        server = await asyncio.start_server(handshake_then_flood, "127.0.0.1", 0)
        async with server:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            endpoint = Endpoint(url, compression=False)
            async with open_connection(endpoint, DirectConnection) as ws:
                got: list[bytes] = []
                ws.deliver_to(got.append)
                await until(lambda: len(got) == 50, 5, "50 messages")
                assert client_parses.count == 0
                ws.transport.abort()
                return got

    assert asyncio.run(run()) == [b'{"n":%d}' % i for i in range(50)]
