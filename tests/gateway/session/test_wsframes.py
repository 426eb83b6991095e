"""gateway/session/wsframes.py against websockets' own frame codec: our client frames parse as
websockets parses them, and the scan finds exactly the frames websockets would deliver, leaving
every other frame (and every frame not yet whole) to it."""

from __future__ import annotations

from collections.abc import Generator

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from gateway.session.wsframes import (
    BINARY,
    HAND_OVER,
    NEED_MORE,
    TEXT,
    MaskKeys,
    client_frame,
    scan,
)

MAX = 4 * 1024 * 1024


def parse_as_server(data: bytes) -> Frame:
    """What websockets' server side reads from `data` (one masked frame)."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser: Generator[None, None, Frame] = Frame.parse(reader.read_exact, mask=True)
    with pytest.raises(StopIteration) as done:
        next(parser)
    frame: Frame = done.value.value
    return frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 300, 65535, 65536])
def test_client_frames_parse_in_websockets_as_the_payload_sent(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    key = b"\x12\x34\x56\x78"
    for opcode, expected in ((TEXT, Opcode.TEXT), (BINARY, Opcode.BINARY)):
        wire = client_frame(opcode, payload, key)
        frame = parse_as_server(wire)
        assert (frame.opcode, frame.fin, bytes(frame.data)) == (expected, True, payload)
        assert key in wire[:14]  # the mask key is on the wire, and the payload masked
        assert size < 4 or payload not in wire


def test_mask_keys_are_four_random_bytes_each_from_blocks() -> None:
    keys = MaskKeys()
    taken = [keys.take() for _ in range(600)]  # crosses two block boundaries
    assert all(len(key) == 4 for key in taken)
    assert len(set(taken)) > 590  # 32 random bits: a repeat in 600 is a 1-in-10^4 event


def server_frame(opcode: Opcode, data: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin).serialize(mask=False)


@pytest.mark.parametrize("size", [0, 5, 125, 126, 400, 65535, 65536])
def test_scan_finds_whole_text_and_binary_frames_and_their_payload(size: int) -> None:
    payload = b"x" * size
    for opcode, code in ((Opcode.TEXT, TEXT), (Opcode.BINARY, BINARY)):
        before = b"\x00\x01\x02"
        wire = before + server_frame(opcode, payload)
        found = scan(wire, len(before), MAX)
        assert found.data and found.opcode == code and found.end == len(wire)
        assert wire[found.start : found.end] == payload
        for cut in range(len(before), len(wire)):  # every prefix: wait for the rest
            assert scan(wire[:cut], len(before), MAX) == NEED_MORE


def test_scan_leaves_control_frames_fragments_and_odd_frames_to_websockets_whole() -> None:
    for wire in (
        server_frame(Opcode.PING, b"hi"),
        server_frame(Opcode.PONG, b""),
        server_frame(Opcode.CLOSE, b"\x03\xe8"),
        server_frame(Opcode.TEXT, b"frag", fin=False),
        server_frame(Opcode.CONT, b"mented"),
        bytes([0xC1, 0x02]) + b"zz",  # RSV1 set (a compressed frame: not negotiated)
        Frame(Opcode.TEXT, b"masked by a server").serialize(mask=True),
        bytes([0x83, 0x00]),  # reserved opcode 3
    ):
        found = scan(wire + b"next", 0, MAX)
        assert not found.data and found.end == len(wire)


def test_scan_hands_over_a_frame_larger_than_the_limit_as_soon_as_its_length_is_read() -> None:
    head = server_frame(Opcode.BINARY, b"y" * 70_000)[:10]
    assert scan(head, 0, 65_536) == HAND_OVER
    assert scan(head[:9], 0, 65_536) == NEED_MORE
