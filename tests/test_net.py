"""net.py against real websockets servers: opening, batching, keepalive, closing, retrying.

Also the tripwire for the websockets internals BatchingConnection relies on: if a release
renames or reshapes them, these tests fail loudly rather than the sink misbehaving.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from typing import Any, TypeVar

import pytest
import structlog
import websockets
import websockets.frames
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection, serve
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import CloseCode
from websockets.protocol import Protocol, Side, State
from websockets.uri import parse_uri

from app.net import (
    BatchingConnection,
    DirectConnection,
    Endpoint,
    keepalive,
    open_connection,
    queue_text_frames,
    reconnect_forever,
)
from app.retry import Backoff, Failure
from support.wait import until

LOG = structlog.get_logger("test")
P = TypeVar("P", bound=Protocol)


def test_the_websockets_internals_we_rely_on_are_still_there():
    assert websockets.version.version.startswith("17."), (
        "BatchingConnection was tested against websockets 17: check it, then widen the pin")
    assert inspect.isfunction(ClientConnection.send_context)
    assert "expected_state" in inspect.signature(ClientConnection.send_context).parameters
    assert inspect.isfunction(ClientConnection.send_data)
    for name in ("send_text", "data_to_send", "fail"):
        assert inspect.isfunction(getattr(Protocol, name)), name
    # BatchingConnection queues its ping as Connection.ping() does; a pong future already done
    # (failed by our own timer) is skipped by both the pong and the close.
    assert "self.pending_pings[data] = (pong_received, ping_timestamp)" in inspect.getsource(
        Connection.ping)
    for method in (Connection.acknowledge_pings, Connection.terminate_pending_pings):
        assert "if not pong_received.done():" in inspect.getsource(method)
    # DirectConnection takes data frames where websockets would queue them for recv().
    assert "recv_messages.put(event)" in inspect.getsource(Connection.process_event)
    # queue_text_frames writes frames where send_frame would, with the extension's encoder.
    assert "self.writes.append(" in inspect.getsource(Protocol.send_frame)
    assert "self.encoder.compress(frame.data) + self.encoder.flush(zlib.Z_SYNC_FLUSH)" in (
        inspect.getsource(PerMessageDeflate.encode))
    assert "secrets.token_bytes(4)" in inspect.getsource(websockets.frames.Frame.serialize)
    # DirectConnection splits frames where websockets' parser waits for one, and fails a
    # connection as that parser does (tests/test_net_direct.py checks the outcome).
    parse = inspect.getsource(Protocol.parse)
    for line in ("if (yield from self.reader.at_eof()):", "frame = yield from Frame.parse(",
                 "self.fail(CloseCode.PROTOCOL_ERROR, str(exc))",
                 "exc.set_current_size(self.current_size)",
                 "self.fail(CloseCode.MESSAGE_TOO_BIG, str(exc))",
                 "self.fail(CloseCode.INTERNAL_ERROR)", "self.parser_exc = exc"):
        assert line in parse, line
    assert "max_size" in inspect.signature(PerMessageDeflate.decode).parameters


def _open(protocol: P, compression: bool) -> P:
    protocol.state = State.OPEN
    if compression:  # as negotiated by default: context takeover, 15-bit windows
        protocol.extensions = [PerMessageDeflate(False, False, 15, 15, {"memLevel": 5})]
    return protocol


@pytest.mark.parametrize("compression", [True, False])
def test_batched_frames_are_byte_for_byte_those_of_send_text(monkeypatch: pytest.MonkeyPatch,
                                                             compression: bool) -> None:
    # Every length class of the header (7-bit, 16-bit, 64-bit), an empty and a repeated one.
    messages = [b'{"a":1}', b"x" * 200, "\u00e9".encode() * 40_000, b"", b'{"a":1}']
    key_material = os.urandom(4 * len(messages))
    draws: list[int] = []
    batched = _open(ClientProtocol(parse_uri("ws://127.0.0.1/")), compression)
    with monkeypatch.context() as patch:
        patch.setattr(os, "urandom", lambda n: draws.append(n) or key_material)
        assert queue_text_frames(batched, messages)
    assert draws == [4 * len(messages)]  # every mask key of the batch from one draw
    sent = b"".join(batched.data_to_send())

    keys = iter(range(0, len(key_material), 4))
    one_by_one = _open(ClientProtocol(parse_uri("ws://127.0.0.1/")), compression)
    with monkeypatch.context() as patch:
        patch.setattr(websockets.frames.secrets, "token_bytes",
                      lambda n: key_material[(i := next(keys)):i + n])
        for message in messages:
            one_by_one.send_text(message)
    assert b"".join(one_by_one.data_to_send()) == sent

    server = _open(Protocol(Side.SERVER, max_size=None), compression)
    server.receive_data(sent)
    assert [bytes(frame.data) for frame in server.events_received()] == messages


def test_batched_frames_leave_what_they_cannot_do_to_send_text():
    fragmenting = _open(ClientProtocol(parse_uri("ws://127.0.0.1/")), False)
    fragmenting.send_text(b"first part", fin=False)
    closed = ClientProtocol(parse_uri("ws://127.0.0.1/"))
    closed.state = State.CLOSED
    no_takeover = _open(ClientProtocol(parse_uri("ws://127.0.0.1/")), False)
    no_takeover.extensions = [PerMessageDeflate(False, True, 15, 15)]
    for protocol in (fragmenting, closed, no_takeover):
        queued = len(protocol.writes)
        assert not queue_text_frames(protocol, [b"x"])
        assert len(protocol.writes) == queued


async def _recording_server(received: list[Any]):
    async def handler(ws: ServerConnection) -> None:
        try:
            async for message in ws:
                received.append(message)
        except ConnectionClosed:
            pass
        received.append(("closed", ws.close_code))

    return await serve(handler, "127.0.0.1", 0)


def test_a_batch_goes_out_in_one_write_and_arrives_as_separate_messages():
    received: list[Any] = []

    async def run() -> list[int]:
        writes: list[int] = []
        async with await _recording_server(received) as server:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            async with open_connection(Endpoint(url), BatchingConnection) as ws:
                transport = ws.transport
                original = transport.writelines

                def counting(data: Any) -> None:
                    writes.append(len(data))
                    original(data)

                transport.writelines = counting  # type: ignore[method-assign]
                await ws.send_texts([b'{"a":1}', b'{"a":2}', b'{"a":3}'])
                await asyncio.wait_for(await ws.ping(), 5)
        return writes

    writes = asyncio.run(run())
    assert writes[0] == 3  # three frames, one system call (then the ping, then the close)
    assert received[:3] == ['{"a":1}', '{"a":2}', '{"a":3}']


def test_a_cancelled_connection_closes_with_1000():
    received: list[Any] = []

    async def run() -> None:
        async with await _recording_server(received) as server:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            opened = asyncio.Event()

            async def hold() -> None:
                async with open_connection(Endpoint(url), ClientConnection):
                    opened.set()
                    await asyncio.Event().wait()

            task = asyncio.create_task(hold())
            await opened.wait()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await until(lambda: received, 5, "the server to see the close")

    asyncio.run(run())
    assert received == [("closed", CloseCode.NORMAL_CLOSURE)]


def test_keepalive_fails_a_connection_whose_peer_stopped_answering():
    async def run() -> tuple[float, int | None]:
        async def deaf(ws: ServerConnection) -> None:
            ws.transport.pause_reading()  # no pong will ever come back
            await ws.wait_closed()

        async with serve(deaf, "127.0.0.1", 0, close_timeout=0.2) as server:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            async with connect_raw(url) as ws:
                loop = asyncio.get_running_loop()
                started = loop.time()
                await keepalive(ws, 0.1, 0.2, LOG)
                await ws.wait_closed()
                sent = ws.protocol.close_sent
                return loop.time() - started, sent.code if sent else None

    took, code = asyncio.run(run())
    assert 0.3 <= took < 2.0
    assert code == CloseCode.INTERNAL_ERROR


def test_keepalive_holds_back_while_we_do_not_read():
    # Backpressure: we stopped reading the feed, so its pongs cannot be read either. No
    # failure then; once reading again, an unanswered ping fails the connection as usual.
    async def run() -> tuple[bool, int | None]:
        async def deaf(ws: ServerConnection) -> None:
            ws.transport.pause_reading()
            await ws.wait_closed()

        async with serve(deaf, "127.0.0.1", 0, close_timeout=0.2) as server:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            async with connect_raw(url) as ws:
                holding_back = True
                pinger = asyncio.create_task(
                    keepalive(ws, 0.05, 0.1, LOG, holding_back=lambda: holding_back))
                done, _ = await asyncio.wait({pinger}, timeout=0.6)  # 12 intervals
                survived = not done and ws.protocol.close_sent is None
                holding_back = False
                await asyncio.wait_for(pinger, 5)
                await ws.wait_closed()
                sent = ws.protocol.close_sent
                return survived, sent.code if sent else None

    survived, code = asyncio.run(run())
    assert survived
    assert code == CloseCode.INTERNAL_ERROR


def test_direct_delivery_keeps_order_joins_fragments_and_keeps_early_messages():
    # The server's first message comes with the handshake, before anyone asked for it; then a
    # text message in three fragments, a binary one, and a ping the client answers as usual.
    async def run() -> list[bytes]:
        async def talk(ws: ServerConnection) -> None:
            await ws.send('{"first":1}')
            await ws.send(iter(['{"frag', 'mented":', '2}']))
            await ws.send(b"\x00binary")
            await asyncio.wait_for(await ws.ping(), 5)
            await ws.send('{"last":3}')
            await ws.wait_closed()

        async with serve(talk, "127.0.0.1", 0) as server:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            async with open_connection(Endpoint(url), DirectConnection) as ws:
                got: list[bytes] = []
                last = asyncio.Event()

                def on_message(message: bytes) -> None:
                    got.append(message)
                    if message.startswith(b'{"last"'):
                        last.set()

                # The first message, parsed before deliver_to.
                await until(lambda: ws._early, 5, "the first message")
                ws.deliver_to(on_message)
                await asyncio.wait_for(last.wait(), 5)
                return got

    assert asyncio.run(run()) == [b'{"first":1}', b'{"fragmented":2}', b"\x00binary",
                                  b'{"last":3}']


def connect_raw(url: str) -> Any:
    return websockets.connect(url, ping_interval=None, close_timeout=0.2)


def test_failed_attempts_are_classified_and_retried_with_backoff():
    failures: list[Failure] = []

    async def run() -> None:
        # Nothing listens on this port: every attempt is refused.
        async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
        task = asyncio.create_task(reconnect_forever(
            lambda: open_connection(Endpoint(f"ws://127.0.0.1:{port}"), ClientConnection),
            lambda ws: asyncio.sleep(0), backoff=Backoff(0.001, 0.01), log=LOG,
            event_prefix="test", on_down=lambda: None, on_failure=failures.append))
        await until(lambda: len(failures) >= 3, 5, "three failed attempts")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    assert len(failures) >= 3
    assert {failure.reason for failure in failures} == {"refused"}


@pytest.mark.parametrize(("status", "level"), [(403, "error"), (503, "warning")])
def test_a_rejected_handshake_is_logged_with_its_status(status: int, level: str):
    failures: list[Failure] = []

    async def run() -> None:
        def reject(connection: Any, request: Any) -> Any:
            return connection.respond(status, "no\n")

        async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0,
                         process_request=reject) as server:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            task = asyncio.create_task(reconnect_forever(
                lambda: open_connection(Endpoint(url), ClientConnection),
                lambda ws: asyncio.sleep(0),
                backoff=Backoff(0.001, 0.01), log=structlog.get_logger("test"),
                event_prefix="test", on_down=lambda: None, on_failure=failures.append))
            await until(lambda: failures, 5, "a failed attempt")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    with structlog.testing.capture_logs() as logs:
        asyncio.run(run())
    assert failures[0].reason == "rejected"
    failed = [e for e in logs if e["event"] == "test_connect_failed"]
    assert failed[0]["http_status"] == status and failed[0]["log_level"] == level


def test_reads_can_be_limited_on_plain_and_tls_transports():
    import asyncio.selector_events
    import asyncio.sslproto

    from app.net import limit_reads

    # The attributes limit_reads sets: asyncio's own read sizes (256 KiB by default).
    assert asyncio.selector_events._SelectorSocketTransport.max_size == 256 * 1024
    assert asyncio.sslproto.SSLProtocol.max_size == 256 * 1024

    class Owner:
        max_size = 256 * 1024

    transport = Owner()
    transport._ssl_protocol = Owner()  # type: ignore[attr-defined]
    limit_reads(transport, 16 * 1024)  # type: ignore[arg-type]
    assert transport.max_size == transport._ssl_protocol.max_size == 16 * 1024  # type: ignore[attr-defined]
