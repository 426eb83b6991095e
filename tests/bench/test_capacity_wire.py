"""bench/capacity_wire.py: how burst onsets pair up and when a frame counts as speech."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from bench.capacity_wire import AgentServer, pair, pcm_voiced, ulaw_voiced
from sipp_scenarios.make_pcap import pcm_samples, pcmu_payload
from tests.integration.peers import HOST


def test_each_onset_pairs_with_the_next_one_within_the_window() -> None:
    delays, lost = pair([1.0, 1.6, 2.2], [1.02, 1.65, 2.21])
    assert [round(d, 3) for d in delays] == [20.0, 50.0, 10.0]
    assert lost == 0


def test_an_onset_with_none_soon_after_it_is_lost() -> None:
    delays, lost = pair([1.0, 1.6, 2.2], [1.02, 2.21, 9.0])  # nothing near 1.6 (2.21 is 0.61 s on)
    assert [round(d, 3) for d in delays] == [20.0, 10.0]
    assert lost == 1


def test_an_onset_before_the_first_one_pairs_with_nothing() -> None:
    assert pair([1.0], [0.99]) == ([], 1)


def test_the_pcaps_bursts_are_voiced_and_its_gaps_silent() -> None:
    payload = pcmu_payload(0.6)  # one cycle: 400 ms burst, 200 ms gap, 30 frames of 160
    frames = [payload[i : i + 160] for i in range(0, len(payload), 160)]
    assert [ulaw_voiced(f) for f in frames] == [True] * 20 + [False] * 10
    pcm = b"".join(s.to_bytes(2, "little", signed=True) for s in pcm_samples(0.6))
    pcm_frames = [pcm[i : i + 320] for i in range(0, len(pcm), 320)]
    assert [pcm_voiced(f) for f in pcm_frames] == [True] * 20 + [False] * 10


@pytest.mark.integration
def test_the_agent_server_echoes_and_times_each_onset_heard_and_sent(tmp_path: Path) -> None:
    """A Twilio stream of silence, then speech: every media message comes back as it went,
    and the one onset is timed when the kernel got it and when its echo left."""
    from websockets.sync.client import connect

    server = AgentServer("twilio-ws", tmp_path)
    payload = pcmu_payload(0.6)
    frames = [payload[i : i + 160] for i in range(0, len(payload), 160)]
    frames = frames[20:] + frames[:20]  # the 200 ms gap first, then the 400 ms burst
    try:
        before = time.monotonic()
        with connect(f"ws://{HOST}:{server.port}/") as ws:
            ws.send(json.dumps({"event": "start", "streamSid": "MZ1",
                                "start": {"customParameters": {"to": "+15550100"}}}))  # fmt: skip
            for frame in frames:
                media = base64.b64encode(frame).decode()
                ws.send(json.dumps({"event": "media", "media": {"payload": media}}))
                echo = json.loads(ws.recv(timeout=5))
                assert echo == {"event": "media", "streamSid": "MZ1", "media": {"payload": media}}
        deadline = time.monotonic() + 10
        while "+15550100" not in server.onsets() and time.monotonic() < deadline:
            time.sleep(0.05)  # the server writes a stream's onsets when the stream ends
        (heard,), (sent,) = server.onsets()["+15550100"], server.onsets("sent")["+15550100"]
        assert before < heard <= sent < time.monotonic()
    finally:
        server.close()
