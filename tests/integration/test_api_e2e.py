"""The HTTP API of a real node end to end: dial a SIPp UAS with `POST /v1/calls`, follow the
call in the call log and its events, hang up through the API, download the recording (with a
Range), read /health, /readiness, /metrics, and see /readiness turn 503 while the node drains."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.server import Server, ServerConnection, serve

from tests.integration.node import NodeProcess, base_config
from tests.integration.peers import HOST, Sipp, free_port

pytestmark = pytest.mark.integration

KEY = "sk-e2e-5d1f0c"


@pytest.fixture
def silent_agent() -> Iterator[int]:
    """A Twilio Media Streams agent that listens and never speaks (the call gets recorded)."""

    def handler(ws: ServerConnection) -> None:
        for _ in ws:  # read until the node closes the stream
            pass

    server: Server = serve(handler, HOST, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.socket.getsockname()[1])
    server.shutdown()
    thread.join(5)


def until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_calls_through_the_http_api(tmp_path: Path, silent_agent: int) -> None:
    uas = Sipp("uas.xml", calls=None, workdir=tmp_path / "uas").start()
    api_port = free_port("tcp")
    config = base_config(
        tmp_path,
        node={"id": "api-node", "drain_timeout": 3},
        trunks=[{"id": "loopback", "proxy": f"sip:{HOST}:{uas.port}",
                 "allowed_destinations": ["+1555"], "max_concurrent_calls": 10}],
        agents=[{"id": "echo", "type": "echo", "delay_ms": 100},
                {"id": "bot", "type": "twilio-ws", "url": f"ws://{HOST}:{silent_agent}/media"}],
        api={"enabled": True, "listen": HOST, "port": api_port,
             "api_keys": ["${SIPEDGE_E2E_KEY}"]},
        recording={"enabled": False},  # this call asks for its own recording
    )  # fmt: skip
    node = NodeProcess(tmp_path, config, env={"SIPEDGE_E2E_KEY": KEY})
    base = f"http://{HOST}:{api_port}"
    try:
        node.start()
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"},
                          timeout=5) as api:  # fmt: skip
            assert api.get("/health").json()["status"] == "ok"
            assert api.get("/readiness").status_code == 200
            assert httpx.get(f"{base}/v1/calls").status_code == 401

            placed = api.post(
                "/v1/calls",
                headers={"Idempotency-Key": "e2e-1"},
                json={
                    "to": "+15551230000",
                    "agent": "bot",
                    "variables": {"lead": "42"},
                    "record": True,
                },
            )
            assert placed.status_code == 202, placed.text
            call = placed.json()["data"]
            assert call["status"] == "dialing" and call["to"] == "+15551230000"
            call_id = call["id"]

            def status() -> str:
                return str(api.get(f"/v1/calls/{call_id}").json()["data"]["status"])

            until(lambda: status() == "answered", "the call to be answered")
            log = api.get("/v1/calls", params={"status": "answered", "number": "+15551230000"})
            assert [c["id"] for c in log.json()["data"]] == [call_id]
            assert log.json()["data"][0]["variables"] == {"lead": "42"}
            assert "sipedge_active_calls 1" in httpx.get(f"{base}/metrics").text
            trunk = api.get("/v1/trunks/loopback").json()["data"]
            assert trunk["active_calls"] == 1

            time.sleep(1.0)  # a second of audio in the recording
            hung = api.post(f"/v1/calls/{call_id}/hangup")
            assert hung.status_code == 202 and hung.json()["data"]["status"] == "hanging_up"
            until(lambda: status() == "completed", "the call to complete")
            events = api.get(f"/v1/calls/{call_id}/events", params={"per_page": 100}).json()
            types = [e["type"] for e in events["data"]]
            assert types[0] == "call.placed" and "call.answered" in types
            assert "call.completed" in types
            assert [e["seq"] for e in events["data"]] == list(range(1, len(types) + 1))
            done = api.get(f"/v1/calls/{call_id}").json()["data"]
            assert done["hangup_by"] == "control_plane" and done["duration"] >= 1.0

            def recording() -> httpx.Response | None:
                res = api.get(f"/v1/calls/{call_id}/recording")
                return res if res.status_code == 200 else None

            wav = until(recording, "the recording").content
            assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE" and len(wav) > 8000 * 4 * 0.5
            head = api.get(f"/v1/calls/{call_id}/recording", headers={"Range": "bytes=0-43"})
            assert head.status_code == 206 and head.content == wav[:44]
            meta = api.get(f"/v1/recordings/{call_id}").json()["data"]
            assert (meta["channels"], meta["bits_per_sample"], meta["bytes"]) == (2, 16, len(wav))
            assert meta["duration"] >= 1.0 and meta["created_at"].endswith("Z")
            assert api.get(meta["url"]).content == wav
            assert api.get("/v1/recordings?skip=0&limit=5").json()["meta"]["total"] == 1
            figures = api.get("/v1/analytics/calls").json()["data"]
            assert (figures["total"], figures["answered"]) == (1, 1)
            assert api.post(f"/v1/calls/{call_id}/hangup").status_code == 409

            deleted = api.delete(f"/v1/recordings/{call_id}")
            assert deleted.status_code == 200 and deleted.json()["data"]["available"] is False
            assert not Path(str(api.get(f"/v1/calls/{call_id}/events").json()["data"][-1]
                                ["data"]["path"])).exists()  # fmt: skip
            assert api.get(f"/v1/calls/{call_id}/recording").status_code == 404

            metrics = httpx.get(f"{base}/metrics").text
            assert 'sipedge_calls_total{direction="outbound",result="completed"} 1' in metrics
            assert "sipedge_active_calls 0" in metrics

            env = {**os.environ, "SIPEDGE_API_URL": base, "SIPEDGE_API_KEY": KEY}
            cli = subprocess.run(
                [sys.executable, "-m", "gateway.cli", "calls", "--status", "completed"],
                capture_output=True, text=True, env=env, timeout=20, check=False,
            )  # fmt: skip
            assert cli.returncode == 0, cli.stderr
            assert call_id in cli.stdout and "page 1 of 1, 1 calls" in cli.stdout
            assert KEY not in cli.stdout + cli.stderr

            # Draining: a live call keeps the node up, and /readiness says it takes no calls.
            second = api.post("/v1/calls", json={"to": "+15551230001", "agent": "echo"})
            second_id = second.json()["data"]["id"]
            until(lambda: api.get(f"/v1/calls/{second_id}").json()["data"]["status"]
                  == "answered", "the second call to be answered")  # fmt: skip
            assert node.proc is not None
            node.proc.send_signal(signal.SIGTERM)
            ready = until(lambda: (r := httpx.get(f"{base}/readiness")).status_code == 503 and r,
                          "readiness to turn 503")  # fmt: skip
            assert "node is draining" in ready.json()["reasons"]
        assert node.stop() == 0
        assert KEY not in node.log()
    finally:
        node.stop()
        uas.stop()


def test_the_retention_sweep_deletes_old_recordings_when_the_node_starts(tmp_path: Path) -> None:
    """A recording older than `recording.retention_days` in the node's file goes at start: the
    WAV is removed, the call keeps `recording_deleted_at`, `call.recording.deleted` is sent."""
    from datetime import UTC, datetime, timedelta

    from gateway.store.sqlite import Store, StoredCall

    api_port = free_port("tcp")
    config = base_config(
        tmp_path,
        api={"enabled": True, "listen": HOST, "port": api_port,
             "api_keys": ["${SIPEDGE_E2E_KEY}"]},
        recording={"enabled": False, "retention_days": 7},
    )  # fmt: skip
    old, young = tmp_path / "old.wav", tmp_path / "young.wav"
    store = Store(config["storage"]["path"])
    for call_id, path, age in (("call_" + "1" * 24, old, 10), ("call_" + "2" * 24, young, 1)):
        path.write_bytes(b"RIFF....WAVE")
        made = datetime.now(UTC) - timedelta(days=age)
        store.create_call(StoredCall(id=call_id, direction="inbound", status="completed",
                                     created_at=made, ended_at=made))  # fmt: skip
        store.update_call(call_id, {"recording_path": str(path), "recording_at": made,
                                    "recording_bytes": 12})  # fmt: skip
    store.close()
    node = NodeProcess(tmp_path, config, env={"SIPEDGE_E2E_KEY": KEY})
    try:
        node.start()
        until(lambda: not old.exists(), "the old recording to be swept")
        assert young.exists()
        auth = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=f"http://{HOST}:{api_port}", headers=auth, timeout=5) as api:
            events = api.get("/v1/calls/call_" + "1" * 24 + "/events").json()["data"]
            assert events[-1]["type"] == "call.recording.deleted"
            assert events[-1]["data"] == {"path": str(old), "bytes": 12, "reason": "retention"}
            listed = api.get("/v1/recordings").json()["data"]
            assert [r["call_id"] for r in listed] == ["call_" + "2" * 24]
        assert node.stop() == 0
        assert "event=recording_deleted call_id=call_" + "1" * 24 in node.log()
    finally:
        node.stop()


def test_oversized_requests_are_refused_at_the_edge_and_the_worker_keeps_its_calls(
    tmp_path: Path,
) -> None:
    """A 70 KB `variables` over HTTP and over MQTT used to kill the SIP worker (the IPC line
    reader's 64 KiB limit) and hang up every call: now each is refused naming the limit, and
    the call that was up stays up."""
    from tests.integration.mqtt_watch import MqttWatch

    uas = Sipp("uas.xml", calls=None, workdir=tmp_path / "uas").start()
    api_port = free_port("tcp")
    config = base_config(
        tmp_path,
        trunks=[{"id": "loopback", "proxy": f"sip:{HOST}:{uas.port}",
                 "allowed_destinations": ["+1555"], "max_concurrent_calls": 10}],
        api={"enabled": True, "listen": HOST, "port": api_port,
             "api_keys": ["${SIPEDGE_E2E_KEY}"]},
    )  # fmt: skip
    node = NodeProcess(tmp_path, config, env={"SIPEDGE_E2E_KEY": KEY})
    huge = {"to": "+15551230000", "agent": "echo", "variables": {"notes": "x" * 70_000}}
    try:
        node.start()
        with httpx.Client(base_url=f"http://{HOST}:{api_port}", timeout=5,
                          headers={"Authorization": f"Bearer {KEY}"}) as api, \
                MqttWatch(node.mqtt_port) as mq:  # fmt: skip
            call_id = api.post("/v1/calls", json={"to": "+15551230000", "agent": "echo"}).json()[
                "data"
            ]["id"]
            mq.wait_event("call.answered", call_id)

            refused = api.post("/v1/calls", json=huge)
            assert refused.status_code == 413, refused.text
            error = refused.json()["error"]
            assert error["code"] == "payload_too_large" and "65536 bytes" in error["message"]
            assert error["details"][0]["limit"] == 65536
            reply = mq.command("call.originate", huge)
            assert reply["error"]["code"] == "payload_too_large", reply
            assert reply["error"]["details"][0]["limit"] == 65536
            too_many = {**huge, "variables": {f"k{i}": "v" * 200 for i in range(80)}}
            assert mq.command("call.originate", too_many)["error"]["code"] == "invalid_parameter"

            # The worker is alive and still holds the call; a normal request still works.
            assert api.get(f"/v1/calls/{call_id}").json()["data"]["status"] == "answered"
            assert api.get("/health").json()["checks"]["sip_worker"] == "ok"
            fits = {"to": "+15551230001", "agent": "echo",
                    "variables": {f"k{i}": "v" * 200 for i in range(60)}}  # fmt: skip
            second = api.post("/v1/calls", json=fits)
            assert second.status_code == 202, second.text
            second_id = second.json()["data"]["id"]
            placed = mq.wait_event("call.placed", second_id)
            assert placed["data"]["variables"] == fits["variables"]
            for live in (call_id, second_id):
                mq.wait_event("call.answered", live)
                assert api.post(f"/v1/calls/{live}/hangup").status_code == 202
                done = mq.wait_event("call.completed", live)
                assert done["data"]["hangup_by"] == "control_plane"
        assert "worker_exited" not in node.log()
        assert node.stop() == 0
    finally:
        node.stop()
        uas.stop()
