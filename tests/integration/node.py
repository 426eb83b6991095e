"""Run a real sipedge node (`sipedge run`) for integration tests, on free loopback ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from tests.integration.peers import free_port, free_sip_port, free_udp_port_run, sip_options


def trunk_to(port: int, **extra: Any) -> list[dict[str, Any]]:
    """A static loopback trunk whose outbound calls go to 127.0.0.1:`port` (a SIPp UAS)."""
    return [
        {
            "id": "loopback",
            "allowed_ips": ["127.0.0.0/8"],
            "proxy": f"sip:127.0.0.1:{port}",
            "allowed_destinations": ["+1555"],
            "max_concurrent_calls": 10,
            **extra,
        }
    ]


def base_config(tmp: Path, **overrides: Any) -> dict[str, Any]:
    """A loopback node config: echo agent on +15550100, a trunk to `uas_port` for dial-out."""
    config: dict[str, Any] = {
        "node": {"id": "test-node", "drain_timeout": 5},
        "sip": {
            "listen": "127.0.0.1",
            "port": free_sip_port(),
            "transports": ["udp", "tcp"],
            "rtp_ports": {
                "start": 10000 + (os.getpid() % 200) * 100,
                "end": 10000 + (os.getpid() % 200) * 100 + 99,
            },
        },
        "trunks": [
            {
                "id": "loopback",
                "allowed_ips": ["127.0.0.0/8"],
                "proxy": f"sip:127.0.0.1:{free_port()}",
                "allowed_destinations": ["+1555"],
                "max_concurrent_calls": 10,
            }
        ],
        "numbers": [{"number": "+15550100", "agent": "echo", "variables": {"campaign": "test"}}],
        "agents": [{"id": "echo", "type": "echo", "delay_ms": 100}],
        "mqtt": {"embedded": True, "port": free_port("tcp"), "prefix": "sipedge"},
        "api": {"enabled": False},
        "storage": {"path": str(tmp / "sipedge.db"), "recordings_dir": str(tmp / "recordings")},
        "limits": {"max_concurrent_calls": 10, "ring_timeout": 30},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def workers_config(tmp: Path, workers: int, **overrides: Any) -> dict[str, Any]:
    """base_config with `workers` SIP workers behind the node's own front (Kamailio, on
    sip.port); tests may also reach each worker on its own port, `NodeProcess.worker_port(i)`.
    The workers' ports (UDP and TCP), and the front's own socket for them just below, are
    checked free."""
    config = base_config(tmp, **overrides)
    first = free_udp_port_run(workers + 1, tcp="tcp" in config["sip"]["transports"]) + 1
    front = {"mode": "embedded", "worker_ports_start": first}
    config["sip"] = {**config["sip"], "front": front}
    config["node"] = {**config["node"], "workers": workers}
    return config


class NodeProcess:
    """`python -m gateway.cli run --config FILE` as a child process with its log in a file."""

    def __init__(
        self,
        tmp: Path,
        config: dict[str, Any],
        env: dict[str, str] | None = None,
        log_level: str = "DEBUG",
        cwd: Path | None = None,
    ):
        self.tmp = tmp
        self.cwd = cwd  # where relative paths in the config (storage) resolve
        self.log_level = log_level
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.path = tmp / f"node-{uuid.uuid4().hex[:6]}.yaml"
        self.log_path = tmp / f"{self.path.stem}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def sip_port(self) -> int:
        return int(self.config["sip"]["port"])

    def worker_port(self, index: int) -> int:
        """SIP port of worker `index` (1-based) behind a front; the node's port without one."""
        front = self.config["sip"].get("front") or {}
        if front.get("mode", "none") == "none":
            return self.sip_port
        return int(front.get("worker_ports_start") or self.sip_port + 100) + index - 1

    @property
    def ready_address(self) -> tuple[str, int]:
        """What answers OPTIONS once the node runs: the front, else worker 1 (an external
        front is not started by the node; its workers may listen on an address of their own)."""
        front = self.config["sip"].get("front") or {}
        if front.get("mode") == "external":
            return front.get("worker_host", "127.0.0.1"), self.worker_port(1)
        return "127.0.0.1", self.sip_port

    @property
    def mqtt_port(self) -> int:
        return int(self.config["mqtt"]["port"])

    def start(self, timeout: float = 30.0) -> NodeProcess:
        self.path.write_text(yaml.safe_dump(self.config))
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "--log-level",
                self.log_level,
                "run",
                "--config",
                str(self.path),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log()}")
            running = "event=node_running" in self.log()
            if running and sip_options(*self.ready_address, timeout=0.5):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"node did not become ready:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 20.0, count: int = 1) -> str:
        """The log once `text` appears in it `count` times (polls the file)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if log.count(text) >= count:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in node log:\n{self.log()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL the whole node (supervisor, worker, embedded broker)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self._log.close()

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
