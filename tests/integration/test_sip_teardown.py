"""Call teardown against pjsua2's threads: an audio port that leaves the conference bridge is
never called again, even when dropped or left past libDestroy; a released call never touches
the call that took its pjsua slot; workers survive many short calls ending together.
(Frame sizes handed to the bridge: tests/gateway/sip/test_audio_port.py.)

The port race is driven deterministically in a child process (a crash must fail the test,
not kill pytest): with a huge GIL switch interval the main thread keeps the GIL while it
spins, so the clock thread's next tick blocks on the GIL *inside* the port's get_frame; then
the port is dropped, and the SWIG destructor releases the GIL while the bridge still holds it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.integration.faults import worker_faults
from tests.integration.node import NodeProcess, base_config
from tests.integration.peers import HOST, Sipp, free_sip_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]

RACE = textwrap.dedent(
    """
    import sys, threading, time
    import pjsua2 as pj
    from gateway.config import SipSettings
    from gateway.session.contract import EchoSession
    from gateway.sip.call import AudioPort
    from gateway.sip.endpoint import create_endpoint

    ep, writer = create_endpoint(
        SipSettings(listen="127.0.0.1", port={port}, transports=["udp"]), 16000
    )
    sink = ep.audDevManager().getPlaybackDevMedia()
    fmt = pj.MediaFormatAudio()
    fmt.init(pj.PJMEDIA_FORMAT_PCM, 16000, 1, 20000, 16)
    pulled = threading.Event()

    class Session(EchoSession):
        def next_frame(self):
            pulled.set()
            return super().next_frame()

    sys.setswitchinterval(30)  # the main thread keeps the GIL until it blocks
    for i in range({rounds}):
        port = AudioPort(Session(20, 16000))
        port.createPort(f"race-{{i}}", fmt)
        port.startTransmit(sink)
        pulled.clear()
        if not pulled.wait(5):  # the clock thread pulls frames from the port
            sys.exit("the bridge never called the port")
        end = time.perf_counter() + 0.045  # two clock ticks: the next get_frame waits on us
        while time.perf_counter() < end:
            pass
        {drop}
    ep.libDestroy()
    print("rounds done", flush=True)
    """
)


def run_race(drop: str, rounds: int = 12) -> subprocess.CompletedProcess[str]:
    code = RACE.format(port=free_sip_port(), rounds=rounds, drop=drop)
    return subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )


def assert_clean(res: subprocess.CompletedProcess[str]) -> None:
    output = res.stdout + res.stderr
    assert res.returncode == 0, output[-4000:]
    assert "rounds done" in res.stdout, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    assert "Fatal Python error" not in output, output[-4000:]


def test_port_dropped_while_the_bridge_waits_to_call_it_is_never_called_dead() -> None:
    # What releasing a call did: the last reference goes, the object is freed while its C++
    # port is still in the bridge (today: AttributeError 'session' on the clock thread, then a
    # crash in the garbage collector).
    assert_clean(run_race("del port"))


def test_port_closed_on_the_sip_thread_leaves_the_bridge_before_it_dies() -> None:
    assert_clean(run_race("port.close(); del port"))


OUTLIVES = textwrap.dedent(
    """
    import pjsua2 as pj
    from gateway.config import SipSettings
    from gateway.session.contract import EchoSession
    from gateway.sip.call import AudioPort
    from gateway.sip.endpoint import create_endpoint

    ep, writer = create_endpoint(
        SipSettings(listen="127.0.0.1", port={port}, transports=["udp"]), 16000
    )
    fmt = pj.MediaFormatAudio()
    fmt.init(pj.PJMEDIA_FORMAT_PCM, 16000, 1, 20000, 16)
    port = AudioPort(EchoSession(20, 16000))
    port.createPort("late", fmt)
    port.startTransmit(ep.audDevManager().getPlaybackDevMedia())
    ep.libDestroy()
    del port
    print("rounds done", flush=True)
    """
)


def test_a_port_that_outlives_the_endpoint_is_dropped_without_touching_pjmedia() -> None:
    # Anything still holding a port at libDestroy (a stray reference, interpreter exit):
    # its destructor asserted in pjmedia_conf_remove_port and aborted the worker.
    code = OUTLIVES.format(port=free_sip_port())
    assert_clean(
        subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c", code],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    )


def test_a_released_call_never_hangs_up_the_call_that_took_its_pjsua_slot(tmp_path: Path) -> None:
    # pjsua2's ~Call clears the user data of, and hangs up, whatever call holds its slot id
    # when it runs. Released after a new call took the slot, the old SipCall hung that call
    # up (SIPp: "unexpected BYE") and left it counted forever (no callbacks reach it).
    res = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-m", "tests.integration.released_call_child"]
        + [str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    assert res.returncode == 0 and lines, (res.stdout + res.stderr)[-4000:]
    result = json.loads(lines[-1])
    # A failed call first: a refused INVITE never takes a slot, so the 5th call would find a
    # fresh one and the next line would only say the test proved nothing (CI saw that once).
    assert result["failed"] == 0, result["errors"]
    assert result["successful"] == 5 and result["left"] == 0, result
    assert result["dropped"], f"no call reused a slot: the test proved nothing: {result}"
    assert "Fatal Python error" not in res.stderr and "Traceback" not in res.stderr, res.stderr


@pytest.mark.slow
def test_workers_survive_many_short_calls_ending_together(tmp_path: Path) -> None:
    # Two nodes side by side (two workers on one machine, as in production), SIPp at 30 calls/s
    # into each: calls with RTP, 4 answered at a time per worker, the rest refused with 503,
    # calls ending while others start. About 60 answered calls in all, in ~20 s.
    nodes = []
    for i in range(2):
        config = base_config(tmp_path / f"n{i}", limits={"max_concurrent_calls": 10})
        config["sip"]["rtp_ports"] = {"start": 32000 + i * 200, "end": 32199 + i * 200}
        (tmp_path / f"n{i}").mkdir()
        nodes.append(NodeProcess(tmp_path / f"n{i}", config, log_level="INFO"))
    try:
        for node in nodes:
            node.start()
        sipps = [
            Sipp(
                "uac_pcap.xml",
                remote=(HOST, node.sip_port),
                service="+15550100",
                calls=600,
                rate=30,
                limit=6,
                duration_ms=0,
                workdir=node.tmp / "sipp",
            ).start()
            for node in nodes
        ]
        results = [sipp.wait(timeout=120) for sipp in sipps]
        for node in nodes:  # every call the node took has ended: its log says so
            node.wait_log("event=call_", timeout=10)
    finally:
        for node in nodes:
            node.stop()
    answered = 0
    for node, res in zip(nodes, results, strict=True):
        log = node.log()
        faults = worker_faults(log)
        assert faults.clean, (faults, log[-3000:])
        assert res.successful == faults.answered_calls, (res.successful, res.errors[-2000:])
        assert res.failed == res.errors.count("SIP/2.0 503"), res.errors[-2000:]
        answered += faults.answered_calls
    assert answered >= 40, answered
