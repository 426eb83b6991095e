"""gateway/plane/process.py without workers or RTP: what the clock runs after a tick's frames."""

from __future__ import annotations

import logging
import socket

import pytest

from gateway.config import Config
from gateway.plane.process import Plane

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
