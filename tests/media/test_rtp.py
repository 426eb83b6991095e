"""media/rtp.py: RTP headers read and written, RFC 4733 digits both ways."""

from __future__ import annotations

import random
import struct

import pytest

from media.rtp import (
    HEADER,
    DtmfReceiver,
    DtmfSender,
    RtpPacket,
    RtpSender,
    parse,
    seq_newer,
)


def packet(pt: int = 0, seq: int = 1, ts: int = 160, ssrc: int = 7, payload: bytes = b"\xff" * 160,
           first: int = 0x80, marker: bool = False) -> bytes:  # fmt: skip
    return HEADER.pack(first, pt | (0x80 if marker else 0), seq, ts, ssrc) + payload


def test_a_plain_packet_parses_to_its_fields() -> None:
    got = parse(packet(pt=8, seq=65535, ts=4242, ssrc=99, marker=True))
    assert got == RtpPacket(8, True, 65535, 4242, 99, b"\xff" * 160)


def test_csrcs_extension_and_padding_are_skipped() -> None:
    csrc = struct.pack("!II", 1, 2)
    extension = struct.pack("!HH", 0xBEDE, 1) + b"\x01\x02\x03\x04"
    body = b"abcd" + b"\x00\x00\x03"  # 3 bytes of padding, the last says so
    data = HEADER.pack(0x80 | 0x20 | 0x10 | 2, 0, 5, 6, 7) + csrc + extension + body
    got = parse(data)
    assert got is not None and got.payload == b"abcd"


@pytest.mark.parametrize(
    "data",
    [b"", b"\x80\x00", packet(first=0x40), packet(pt=72), packet(pt=76),
     HEADER.pack(0x90, 0, 1, 1, 1) + b"\x00",  # extension header cut short
     HEADER.pack(0xA0, 0, 1, 1, 1) + b"\x05"],  # padding longer than the payload
)  # fmt: skip
def test_what_is_not_rtp_v2_is_none(data: bytes) -> None:
    assert parse(data) is None


def test_sequence_numbers_wrap() -> None:
    assert seq_newer(1, 0) and seq_newer(0, 65535) and seq_newer(100, 65500)
    assert not seq_newer(0, 1) and not seq_newer(5, 5) and not seq_newer(65500, 100)


def test_a_sender_counts_sequence_and_timestamp_and_marks_only_the_first_packet() -> None:
    sender = RtpSender(0, 160, random.Random(1))
    first, second = parse(sender.audio(b"a" * 160)), parse(sender.audio(b"b" * 160))
    assert first is not None and second is not None
    assert first.marker and not second.marker
    assert second.seq == (first.seq + 1) % 65536
    assert second.timestamp == (first.timestamp + 160) % 2**32
    assert first.ssrc == second.ssrc == sender.ssrc
    sender.skip()
    third = parse(sender.audio(b"c"))
    assert third is not None and third.timestamp == (first.timestamp + 480) % 2**32


def test_a_key_press_becomes_one_digit_whatever_its_retransmissions() -> None:
    sender = RtpSender(0, 160, random.Random(2))
    dtmf = DtmfSender(sender, 101)
    dtmf.queue("5#")
    receiver = DtmfReceiver()
    heard, audio_ticks, event_packets = [], 0, []
    for _ in range(40):
        data = dtmf.next_packet()
        if data is None:
            audio_ticks += 1
            sender.audio(b"\xff" * 160)
            continue
        sender.skip()
        got = parse(data)
        assert got is not None and got.payload_type == 101
        event_packets.append(got)
        digit = receiver.push(got)
        if digit:
            heard.append(digit)
    assert heard == ["5", "#"]
    assert not dtmf.active
    first = event_packets[:8]  # 5 updates and 3 ends of the first key
    assert [p.marker for p in first] == [True] + [False] * 7
    assert len({p.timestamp for p in first}) == 1
    ends = [p for p in first if p.payload[1] & 0x80]
    assert len(ends) == 3 and all(struct.unpack("!H", p.payload[2:])[0] == 800 for p in ends)
    seqs = [p.seq for p in event_packets]
    assert all(seq_newer(b, a) for a, b in zip(seqs, seqs[1:], strict=False))


def test_the_same_key_pressed_twice_is_two_digits() -> None:
    receiver = DtmfReceiver()
    press = struct.pack("!BBH", 1, 10, 160)
    assert receiver.push(RtpPacket(101, True, 1, 1000, 5, press)) == "1"
    assert receiver.push(RtpPacket(101, False, 2, 1000, 5, press)) is None
    assert receiver.push(RtpPacket(101, True, 9, 2000, 5, press)) == "1"
    assert receiver.push(RtpPacket(101, True, 10, 3000, 5, b"\x01")) is None  # too short
    assert receiver.push(RtpPacket(101, True, 11, 4000, 5, struct.pack("!BBH", 16, 0, 1))) is None


def test_only_dtmf_keys_can_be_queued() -> None:
    with pytest.raises(ValueError, match="'X' is not a DTMF key"):
        DtmfSender(RtpSender(0, 160), 101).queue("12x")
