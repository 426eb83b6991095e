"""The session factory: a worker without a WebRTC agent never loads aiortc, av or httpx."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROGRAM = """
import asyncio, sys
from gateway.config import Config
import gateway.worker.process
from gateway.session.factory import make_session_factory

config = Config.model_validate({"agents": [%s]})
make_session_factory(config, asyncio.new_event_loop())
print(" ".join(sorted(m for m in ("aiortc", "av", "httpx") if m in sys.modules)))
"""
TWILIO = '{"id": "bot", "type": "twilio-ws", "url": "ws://127.0.0.1:9"}'
WEBRTC = '{"id": "rtc", "type": "webrtc", "url": "http://127.0.0.1:9/whip"}'


def loaded_after_factory(agents: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM % agents], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize(
    "agents", ["", TWILIO, '{"id": "e", "type": "echo"}'], ids=["none", "twilio-ws", "echo"]
)
def test_a_worker_without_a_webrtc_agent_loads_no_webrtc_stack(agents: str) -> None:
    assert loaded_after_factory(agents) == ""


def test_a_worker_with_a_webrtc_agent_loads_it_when_it_makes_its_factory() -> None:
    assert loaded_after_factory(f"{TWILIO}, {WEBRTC}") == "aiortc av httpx"
