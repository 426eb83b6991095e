"""gateway/plane/process.py without workers: what a tick reads from the calls' RTP sockets
and hands their sessions, and what it runs once their frames are in."""

from __future__ import annotations

import logging
import select
import socket

import pytest

from gateway.config import Config
from gateway.plane.process import CODECS, MAX_READ_ROUNDS, Plane, PlaneCall
from media.codecs import alaw_decode, ulaw_decode, ulaw_encode
from media.rtp import HEADER

CONFIG = {
    "trunks": [{"id": "carrier", "allowed_ips": ["10.0.0.0/8"]}],
    "numbers": [{"number": "+15550100", "agent": "bot"}],
    "agents": [{"id": "bot", "type": "twilio-ws", "url": "ws://127.0.0.1:9/"}],
}


async def test_sessions_work_runs_once_the_tick_is_over_in_order_and_one_failure_spares_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
        plane = Plane(Config.model_validate(CONFIG), listener)
        ran: list[str] = []

        def boom() -> None:
            ran.append("boom")
            raise RuntimeError("a session's bug")

        def late() -> None:
            ran.append("late")

        def first() -> None:
            ran.append("first")
            plane.after_tick(late)  # handed over while the work runs: the next tick's

        plane.after_tick(first)
        plane.after_tick(boom)
        plane.after_tick(lambda: ran.append("third"))
        assert ran == []  # nothing runs until the tick says so
        with caplog.at_level(logging.ERROR, "sipedge.plane"):
            plane._run_after_tick()
        assert ran == ["first", "boom", "third"]
        assert "event=session_work_failed" in caplog.text
        plane._run_after_tick()
        assert ran == ["first", "boom", "third", "late"]


class Ear:
    """A session that only listens: the frames the plane hands it, PCM and mu-law."""

    rate = 8000

    def __init__(self) -> None:
        self.frames: list[tuple[bytes, bytes | None]] = []

    def on_caller_frame(self, pcm: bytes, mulaw: bytes | None = None) -> None:
        self.frames.append((pcm, mulaw))


def rtp(seq: int, payload: bytes, pt: int = 0) -> bytes:
    return HEADER.pack(0x80, pt, seq, seq * 160, 7) + payload


async def test_every_queued_packet_of_every_call_is_read_in_one_tick_in_order() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
        plane = Plane(Config.model_validate(CONFIG), listener)
        ears, senders = [], []
        for i, codec in enumerate(("PCMU", "PCMA")):
            ear = Ear()
            call = PlaneCall(None, f"call_{i}", ear, None)  # type: ignore[arg-type]
            call.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            call.rtp.bind(("127.0.0.1", 0))
            call.rtp.setblocking(False)
            call.codec, call.rx_pt = CODECS[codec], 0
            plane.media[call.rtp.fileno()] = call
            plane.epoll.register(call.rtp.fileno(), select.EPOLLIN)
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sender.connect(call.rtp.getsockname())
            ears.append(ear)
            senders.append(sender)
        payloads = [bytes([n]) * 160 for n in range(0x10, 0x10 + MAX_READ_ROUNDS + 3)]
        for seq, payload in enumerate(payloads[:3]):
            senders[0].send(rtp(seq, payload))  # PCMU: three frames queued (a late tick)
        for seq, payload in enumerate(payloads):
            senders[1].send(rtp(seq, payload))  # PCMA: more than one tick reads
        plane._receive()
        assert [mulaw for _, mulaw in ears[0].frames] == payloads[:3]  # as they came
        assert [pcm for pcm, _ in ears[0].frames] == [ulaw_decode(p) for p in payloads[:3]]
        assert [pcm for pcm, _ in ears[1].frames] == [
            alaw_decode(p) for p in payloads[:MAX_READ_ROUNDS]
        ]
        assert [mulaw for _, mulaw in ears[1].frames] == [
            ulaw_encode(alaw_decode(p)) for p in payloads[:MAX_READ_ROUNDS]
        ]
        plane._receive()  # the rest, the next tick
        assert len(ears[1].frames) == len(payloads)
        for sock in senders:
            sock.close()
        for call in plane.media.values():
            assert call.rtp is not None
            call.rtp.close()
