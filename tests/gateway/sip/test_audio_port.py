"""What the audio port hands pjmedia: never more bytes than the bridge's frame buffer holds,
and nothing at all once it is closed (gateway/sip/call.py, gateway/sip/vectors.py).

pjsua2 copies min(len(frame.buf), frame.size) bytes of a requested frame into the bridge's
buffer, whose capacity is frame.size on input; these tests call the callbacks the way pjsua2
does, with a MediaFrame, and no endpoint.
"""

from __future__ import annotations

import pjsua2 as pj
import pytest

from gateway.sip.call import AudioPort
from gateway.sip.vectors import fit_frame, read_vector, write_vector


class FixedSession:
    """A media session whose next frame is whatever the test says."""

    rate = 8000

    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        self.caller: list[bytes] = []
        self.closed = False

    def on_caller_frame(self, pcm: bytes, mulaw: bytes | None = None) -> None:
        self.caller.append(pcm)

    def next_frame(self) -> bytes:
        return self.frame

    def on_dtmf(self, digit: str) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def requested(port: AudioPort, capacity: int) -> pj.MediaFrame:
    frame = pj.MediaFrame()
    frame.size = capacity  # what pjsua2's get_frame sets before calling us
    port.onFrameRequested(frame)
    return frame


def test_a_frame_longer_than_the_bridge_buffer_is_cut_to_its_capacity() -> None:
    port = AudioPort(FixedSession(bytes(range(256)) * 5))  # 1280 bytes, buffer holds 320
    frame = requested(port, 320)
    assert frame.size == 320
    assert read_vector(frame.buf) == (bytes(range(256)) * 5)[:320]
    assert port.frames_cut == 1
    port.close()


def test_a_short_frame_is_padded_with_silence_to_fill_the_buffer() -> None:
    port = AudioPort(FixedSession(b"\x01\x02" * 10))
    frame = requested(port, 320)
    assert frame.size == 320
    assert read_vector(frame.buf) == b"\x01\x02" * 10 + bytes(300)
    assert port.frames_cut == 0
    port.close()


def test_a_closed_port_hands_the_bridge_an_empty_frame_and_no_caller_audio() -> None:
    session = FixedSession(bytes(320))
    port = AudioPort(session)
    port.close()
    assert port.session is None
    frame = requested(port, 320)
    assert read_vector(frame.buf) == b""  # pjsua2 copies min(0, size) bytes
    received = pj.MediaFrame()
    received.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
    write_vector(received.buf, bytes(320))
    port.onFrameReceived(received)
    assert session.caller == []
    port.close()  # twice is harmless


def test_a_closed_port_refuses_pjsua2_calls_instead_of_touching_freed_memory() -> None:
    port = AudioPort(FixedSession(bytes(320)))
    port.close()
    with pytest.raises(TypeError):
        port.getPortId()


def test_fit_frame_cuts_pads_and_keeps() -> None:
    assert fit_frame(b"abcd", 2) == b"ab"
    assert fit_frame(b"ab", 4) == b"ab\x00\x00"
    assert fit_frame(b"abcd", 4) == b"abcd"
    assert fit_frame(b"abcd", 0) == b""


def test_write_vector_resizes_the_vector_to_exactly_the_data() -> None:
    vector = pj.ByteVector()
    write_vector(vector, bytes(range(200)))
    assert vector.size() == 200 and read_vector(vector) == bytes(range(200))
    write_vector(vector, b"xy")
    assert vector.size() == 2 and read_vector(vector) == b"xy"
    write_vector(vector, b"")
    assert vector.size() == 0 and read_vector(vector) == b""
