#!/usr/bin/env python3
"""Write a libpcap file of RTP/UDP/IPv4 packets carrying PCMU (G.711 mu-law) audio.

The signal is deterministic and "speech-like": harmonic tone bursts (a fundamental with
decaying harmonics, i.e. a crude vowel) with a slow pitch glide, separated by short silences.
Known content makes correlation tests possible later: import this module and call
`pcm_samples()` to get exactly the 16-bit samples that were encoded into the pcap.

Layout of the default output (sipp_scenarios/pcap/speech_pcmu.pcap):
  * 8000 Hz, 20 ms per packet (160 samples), 150 packets = 3.0 s
  * bursts: 400 ms voiced / 200 ms silence, 5 cycles (3.0 s)
  * RTP: PT 0, SSRC 0x5150ED6E, seq from 1, timestamp from 0, marker on the first packet
  * link layer: Ethernet (DLT_EN10MB), IPv4 127.0.0.1:16000 -> 127.0.0.1:6000
    (SIPp's play_pcap_audio rewrites addresses and ports; only the RTP part matters)

It also writes RFC 4733 telephone-event (DTMF) pcaps: `--dtmf 1234#` (PT 101, 100 ms per
digit, 100 ms gaps) -> sipp_scenarios/pcap/dtmf_1234pound.pcap by default; and with `--ulaw`
the same signal as raw mu-law, no headers (SIPp's `rtp_stream` input, read from SIPp's
working directory) -> ./speech_pcmu.ulaw by default.

With `--from-wav FILE` it encodes an 8000 Hz mono 16-bit WAV instead (same RTP layout, one
packet per 20 ms, the last one zero-padded) -> ./FILE-stem.pcap by default: the AMD
scenarios' espeak-ng recordings (bench/amd_corpus.py --sipp).

Usage: python3 sipp_scenarios/make_pcap.py [OUT.pcap] [--seconds 3.0]
       python3 sipp_scenarios/make_pcap.py --dtmf 1234# [OUT.pcap]
       python3 sipp_scenarios/make_pcap.py --ulaw [OUT.ulaw]
       python3 sipp_scenarios/make_pcap.py --from-wav FILE.wav [OUT.pcap]
Only the standard library is used.
"""

from __future__ import annotations

import argparse
import math
import struct
import wave
from pathlib import Path

SAMPLE_RATE = 8000
PTIME_MS = 20
SAMPLES_PER_PACKET = SAMPLE_RATE * PTIME_MS // 1000  # 160
SSRC = 0x5150ED6E
PAYLOAD_TYPE = 0  # PCMU
BURST_MS = 400
GAP_MS = 200
DTMF_PAYLOAD_TYPE = 101
DEFAULT_OUT = Path(__file__).resolve().parent / "pcap" / "speech_pcmu.pcap"
DEFAULT_DTMF_OUT = Path(__file__).resolve().parent / "pcap" / "dtmf_1234pound.pcap"
DEFAULT_ULAW_OUT = Path("speech_pcmu.ulaw")  # in SIPp's working directory

# --- G.711 mu-law -------------------------------------------------------------------------

_BIAS = 0x84
_CLIP = 32635


def linear_to_ulaw(sample: int) -> int:
    """Encode one signed 16-bit sample to a mu-law byte (ITU-T G.711)."""
    sign = 0x80 if sample < 0 else 0x00
    if sample < 0:
        sample = -sample
    sample = min(sample, _CLIP)
    sample += _BIAS
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not (sample & mask):
        exponent -= 1
        mask >>= 1
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def ulaw_to_linear(byte: int) -> int:
    """Decode one mu-law byte to a signed 16-bit sample."""
    byte = ~byte & 0xFF
    sign = byte & 0x80
    exponent = (byte >> 4) & 0x07
    mantissa = byte & 0x0F
    sample = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return -sample if sign else sample


# --- signal -------------------------------------------------------------------------------


def pcm_samples(seconds: float = 3.0) -> list[int]:
    """The deterministic speech-like signal as signed 16-bit samples at 8 kHz."""
    n_total = round(seconds * SAMPLE_RATE)
    cycle = (BURST_MS + GAP_MS) * SAMPLE_RATE // 1000
    burst = BURST_MS * SAMPLE_RATE // 1000
    ramp = 80  # 10 ms fade in/out to avoid clicks
    out: list[int] = []
    phase = 0.0
    for n in range(n_total):
        k, pos = divmod(n, cycle)
        if pos >= burst:
            out.append(0)
            continue
        # pitch glides 120 -> 180 Hz inside a burst; each burst starts a bit higher
        f0 = 120.0 + 15.0 * (k % 4) + 60.0 * pos / burst
        phase += 2.0 * math.pi * f0 / SAMPLE_RATE
        value = 0.0
        for h in range(1, 9):
            value += math.sin(h * phase) / h
        env = min(1.0, pos / ramp, (burst - pos) / ramp)
        out.append(round(9000.0 * env * value))
    return [max(-32768, min(32767, s)) for s in out]


def pcmu_payload(seconds: float = 3.0) -> bytes:
    """The signal encoded as mu-law, concatenated (what the RTP payloads carry)."""
    return bytes(linear_to_ulaw(s) for s in pcm_samples(seconds))


# --- packet building ----------------------------------------------------------------------


def _ip_checksum(header: bytes) -> int:
    total = 0
    for i in range(0, len(header), 2):
        total += (header[i] << 8) + header[i + 1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(rtp: bytes, src: str, sport: int, dst: str, dport: int, ident: int) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(rtp), 0) + rtp  # checksum 0: none (IPv4)
    src_b = bytes(int(x) for x in src.split("."))
    dst_b = bytes(int(x) for x in dst.split("."))
    ip_wo = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0xB8, 20 + len(udp), ident & 0xFFFF, 0x4000, 64, 17, 0, src_b, dst_b
    )
    ip = ip_wo[:10] + struct.pack("!H", _ip_checksum(ip_wo)) + ip_wo[12:]
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    return eth + ip + udp


def build_pcap(seconds: float = 3.0) -> bytes:
    """PCMU RTP packets of `pcm_samples(seconds)`, one per 20 ms."""
    return _pcmu_pcap(pcmu_payload(seconds))


def read_wav_samples(path: Path) -> list[int]:
    """The samples of an 8000 Hz mono 16-bit WAV (what --from-wav accepts), zero-padded to
    a whole number of 20 ms packets."""
    with wave.open(str(path)) as w:
        shape = (w.getframerate(), w.getnchannels(), w.getsampwidth())
        if shape != (SAMPLE_RATE, 1, 2):
            raise SystemExit(f"{path}: need 8000 Hz mono 16-bit PCM, got {shape} (Hz, ch, bytes)")
        raw = w.readframes(w.getnframes())
    samples = list(struct.unpack(f"<{len(raw) // 2}h", raw))
    return samples + [0] * (-len(samples) % SAMPLES_PER_PACKET)


def build_pcap_from_wav(path: Path) -> bytes:
    """PCMU RTP packets of an 8 kHz mono WAV's audio, one per 20 ms."""
    return _pcmu_pcap(bytes(linear_to_ulaw(s) for s in read_wav_samples(path)))


def _pcmu_pcap(payload: bytes) -> bytes:
    records: list[tuple[int, bytes]] = []
    for i in range(len(payload) // SAMPLES_PER_PACKET):
        marker = 0x80 if i == 0 else 0x00
        rtp = struct.pack(
            "!BBHII", 0x80, marker | PAYLOAD_TYPE, i + 1, i * SAMPLES_PER_PACKET, SSRC
        )
        rtp += payload[i * SAMPLES_PER_PACKET : (i + 1) * SAMPLES_PER_PACKET]
        records.append((i * PTIME_MS * 1000, rtp))
    return _pcap(records)


DTMF_EVENTS = {
    **{str(d): d for d in range(10)},
    "*": 10,
    "#": 11,
    "A": 12,
    "B": 13,
    "C": 14,
    "D": 15,
}


def build_dtmf_pcap(
    digits: str = "1234#",
    tone_ms: int = 100,
    gap_ms: int = 100,
    payload_type: int = DTMF_PAYLOAD_TYPE,
) -> bytes:
    """RFC 4733 telephone-event packets for `digits` (one event per digit).

    Each event: first packet with the marker bit, one packet every 20 ms with the same RTP
    timestamp and a growing duration, then three end packets (E bit) with the final duration.
    Between events `gap_ms` of nothing (the timestamp still advances).
    """
    records: list[tuple[int, bytes]] = []  # (usec offset, rtp)
    seq = 1
    ts = 0
    t_us = 0
    for ch in digits:
        event = DTMF_EVENTS[ch.upper()]
        steps = max(1, tone_ms // PTIME_MS)
        for i in range(steps):
            dur = (i + 1) * SAMPLES_PER_PACKET
            marker = 0x80 if i == 0 else 0x00
            body = struct.pack("!BBH", event, 10, dur)  # E=0, volume 10 dBm0
            rtp = struct.pack("!BBHII", 0x80, marker | payload_type, seq, ts, SSRC) + body
            records.append((t_us, rtp))
            seq += 1
            t_us += PTIME_MS * 1000
        dur = steps * SAMPLES_PER_PACKET
        for _ in range(3):
            body = struct.pack("!BBH", event, 0x80 | 10, dur)
            rtp = struct.pack("!BBHII", 0x80, payload_type, seq, ts, SSRC) + body
            records.append((t_us, rtp))
            seq += 1
        t_us += gap_ms * 1000
        ts += dur + gap_ms * SAMPLE_RATE // 1000
    return _pcap(records)


def _pcap(records: list[tuple[int, bytes]]) -> bytes:
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    base_sec = 1_700_000_000
    for n, (usec_total, rtp) in enumerate(records):
        frame = _frame(rtp, "127.0.0.1", 16000, "127.0.0.1", 6000, n + 1)
        out += struct.pack(
            "<IIII",
            base_sec + usec_total // 1_000_000,
            usec_total % 1_000_000,
            len(frame),
            len(frame),
        )
        out += frame
    return bytes(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--dtmf", metavar="DIGITS", help="write RFC 4733 events for DIGITS instead")
    ap.add_argument("--dtmf-pt", type=int, default=DTMF_PAYLOAD_TYPE)
    ap.add_argument("--ulaw", action="store_true", help="write raw mu-law (rtp_stream) instead")
    ap.add_argument("--from-wav", metavar="FILE", type=Path, help="PCMU RTP of an 8 kHz mono WAV")
    args = ap.parse_args()
    if args.from_wav:
        out = args.out if args.out != DEFAULT_OUT else Path(args.from_wav.stem + ".pcap")
        data = build_pcap_from_wav(args.from_wav)
        packets = len(read_wav_samples(args.from_wav)) // SAMPLES_PER_PACKET
        what = f"{packets * PTIME_MS / 1000:.2f} s PCMU from {args.from_wav}"
    elif args.ulaw:
        out = args.out if args.out != DEFAULT_OUT else DEFAULT_ULAW_OUT
        data = pcmu_payload(args.seconds)
        what = f"{args.seconds:.1f} s raw mu-law"
    elif args.dtmf:
        out = args.out if args.out != DEFAULT_OUT else DEFAULT_DTMF_OUT
        data = build_dtmf_pcap(args.dtmf, payload_type=args.dtmf_pt)
        what = f"RFC 4733 digits {args.dtmf!r} PT {args.dtmf_pt}"
    else:
        out = args.out
        data = build_pcap(args.seconds)
        what = f"{args.seconds:.1f} s PCMU"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(f"wrote {out} ({len(data)} bytes, {what})")


if __name__ == "__main__":
    main()
