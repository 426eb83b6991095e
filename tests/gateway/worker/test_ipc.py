"""The supervisor <-> worker framing: any message size up to the cap crosses a real Unix socket
pair intact, a truncated frame is a clean end, and a bad frame is dropped without losing step."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from gateway.worker.ipc import MAX_FRAME, IpcError, decode, encode, read_message

Link = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def link() -> AsyncIterator[tuple[Link, Link]]:
    """Both ends of a Unix socket pair, as the supervisor and the worker open them."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a = await asyncio.open_unix_connection(sock=left)
    b = await asyncio.open_unix_connection(sock=right)
    yield a, b
    for _, writer in (a, b):
        writer.close()


def reader_of(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def test_a_5_mb_message_round_trips_over_a_socket_pair(link: tuple[Link, Link]) -> None:
    (_, writer), (reader, _) = link
    variables = {f"k{i}": "v" * 1000 for i in range(5000)}  # ~5 MB of JSON
    message = {"kind": "request", "id": 1, "op": "originate", "args": {"variables": variables}}
    after = {"kind": "request", "id": 2, "op": "status", "args": {}}

    async def send() -> None:
        writer.write(encode(message))
        writer.write(encode(after))
        await writer.drain()

    async def receive() -> list[dict[str, object] | None]:
        return [await read_message(reader), await read_message(reader)]

    _, received = await asyncio.gather(send(), receive())
    assert received == [message, after]


async def test_a_70_kb_message_crosses_with_the_default_reader_limit(
    link: tuple[Link, Link],
) -> None:
    (_, writer), (reader, _) = link
    message = {"kind": "event", "type": "call.placed", "data": {"variables": {"a": "x" * 70_000}}}
    writer.write(encode(message))
    got, _ = await asyncio.gather(read_message(reader), writer.drain())
    assert got == message


async def test_end_of_stream_and_a_truncated_frame_are_a_clean_end() -> None:
    frame = encode({"kind": "ready", "status": {}})
    assert await read_message(reader_of(b"")) is None
    assert await read_message(reader_of(frame[:2])) is None  # inside the length
    assert await read_message(reader_of(frame[:-3])) is None  # inside the body
    whole_then_cut = reader_of(frame + frame[:-1])
    assert await read_message(whole_then_cut) == {"kind": "ready", "status": {}}
    assert await read_message(whole_then_cut) is None


async def test_an_oversized_frame_is_dropped_naming_the_limit_and_the_next_one_is_read() -> None:
    size = MAX_FRAME + 10
    good = encode({"kind": "reply", "id": 7, "ok": True, "result": None})
    reader = reader_of(struct.pack("!I", size) + b" " * size + good)
    with pytest.raises(IpcError, match=f"{size} bytes exceeds the {MAX_FRAME}-byte limit"):
        await read_message(reader)
    assert await read_message(reader) == {"kind": "reply", "id": 7, "ok": True, "result": None}


async def test_frames_that_are_not_json_objects_are_dropped_without_losing_step() -> None:
    good = encode({"kind": "ready", "status": {}})
    bad_json = struct.pack("!I", 5) + b"{nope"
    not_object = struct.pack("!I", 3) + b"[1]"
    reader = reader_of(bad_json + not_object + good)
    with pytest.raises(IpcError, match="not valid JSON"):
        await read_message(reader)
    with pytest.raises(IpcError, match="not an object"):
        await read_message(reader)
    assert await read_message(reader) == {"kind": "ready", "status": {}}


def test_encoding_a_message_above_the_cap_is_refused_before_sending() -> None:
    with pytest.raises(IpcError, match="exceeds the"):
        encode({"blob": "x" * (MAX_FRAME + 1)})


def test_every_worker_event_crosses_the_link_as_the_same_object() -> None:
    from gateway.calls import events as ev
    from gateway.worker.ipc import event_from, event_message

    sent = [
        ev.CallOffered(
            call_id="c1",
            from_number="+1555",
            to_number="+1666",
            trunk="t",
            agent="a",
            variables={"k": "v"},
            sip_call_id="x@y",
        ),  # fmt: skip
        ev.Completed(call_id="c1", duration=1.5, reason="normal", latency={"p50_ms": 3.0}),
        ev.TrunkStateChanged(trunk="t", registers=True, state="registered", expires=300),
        ev.InvitesRefused(counts={"rate": 3}),
    ]
    for event in sent:
        frame = encode(event_message(event, 12.5))
        assert event_from(decode(frame[4:])) == (event, 12.5)
    with pytest.raises(IpcError, match="unknown type 'call.placed'"):
        event_from({"kind": "event", "type": "call.placed", "data": {}, "ts": 1.0})
    with pytest.raises(IpcError, match="Answered does not fit"):
        event_from({"kind": "event", "type": "Answered", "data": {"codec": "PCMU"}, "ts": 1.0})
