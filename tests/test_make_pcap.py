"""sipp_scenarios/make_pcap.py --from-wav: a WAV's samples become PCMU RTP, 20 ms per packet."""

from __future__ import annotations

import importlib.util
import struct
import wave
from pathlib import Path
from types import ModuleType

import pytest

SCENARIOS = Path(__file__).resolve().parents[1] / "sipp_scenarios"
HEADERS = 14 + 20 + 8 + 12  # Ethernet, IPv4, UDP, RTP


def make_pcap() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_pcap", SCENARIOS / "make_pcap.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_wav(path: Path, samples: list[int], rate: int = 8000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(struct.pack(f"<{len(samples)}h", *samples))


def packets(pcap: bytes) -> list[bytes]:
    out, i = [], 24
    while i < len(pcap):
        length = struct.unpack("<I", pcap[i + 8 : i + 12])[0]
        out.append(pcap[i + 16 : i + 16 + length])
        i += 16 + length
    return out


def test_from_wav_carries_the_samples_in_order_and_pads_the_last_packet(tmp_path: Path) -> None:
    mp = make_pcap()
    samples = [(n * 37) % 20000 - 10000 for n in range(400)]  # 2.5 packets
    write_wav(tmp_path / "in.wav", samples)
    rtp = packets(mp.build_pcap_from_wav(tmp_path / "in.wav"))
    assert len(rtp) == 3
    payload = b"".join(p[HEADERS:] for p in rtp)
    assert payload == bytes(mp.linear_to_ulaw(s) for s in samples + [0] * 80)
    seqs = [struct.unpack("!H", p[14 + 20 + 8 + 2 : 14 + 20 + 8 + 4])[0] for p in rtp]
    stamps = [struct.unpack("!I", p[14 + 20 + 8 + 4 : 14 + 20 + 8 + 8])[0] for p in rtp]
    assert seqs == [1, 2, 3] and stamps == [0, 160, 320]
    assert rtp[0][14 + 20 + 8 + 1] == 0x80 and rtp[1][14 + 20 + 8 + 1] == 0  # marker, PT 0


def test_from_wav_refuses_audio_that_is_not_8khz_mono_pcm16(tmp_path: Path) -> None:
    write_wav(tmp_path / "wide.wav", [0] * 320, rate=16000)
    with pytest.raises(SystemExit, match="8000 Hz mono"):
        make_pcap().build_pcap_from_wav(tmp_path / "wide.wav")


def test_committed_amd_pcaps_are_whole_pcmu_packets() -> None:
    for name, count in (("amd_human_pcmu.pcap", 213), ("amd_machine_pcmu.pcap", 434)):
        rtp = packets((SCENARIOS / "pcap" / name).read_bytes())
        assert len(rtp) == count
        assert {len(p) - HEADERS for p in rtp} == {160}
