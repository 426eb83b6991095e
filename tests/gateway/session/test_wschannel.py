"""gateway/session/wschannel.py against real websockets servers on 127.0.0.1: messages both
ways, fragments, the opening handshake refused, an agent that stops reading; and its fast
path for data frames fed bytes cut every way a TCP stream may cut them."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.streams import StreamReader
from websockets.uri import parse_uri
from websockets.utils import accept_key

from gateway.config import Agent
from gateway.session.wschannel import (
    MAX_MESSAGE_BYTES,
    AgentUnavailable,
    ChannelClosed,
    FastWebSocketChannel,
    _Connection,
)
from media.timing import LatencyStats


def agent(port: int, **extra: object) -> Agent:
    return Agent.model_validate(
        {"id": "bot", "type": "pcm-ws", "url": f"ws://127.0.0.1:{port}/", **extra}
    )


async def test_text_binary_and_fragmented_messages_arrive_whole_and_in_order() -> None:
    async def bot(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async def fragments(ws: ServerConnection) -> None:
        await ws.send(["frag", "mented"])  # one message in two frames
        await ws.wait_closed()

    async with serve(bot, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        stats = LatencyStats()
        channel = await FastWebSocketChannel.open(agent(port), stats, "call_1")
        got: list[str | bytes] = []
        done = asyncio.get_running_loop().create_future()

        def receive(message: str | bytes, _ns: int) -> None:
            got.append(message)
            if len(got) == 3:
                done.set_result(None)

        channel.send_now("hello", 1)
        channel.send_now(b"\x00\x01" * 160)
        channel.deliver_to(receive, lambda: None)  # what came before is delivered first
        channel.send_now('{"event":"mark"}')
        await asyncio.wait_for(done, 5)
        assert got == ["hello", b"\x00\x01" * 160, '{"event":"mark"}']
        assert stats.count == 1  # the frame sent with its arrival time
        await channel.close()
        assert not channel.is_open
        with pytest.raises(ChannelClosed):
            channel.send_now("late")

    async with serve(fragments, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        channel = await FastWebSocketChannel.open(agent(port), LatencyStats(), "call_2")
        whole: asyncio.Future[str | bytes] = asyncio.get_running_loop().create_future()
        channel.deliver_to(lambda m, _ns: whole.set_result(m), lambda: None)
        assert await asyncio.wait_for(whole, 5) == "fragmented"
        await channel.close()


async def test_nothing_listening_and_a_timeout_say_why() -> None:
    closed = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    with pytest.raises(AgentUnavailable, match="connect_failed"):
        await FastWebSocketChannel.open(agent(port), LatencyStats(), "call_3")

    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # never answers
    port = silent.sockets[0].getsockname()[1]
    with pytest.raises(AgentUnavailable, match="connect_timeout after 0.3s"):
        await FastWebSocketChannel.open(agent(port, connect_timeout=0.3), LatencyStats(), "c4")
    silent.close()


async def test_an_agent_that_stops_reading_fails_the_channel_by_name() -> None:
    stop = asyncio.Event()

    async def deaf(ws: ServerConnection) -> None:
        await stop.wait()  # never reads: websockets stops reading after its queue fills

    async with serve(deaf, "127.0.0.1", 0, max_size=None, close_timeout=0.5) as server:
        port = server.sockets[0].getsockname()[1]
        channel = await FastWebSocketChannel.open(agent(port), LatencyStats(), "call_5")
        ended = asyncio.Event()
        channel.deliver_to(lambda m, _ns: None, ended.set)
        chunk = b"\x00" * (256 * 1024)
        with pytest.raises(ChannelClosed, match="agent_not_reading"):
            for _ in range(10_000):  # at most ~2.5 GB: the socket buffers fill long before
                channel.send_now(chunk)
                await asyncio.sleep(0)
        assert channel.close_reason() == "agent_not_reading"
        await asyncio.wait_for(ended.wait(), 5)
        stop.set()


# --- the fast path, sans-IO: _Connection fed bytes as TCP might cut them ------------------


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0


def opened() -> tuple[_Connection, RecordingTransport, bytes]:
    """A connection whose request is written; returns it and the 101 that accepts it."""
    ws = ClientProtocol(parse_uri("ws://agent.test/"), max_size=MAX_MESSAGE_BYTES)
    request = ws.connect()
    ws.send_request(request)
    conn, transport = _Connection(ws), RecordingTransport()
    conn.connection_made(transport)
    transport.written = b""  # the request
    accept = accept_key(request.headers["Sec-WebSocket-Key"])
    response = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode()
    return conn, transport, response


def frames_written(data: bytes) -> list[Frame]:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    out: list[Frame] = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=True)
        with pytest.raises(StopIteration) as done:
            next(parser)
        out.append(done.value.value)
    return out


def server(opcode: Opcode, data: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin).serialize(mask=False)


@pytest.mark.parametrize("chunk", [1, 3, 7, 150, 100_000])
async def test_data_frames_pings_fragments_and_close_however_the_bytes_are_cut(chunk: int) -> None:
    conn, transport, response = opened()
    got: list[str | bytes] = []
    conn.receiver = lambda message, _ns: got.append(message)
    wire = response + b"".join([
        server(Opcode.TEXT, b'{"event":"media"}'),
        server(Opcode.PING, b"are you there"),
        server(Opcode.BINARY, b"\x00\x01" * 200),
        server(Opcode.TEXT, b"frag", fin=False),
        server(Opcode.CONT, b"mented"),
        server(Opcode.TEXT, "après".encode()),
        server(Opcode.CLOSE, b"\x03\xe8bye"),
        server(Opcode.TEXT, b"after the close: never delivered"),
    ])  # fmt: skip
    for start in range(0, len(wire), chunk):
        conn.data_received(wire[start : start + chunk])
    assert got == ['{"event":"media"}', b"\x00\x01" * 200, "fragmented", "après"]
    replies = frames_written(transport.written)
    assert [(f.opcode, bytes(f.data)) for f in replies] == [
        (Opcode.PONG, b"are you there"),
        (Opcode.CLOSE, b"\x03\xe8bye"),
    ]
    assert conn.ws.state is State.CLOSING and not conn.fast


async def test_the_fast_path_is_taken_once_open_and_left_for_a_fragmented_message() -> None:
    conn, transport, response = opened()
    got: list[str | bytes] = []
    conn.receiver = lambda message, _ns: got.append(message)
    conn.data_received(response)
    assert conn.fast  # open, nothing half read
    conn.data_received(server(Opcode.TEXT, b"one")[:3])
    assert conn.fast and got == []
    conn.data_received(server(Opcode.TEXT, b"one")[3:] + server(Opcode.TEXT, b"fr", fin=False))
    assert got == ["one"] and not conn.fast  # websockets assembles the rest
    conn.data_received(server(Opcode.CONT, b"ag"))
    assert got == ["one", "frag"] and conn.fast


async def test_invalid_utf8_in_a_text_frame_closes_with_1007_as_websockets_does() -> None:
    conn, transport, response = opened()
    got: list[str | bytes] = []
    conn.receiver = lambda message, _ns: got.append(message)
    conn.data_received(response + server(Opcode.TEXT, b"\xff\xfe"))
    assert got == []
    (close,) = frames_written(transport.written)
    assert close.opcode is Opcode.CLOSE and bytes(close.data[:2]) == b"\x03\xef"  # 1007
