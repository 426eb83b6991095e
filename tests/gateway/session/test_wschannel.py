"""gateway/session/wschannel.py against real websockets servers on 127.0.0.1: messages both
ways, fragments, the opening handshake refused, an agent that stops reading."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.server import ServerConnection, serve

from gateway.config import Agent
from gateway.session.wschannel import AgentUnavailable, ChannelClosed, FastWebSocketChannel
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
