"""A SIP engine that cannot start says why and its process exits cleanly.

In a child process (an abort must fail the test, not kill pytest): the engine's SIP port is
taken, so pjsua's transportCreate fails inside start(). The bench found a worker behind the
front refused that way (another process had taken its port) and then killed by SIGABRT:
pjsua2's error has no str(), so the start error read "SIP engine failed to start: ", and its
traceback kept the half-made endpoint alive until the main thread's garbage collection,
where pjlib asserts on a thread it does not know.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import gc, socket
    from gateway.config import Config
    from gateway.errors import SipEngineError
    from gateway.sip.engine import SipEngine

    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    print(port, flush=True)
    sip = {"listen": "127.0.0.1", "port": port, "transports": ["udp"]}
    engine = SipEngine(Config.model_validate({"sip": sip}), lambda e: None, lambda r, c: None)
    try:
        engine.start()
        print("started", flush=True)
    except SipEngineError as exc:
        print(f"refused: {exc}", flush=True)
    del engine
    gc.collect()
    print("exited cleanly", flush=True)
    """
)


def test_an_engine_whose_port_is_taken_names_the_error_and_exits_cleanly() -> None:
    child = subprocess.run([sys.executable, "-X", "faulthandler", "-c", CHILD], cwd=REPO,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    lines = child.stdout.splitlines()
    assert child.returncode == 0, child.stderr[-2000:]
    assert lines[-1] == "exited cleanly", child.stdout
    port, refused = lines[0], lines[1]
    assert refused == (
        "refused: SIP engine failed to start: cannot listen for SIP on UDP "
        f"127.0.0.1:{port}: Address already in use (pjsua status 120098)"
    )
