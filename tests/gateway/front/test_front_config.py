"""`sipedge front-config FILE`: the front's Kamailio files for an operator who runs Kamailio."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main

CONFIG = """\
sip: {listen: 192.0.2.10, port: 5060, front: {mode: external}}
node: {workers: 2}
trunks:
  - id: carrier
    register: true
    registrar: sip:registrar.example.com
    username: "4420700000"
    password: ${FRONT_TEST_PASSWORD}
    allowed_ips: [198.51.100.0/24]
numbers:
  - {number: "+15550100", agent: echo}
agents:
  - {id: echo, type: echo}
"""


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FRONT_TEST_PASSWORD", "supersecret")
    path = tmp_path / "node.yaml"
    path.write_text(CONFIG)
    return path


def test_front_config_prints_the_kamailio_config_without_secrets(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["front-config", str(config_file), "--dir", "/etc/kamailio/edge"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("#!KAMAILIO")
    assert 'modparam("dispatcher", "list_file", "/etc/kamailio/edge/dispatcher.list")' in out
    assert 'is_in_subnet("$si", "198.51.100.0/24")' in out
    assert "supersecret" not in out + err and "4420700000" not in out
    assert "--out /etc/kamailio/edge" in err


def test_front_config_out_writes_both_files(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "front"
    assert main(["front-config", str(config_file), "--out", str(out_dir)]) == 0
    written = sorted(p.name for p in out_dir.iterdir())
    assert written == ["dispatcher.list", "kamailio.cfg"]
    assert "duid=worker-2" in (out_dir / "dispatcher.list").read_text()
    assert str(out_dir / "kamailio.cfg") in capsys.readouterr().out


def test_front_config_of_a_node_without_a_front_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text("agents: [{id: echo, type: echo}]\n")
    assert main(["front-config", str(path)]) == 2
    assert "sip.front.mode is none" in capsys.readouterr().err


def cluster_node(tmp_path: Path, node_id: str, worker_host: str) -> Path:
    """A node of a cluster: its workers on its own address, the front's socket elsewhere."""
    path = tmp_path / f"{node_id}.yaml"
    front = f"front: {{mode: external, worker_host: {worker_host}, host: 192.0.2.10, port: 5159}}"
    path.write_text(
        CONFIG.replace("front: {mode: external}", f"rtp_listen: {worker_host}, {front}").replace(
            "node: {workers: 2}", f"node: {{id: {node_id}, workers: 1}}"
        )
    )
    return path


def test_front_config_of_several_nodes_lists_the_workers_of_each(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = cluster_node(tmp_path, "node-a", "10.0.0.2")
    b = cluster_node(tmp_path, "node-b", "10.0.0.3")
    out_dir = tmp_path / "front"
    assert main(["front-config", str(a), str(b), "--out", str(out_dir)]) == 0
    listed = (out_dir / "dispatcher.list").read_text()
    assert "sip:10.0.0.2:5160 8 0 duid=node-a/worker-1;" in listed
    assert "sip:10.0.0.3:5160 8 0 duid=node-b/worker-1;" in listed


def test_front_config_says_why_nodes_cannot_share_a_front(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = cluster_node(tmp_path, "node-a", "10.0.0.2")
    assert main(["front-config", str(a), str(a)]) == 2
    assert f"{a}: node.id 'node-a' is also {a}'s" in capsys.readouterr().err


def test_front_config_reload_needs_the_directory_the_front_reads(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["front-config", str(config_file), "--reload"]) == 2
    assert "--reload needs --out DIR" in capsys.readouterr().err


def test_front_config_writes_tls_cfg_and_names_the_digest_variables_without_their_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.integration.tlscerts import CertAuthority

    ca = CertAuthority(tmp_path / "pki")
    front = ca.issue("front")
    monkeypatch.setenv("PBX_PASSWORD", "pbx-password-value")
    path = tmp_path / "tls.yaml"
    path.write_text(
        "sip: {listen: 192.0.2.10, port: 5060, front: {mode: external},\n"
        f"  tls: {{certificate: {front.certificate}, private_key: {front.key},"
        f" ca_file: {ca.ca_file}}}}}\n"
        "trunks: [{id: pbx, allowed_ips: [192.0.2.20/32],\n"
        "  inbound_auth: {username: office, password: '${PBX_PASSWORD}'}}]\n"
    )
    out_dir = tmp_path / "front"
    assert main(["front-config", str(path), "--out", str(out_dir)]) == 0
    out, err = capsys.readouterr()
    assert sorted(p.name for p in out_dir.iterdir()) == ["dispatcher.list", "kamailio.cfg",
                                                         "tls.cfg"]  # fmt: skip
    assert f"certificate = {front.certificate}" in (out_dir / "tls.cfg").read_text()
    assert "set SIPEDGE_AUTH_PBX for Kamailio" in err
    written = "".join(p.read_text() for p in out_dir.iterdir())
    assert "pbx-password-value" not in out + err + written
