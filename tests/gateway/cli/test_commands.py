"""`sipedge check-config FILE`: exit 0 with a summary, or exit 2 with one line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main

ROOT = Path(__file__).resolve().parents[3]

VALID = """\
node: {id: cli-node}
trunks:
  - id: carrier
    register: true
    registrar: sip:registrar.example.com
    username: "4420700000"
    password: ${CLI_TEST_PASSWORD}
    allowed_ips: [198.51.100.0/24]
numbers:
  - {number: "+15550100", agent: echo}
agents:
  - {id: echo, type: echo}
"""

INVALID = """\
sip:
  port: 99999
  colour: red
trunks:
  - id: carrier
    password: hunter2
numbers:
  - {number: "15550100", agent: echo}
"""


@pytest.fixture(autouse=True)
def password(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CLI_TEST_PASSWORD", "supersecret")
    return "supersecret"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "node.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_check_config_accepts_a_valid_file_and_prints_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, VALID)
    assert main(["check-config", path]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"{path}: OK"
    assert "node cli-node:" in out
    assert "carrier: registers with sip:registrar.example.com as 4420700000" in out
    assert "+15550100 -> agent echo" in out
    assert "supersecret" not in out + err


def test_check_config_reports_each_problem_on_its_own_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, INVALID)
    assert main(["check-config", path]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines == [
        f"{path}: trunks[0].password: secrets must be an ${{ENV}} reference, not literal text",
        f"{path}: sip.port: Input should be less than or equal to 65535 (got 99999)",
        f"{path}: sip.colour: unknown key (not part of the sipedge config)",
        f"{path}: numbers[0].number: expected an E.164 number like +15551234567 (got '15550100')",
    ]
    assert "hunter2" not in err


def test_check_config_names_a_missing_variable_without_a_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLI_TEST_PASSWORD")
    path = write(tmp_path, VALID)
    assert main(["check-config", path]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{path}: trunks[0].password: environment variable CLI_TEST_PASSWORD is not set"
    ]


def test_check_config_reports_invalid_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "sip:\n  port: [5060\n")
    assert main(["check-config", path]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{path}: line ") and "invalid YAML" in line


def test_check_config_reports_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "absent.yaml")
    assert main(["check-config", path]) == 2
    assert capsys.readouterr().err.startswith(f"{path}: cannot read file")


def test_check_config_accepts_the_shipped_local_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SIPEDGE_API_KEY", raising=False)
    assert main(["check-config", str(ROOT / "configs" / "local.yaml")]) == 0
    out = capsys.readouterr().out
    assert "node local:" in out and "dev-key" not in out


def test_check_config_needs_a_file_argument(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["check-config"])
    assert info.value.code == 2
    assert "file" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n"])
def test_check_config_refuses_an_empty_file_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    path = write(tmp_path, text)
    assert main(["check-config", path]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{path}: the file is empty: expected a sipedge config")


def test_check_config_refuses_the_api_on_the_sip_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, VALID + "sip: {listen: 127.0.0.1, port: 8080}\n")
    assert main(["check-config", path]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{path}: api.port: 8080 is also sip.port (8080) and both listen on TCP at 127.0.0.1: "
        "give each its own port"
    ]


def test_check_config_warns_when_max_concurrent_calls_is_above_the_engine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, VALID + "limits: {max_concurrent_calls: 40}\n")
    assert main(["check-config", path]) == 0
    out, err = capsys.readouterr()
    assert "limits: 4 calls at once" in out
    assert err.splitlines() == [
        f"{path}: warning: limits.max_concurrent_calls: 40 is more than this node holds: "
        "1 SIP worker x 4 calls (PJSUA_MAX_CALLS of the pjsua2 build); it takes at most 4 "
        "calls at once and answers more with 503"
    ]


def test_check_config_of_the_shipped_configs_has_no_warning(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("CARRIER_PASSWORD", "AGENT_TOKEN", "TURN_PASSWORD", "MQTT_USERNAME",
                 "MQTT_PASSWORD", "SIPEDGE_API_KEY", "SIPEDGE_ADMIN_KEY",
                 "PBX_PASSWORD", "WEBHOOK_SECRET"):  # fmt: skip
        monkeypatch.setenv(name, f"value-of-{name.lower()}")
    for config in ("local.yaml", "example-carrier.yaml"):
        assert main(["check-config", str(ROOT / "configs" / config)]) == 0
        assert capsys.readouterr().err == ""


def test_an_unknown_log_level_is_a_usage_error_listing_the_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--log-level", "verbose", "check-config", "x.yaml"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "argument --log-level: invalid choice: 'VERBOSE'" in err
    assert "DEBUG" in err and "INFO" in err and "WARNING" in err and "ERROR" in err


def test_the_log_level_is_case_insensitive(tmp_path: Path) -> None:
    assert main(["--log-level", "debug", "check-config", write(tmp_path, VALID)]) == 0
