"""The config file: what parses, what is refused and how each problem is named.

Every problem line reads `<file>: <key path>: <what is wrong>`, all problems are reported at
once, and a secret value never appears in a message, a repr or the summary.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from gateway.config import Config, load_config, parse_config, summary, warnings
from gateway.errors import ConfigError, SipedgeError

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "node.yaml"
SECRET = "supersecret"

CARRIER_ENV = {
    "CARRIER_PASSWORD": SECRET,
    "AGENT_TOKEN": "agent-token-value",
    "MQTT_USERNAME": "mqtt-user",
    "MQTT_PASSWORD": "mqtt-password-value",
    "SIPEDGE_API_KEY": "api-key-value",
    "SIPEDGE_ADMIN_KEY": "admin-key-value",
    "TURN_PASSWORD": "turn-password-value",
    "PBX_PASSWORD": "pbx-password-value",
    "WEBHOOK_SECRET": "webhook-secret-value",
}

VALID = """
node: {id: test-node}
sip:
  listen: 127.0.0.1
  port: 5070
trunks:
  - id: carrier
    register: true
    registrar: sip:registrar.example.com:5060
    username: "4420700000"
    password: ${PW}
    allowed_ips: [198.51.100.0/24]
  - id: pbx
    proxy: sip:192.0.2.20
    allowed_ips: [192.0.2.20/32]
numbers:
  - {number: "+442070000000", agent: bot, trunk: carrier}
agents:
  - id: bot
    type: twilio-ws
    url: wss://agents.example.com/stream
    headers: {Authorization: "Bearer ${TOKEN}"}
mqtt:
  password: ${PW}
api:
  api_keys: ["${KEY}"]
"""
VALID_ENV = {"PW": SECRET, "TOKEN": "tok3n-value", "KEY": "k3y-value"}


def problems_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), SOURCE, {} if env is None else env)
    problems = info.value.problems
    assert problems, "a ConfigError always carries at least one problem"
    return problems


def only_problem(text: str, env: dict[str, str] | None = None) -> str:
    problems = problems_of(text, env)
    assert len(problems) == 1, problems
    return problems[0]


def assert_problem(text: str, path: str, *fragments: str, env: dict[str, str] | None = None) -> str:
    line = only_problem(text, env)
    assert line.startswith(f"{SOURCE}: {path}: "), line
    for fragment in fragments:
        assert fragment in line, line
    return line


# -- valid files -------------------------------------------------------------------------------


def test_an_empty_mapping_is_all_defaults() -> None:
    config = parse_config("{}\n", SOURCE, {})
    assert config == Config()
    assert config.sip.port == 5060
    assert config.trunks == [] and config.numbers == [] and config.agents == []


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_an_empty_file_is_refused_naming_what_is_expected(text: str) -> None:
    line = only_problem(text)
    assert line.startswith(f"{SOURCE}: the file is empty: expected a sipedge config"), line
    assert "mapping of sections" in line


def test_valid_config_parses_with_env_expanded() -> None:
    config = parse_config(VALID, SOURCE, VALID_ENV)
    carrier = config.trunk("carrier")
    assert carrier is not None and carrier.registers
    assert carrier.password is not None and carrier.password.get_secret_value() == SECRET
    assert config.agent("bot") is not None
    assert config.agent("bot").headers["Authorization"].get_secret_value() == "Bearer tok3n-value"  # type: ignore[union-attr]
    assert [k.get_secret_value() for k in config.api.api_keys] == ["k3y-value"]
    assert config.trunk("nope") is None and config.agent("nope") is None


def test_local_yaml_loads_cleanly() -> None:
    config = load_config(ROOT / "configs" / "local.yaml", env={})
    assert config.node.id == "local"
    assert [a.type for a in config.agents] == ["echo"]
    # ${SIPEDGE_API_KEY:-dev-key} falls back to its default when the variable is unset.
    assert [k.get_secret_value() for k in config.api.api_keys] == ["dev-key"]


def test_example_carrier_yaml_loads_cleanly_with_its_variables_set() -> None:
    config = load_config(ROOT / "configs" / "example-carrier.yaml", env=CARRIER_ENV)
    carrier, static = config.trunks
    assert carrier.registers and carrier.registrar and carrier.proxy and carrier.username
    assert carrier.password is not None and carrier.password.get_secret_value() == SECRET
    assert carrier.auth_username and carrier.domain and carrier.caller_id and carrier.codecs
    assert not static.registers and static.allowed_ips
    assert {a.type for a in config.agents} >= {"echo", "twilio-ws", "pcm-ws"}
    assert any(route.variables for route in config.numbers)
    assert config.mqtt.tls is not None
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "mqtt-password-value"
    assert len(config.api.api_keys) == 2
    assert config.recording.enabled
    assert config.webhooks[0].secret.get_secret_value() == "webhook-secret-value"


def test_example_carrier_yaml_header_exports_every_variable_it_needs() -> None:
    path = ROOT / "configs" / "example-carrier.yaml"
    text = path.read_text(encoding="utf-8")
    header = [line for line in text.splitlines() if line.startswith("#")]
    exported = {
        word.split("=", 1)[0]
        for line in header
        if line.lstrip("# ").startswith("export ")
        for word in line.lstrip("# ").split()[1:]
    }
    values = json.dumps(yaml.safe_load(text))  # the settings, without the comments
    needed = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", values))  # no :-default
    assert "TURN_PASSWORD" in needed
    assert needed <= exported, f"the header does not export {sorted(needed - exported)}"
    load_config(path, env={name: f"value-of-{name.lower()}" for name in exported})


def test_example_carrier_yaml_names_every_variable_it_needs() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "configs" / "example-carrier.yaml", env={})
    text = "\n".join(info.value.problems)
    for name in CARRIER_ENV:
        assert f"environment variable {name} is not set" in text


def test_load_config_reports_an_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, env={})
    assert info.value.problems == [f"{missing}: cannot read file: No such file or directory"]


def test_load_config_names_problems_by_the_file_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("sip:\n  port: 99999\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.problems[0].startswith(f"{path}: sip.port: ")


def test_config_error_is_a_sipedge_error_with_one_line_per_problem() -> None:
    error = ConfigError(["a.yaml: x: one", "a.yaml: y: two"])
    assert isinstance(error, SipedgeError)
    assert str(error) == "a.yaml: x: one\na.yaml: y: two"


# -- YAML and shape ----------------------------------------------------------------------------


def test_invalid_yaml_names_line_and_column() -> None:
    line = only_problem("sip:\n  port: 5060\n  listen: [127.0.0.1\n")
    assert line.startswith(f"{SOURCE}: line ")
    assert "column" in line and "invalid YAML" in line


def test_invalid_yaml_line_number_is_one_based() -> None:
    line = only_problem("sip:\n  port: 5060: 5061\n")
    assert line.startswith(f"{SOURCE}: line 2 column 13: invalid YAML: mapping values")


def test_yaml_reader_error_is_one_line() -> None:
    line = only_problem("sip:\n  user_agent: \x07\n")
    assert line.startswith(f"{SOURCE}: invalid YAML: ")
    assert "\n" not in line


@pytest.mark.parametrize("text", ["- sip\n- trunks\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    assert only_problem(text) == f"{SOURCE}: (top level): expected a mapping of sections"


def test_unknown_top_level_key() -> None:
    assert_problem("colour: red\n", "colour", "unknown key")


def test_unknown_key_in_a_section() -> None:
    assert_problem("sip:\n  colour: red\n", "sip.colour", "unknown key")


def test_unknown_key_in_a_list_item_names_its_index() -> None:
    assert_problem(
        "trunks:\n  - id: a\n  - id: b\n    colour: red\n", "trunks[1].colour", "unknown key"
    )


def test_unknown_key_is_reported_even_when_its_variable_is_missing() -> None:
    problems = problems_of("sip:\n  colour: ${NOPE}\n")
    assert f"{SOURCE}: sip.colour: environment variable NOPE is not set" in problems
    assert any("sip.colour: unknown key" in p for p in problems)


def test_section_of_the_wrong_type() -> None:
    assert_problem("sip: 5\n", "sip", "valid dictionary")
    assert_problem("trunks: {id: a}\n", "trunks", "valid list")


# -- sip ---------------------------------------------------------------------------------------


def test_port_out_of_range_shows_the_value() -> None:
    assert_problem("sip:\n  port: 99999\n", "sip.port", "65535", "99999")


def test_port_of_the_wrong_type() -> None:
    assert_problem("sip:\n  port: five\n", "sip.port", "integer", "'five'")


def test_listen_must_be_an_ip_address() -> None:
    assert_problem("sip:\n  listen: sip.example.com\n", "sip.listen", "IPv4 or IPv6")


def test_public_address_must_be_an_ip_address() -> None:
    assert_problem("sip:\n  public_address: 1.2.3\n", "sip.public_address", "IPv4 or IPv6")


def test_ipv6_listen_address_is_accepted() -> None:
    assert parse_config("sip:\n  listen: '::1'\n", SOURCE, {}).sip.listen == "::1"


def test_rtp_port_range_must_be_ordered() -> None:
    text = "sip:\n  rtp_ports: {start: 30000, end: 30000}\n"
    assert_problem(text, "sip.rtp_ports", "rtp_ports.end must be greater than rtp_ports.start")
    text = "sip:\n  rtp_ports: {start: 30000, end: 20000}\n"
    assert_problem(text, "sip.rtp_ports", "greater than")


def test_rtp_ports_below_1024_are_refused() -> None:
    assert_problem("sip:\n  rtp_ports: {start: 80, end: 2000}\n", "sip.rtp_ports.start", "1024")


@pytest.mark.parametrize("key", ["transports", "codecs"])
def test_transports_and_codecs_must_not_be_empty(key: str) -> None:
    assert_problem(f"sip:\n  {key}: []\n", f"sip.{key}", "at least one")


def test_transports_must_not_repeat() -> None:
    assert_problem("sip:\n  transports: [udp, udp]\n", "sip.transports", "must not repeat")


def test_unknown_codec_names_its_index() -> None:
    assert_problem("sip:\n  codecs: [PCMU, OPUS]\n", "sip.codecs[1]", "'OPUS'")


def test_unknown_transport_is_refused() -> None:
    assert_problem("sip:\n  transports: [udp, tls]\n", "sip.transports[1]", "'tls'")


# -- trunks ------------------------------------------------------------------------------------


def test_registrar_must_be_a_sip_uri_and_names_the_trunk_index() -> None:
    text = "trunks:\n  - id: a\n  - id: b\n    registrar: http://registrar.example.com\n"
    assert_problem(text, "trunks[1].registrar", "SIP URI", "http://registrar.example.com")


@pytest.mark.parametrize(
    "uri", ["sip:sip.example.com", "sips:sip.example.com:5061", "sip:192.0.2.1:5060"]
)
def test_registrar_and_proxy_accept_sip_and_sips_uris(uri: str) -> None:
    config = parse_config(
        f"trunks:\n  - id: a\n    registrar: {uri}\n    proxy: {uri}\n", SOURCE, {}
    )
    assert config.trunks[0].outbound_uri == uri


def test_outbound_uri_prefers_the_proxy_over_the_registrar() -> None:
    text = "trunks:\n  - id: a\n    registrar: sip:reg.example.com\n    proxy: sip:px.example.com\n"
    assert parse_config(text, SOURCE, {}).trunks[0].outbound_uri == "sip:px.example.com"
    text = "trunks:\n  - id: a\n    registrar: sip:reg.example.com\n"
    assert parse_config(text, SOURCE, {}).trunks[0].outbound_uri == "sip:reg.example.com"


def test_proxy_with_spaces_is_refused() -> None:
    assert_problem("trunks:\n  - id: a\n    proxy: sip:a b\n", "trunks[0].proxy", "SIP URI")


def test_register_true_needs_registrar_username_and_password() -> None:
    line = assert_problem("trunks:\n  - id: a\n    register: true\n", "trunks[0]")
    assert "register: true needs registrar, username, password" in line


def test_register_true_names_only_what_is_missing() -> None:
    text = (
        "trunks:\n  - id: a\n    register: true\n    registrar: sip:r.example.com\n   "
        " username: u\n"
    )
    assert_problem(text, "trunks[0]", "register: true needs password")


def test_retry_max_below_retry_min_is_refused() -> None:
    text = "trunks:\n  - id: a\n    retry_min: 60\n    retry_max: 10\n"
    assert_problem(text, "trunks[0]", "retry_max must be >= retry_min")


def test_retry_delays_must_be_positive() -> None:
    assert_problem(
        "trunks:\n  - id: a\n    retry_min: 0\n", "trunks[0].retry_min", "greater than 0"
    )


def test_expires_out_of_range() -> None:
    assert_problem("trunks:\n  - id: a\n    expires: 1\n", "trunks[0].expires", "greater than")
    assert_problem("trunks:\n  - id: a\n    expires: 100000\n", "trunks[0].expires", "86400")


def test_bad_cidr_in_allowed_ips() -> None:
    text = "trunks:\n  - id: a\n    allowed_ips: [10.0.0.0/8, 10.0.0.0/33]\n"
    assert_problem(text, "trunks[0].allowed_ips", "10.0.0.0/33", "network")


def test_allowed_ips_accepts_hosts_and_networks_of_both_families() -> None:
    text = "trunks:\n  - id: a\n    allowed_ips: [192.0.2.1, 10.1.2.3/8, '2001:db8::/32']\n"
    trunk = parse_config(text, SOURCE, {}).trunks[0]
    assert trunk.allow_ips_match("192.0.2.1")
    assert trunk.allow_ips_match("10.200.0.1")  # host bits in 10.1.2.3/8 are not an error
    assert trunk.allow_ips_match("2001:db8::1")
    assert not trunk.allow_ips_match("192.0.2.2")
    assert not trunk.allow_ips_match("not-an-ip")


def test_bad_prefix_in_allowed_destinations() -> None:
    text = "trunks:\n  - id: a\n    allowed_destinations: ['+44', '0044']\n"
    assert_problem(text, "trunks[0].allowed_destinations", "'0044'", "E.164 prefix")


def test_allowed_destinations_default_to_anything() -> None:
    assert parse_config("trunks:\n  - id: a\n", SOURCE, {}).trunks[0].allowed_destinations == ["+"]


def test_caller_id_must_be_e164() -> None:
    text = "trunks:\n  - id: a\n    caller_id: '02070000000'\n"
    assert_problem(text, "trunks[0].caller_id", "E.164")


def test_trunk_id_must_be_a_lowercase_id() -> None:
    assert_problem("trunks:\n  - id: My Trunk\n", "trunks[0].id", "lower-case")


def test_trunk_max_concurrent_calls_at_least_one() -> None:
    assert_problem(
        "trunks:\n  - id: a\n    max_concurrent_calls: 0\n", "trunks[0].max_concurrent_calls"
    )


def test_trunk_without_id_is_named() -> None:
    assert_problem(
        "trunks:\n  - proxy: sip:p.example.com\n", "trunks[0].id", "required key is missing"
    )


def test_duplicate_trunk_ids() -> None:
    line = only_problem("trunks:\n  - id: a\n  - id: b\n  - id: a\n")
    assert line == f"{SOURCE}: trunks[2]: 'a' is defined twice"


def test_duplicate_agent_ids_and_numbers() -> None:
    assert only_problem("agents:\n  - {id: e, type: echo}\n  - {id: e, type: echo}\n") == (
        f"{SOURCE}: agents[1]: 'e' is defined twice"
    )
    text = """
        agents: [{id: e, type: echo}]
        numbers:
          - {number: "+15550100", agent: e}
          - {number: "+15550100", agent: e}
    """
    assert only_problem(text) == f"{SOURCE}: numbers[1]: '+15550100' is defined twice"


# -- numbers and agents ------------------------------------------------------------------------


def test_number_must_be_e164() -> None:
    text = """
        agents: [{id: e, type: echo}]
        numbers:
          - {number: "+15550100", agent: e}
          - {number: "15550101", agent: e}
    """
    assert_problem(text, "numbers[1].number", "E.164", "'15550101'")


def test_number_routed_to_an_unknown_agent() -> None:
    text = """
        agents: [{id: e, type: echo}, {id: bot, type: echo}]
        numbers:
          - {number: "+15550100", agent: e}
          - {number: "+15550101", agent: nobody}
    """
    assert only_problem(text) == (
        f"{SOURCE}: numbers[1].agent: 'nobody' is not one of the agents (bot, e)"
    )


def test_number_routed_when_no_agents_are_defined() -> None:
    line = only_problem('numbers:\n  - {number: "+15550100", agent: e}\n')
    assert line.startswith(f"{SOURCE}: numbers[0].agent: ")
    assert "none defined" in line


def test_number_bound_to_an_unknown_trunk() -> None:
    text = """
        trunks: [{id: carrier}]
        agents: [{id: e, type: echo}]
        numbers:
          - {number: "+15550100", agent: e, trunk: elsewhere}
    """
    assert only_problem(text) == (f"{SOURCE}: numbers[0].trunk: 'elsewhere' is not a defined trunk")


@pytest.mark.parametrize("kind", ["twilio-ws", "pcm-ws", "webrtc"])
def test_non_echo_agent_needs_a_url(kind: str) -> None:
    text = f"agents:\n  - id: e\n    type: echo\n  - id: bot\n    type: {kind}\n"
    assert_problem(text, "agents[1]", f"agent type {kind} needs a url")


def test_echo_agent_needs_no_url() -> None:
    assert parse_config("agents:\n  - {id: e, type: echo}\n", SOURCE, {}).agents[0].url is None


def test_unknown_agent_type() -> None:
    assert_problem(
        "agents:\n  - {id: e, type: smoke-signals}\n", "agents[0].type", "'smoke-signals'"
    )


def test_agent_sample_rate_is_one_of_the_supported_rates() -> None:
    text = "agents:\n  - {id: e, type: echo, sample_rate: 44100}\n"
    assert_problem(text, "agents[0].sample_rate", "8000")


# -- other sections ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("vad:\n  aggressiveness: 4\n", "vad.aggressiveness"),
        ("vad:\n  frame_ms: 25\n", "vad.frame_ms"),
        ("limits:\n  ring_timeout: 0\n", "limits.ring_timeout"),
        ("limits:\n  max_concurrent_calls: 0\n", "limits.max_concurrent_calls"),
        ("mqtt:\n  port: 0\n", "mqtt.port"),
        ("mqtt:\n  tls: {colour: red}\n", "mqtt.tls.colour"),
        ("api:\n  port: 70000\n", "api.port"),
        ("node:\n  workers: 2\n", "node.workers"),
        ("node:\n  id: -bad\n", "node.id"),
        ("recording:\n  enabled: perhaps\n", "recording.enabled"),
    ],
)
def test_other_sections_name_the_key_path(text: str, path: str) -> None:
    assert_problem(text, path)


# -- ports -------------------------------------------------------------------------------------


def test_api_port_equal_to_the_sip_port_is_refused_both_on_tcp() -> None:
    line = only_problem("sip: {listen: 127.0.0.1, port: 5070}\napi: {port: 5070}\n")
    assert line == (
        f"{SOURCE}: api.port: 5070 is also sip.port (5070) and both listen on TCP at "
        "127.0.0.1: give each its own port"
    )


def test_api_port_may_equal_a_udp_only_sip_port() -> None:
    config = parse_config("sip: {port: 5070, transports: [udp]}\napi: {port: 5070}\n", SOURCE, {})
    assert config.api.port == config.sip.port == 5070


def test_a_disabled_api_may_use_the_sip_port() -> None:
    parse_config("sip: {port: 5070}\napi: {port: 5070, enabled: false}\n", SOURCE, {})


def test_ports_on_different_addresses_do_not_clash() -> None:
    parse_config("sip: {listen: 127.0.0.2, port: 8080}\napi: {listen: 127.0.0.1}\n", SOURCE, {})


def test_a_wildcard_sip_listen_clashes_with_the_api_on_any_address() -> None:
    line = only_problem("sip: {port: 8080}\napi: {listen: 127.0.0.1, port: 8080}\n")
    assert line.startswith(f"{SOURCE}: api.port: 8080 is also sip.port (8080) and both listen on")
    assert "at 0.0.0.0 and 127.0.0.1" in line


def test_embedded_mqtt_port_equal_to_the_api_port_is_refused() -> None:
    line = only_problem("mqtt: {embedded: true, port: 8080}\n")
    assert line.startswith(f"{SOURCE}: mqtt.port: 8080 is also api.port (8080)"), line


def test_an_external_broker_port_is_not_ours_to_bind() -> None:
    parse_config("mqtt: {embedded: false, port: 8080}\n", SOURCE, {})


def test_sip_port_inside_the_rtp_range_is_refused() -> None:
    line = only_problem("sip: {port: 20010, rtp_ports: {start: 20000, end: 20999}}\n")
    assert line.startswith(
        f"{SOURCE}: sip.rtp_ports: 20000-20999 is also sip.port (20010) and both listen on UDP"
    ), line


# -- capacity ----------------------------------------------------------------------------------


def test_max_concurrent_calls_above_what_one_worker_holds_is_a_warning() -> None:
    config = parse_config("limits: {max_concurrent_calls: 40}\n", SOURCE, {})
    assert warnings(config) == [
        "limits.max_concurrent_calls: 40 is more than this node holds: 1 SIP worker x 4 calls "
        "(PJSUA_MAX_CALLS of the pjsua2 build); it takes at most 4 calls at once and answers "
        "more with 503"
    ]
    assert "limits: 4 calls at once" in summary(config)


@pytest.mark.parametrize("text", ["limits: {max_concurrent_calls: 4}\n", "{}\n"])
def test_no_capacity_warning_within_the_engine_or_by_default(text: str) -> None:
    config = parse_config(text, SOURCE, {})
    assert warnings(config) == []
    assert "limits: 4 calls at once" in summary(config)


# -- several problems at once ------------------------------------------------------------------


def test_all_problems_are_reported_at_once() -> None:
    text = """
        sip:
          port: 99999
          colour: red
          listen: not-an-ip
        trunks:
          - id: a
            register: true
          - id: b
            registrar: http://x
            allowed_ips: [300.0.0.0/8]
        agents:
          - {id: bot, type: pcm-ws}
        api:
          api_keys: ["${MISSING_KEY}"]
    """
    problems = problems_of(text)
    paths = [line.split(": ", 2)[1] for line in problems]
    assert set(paths) >= {
        "sip.port",
        "sip.colour",
        "sip.listen",
        "trunks[0]",
        "trunks[1].registrar",
        "trunks[1].allowed_ips",
        "agents[0]",
        "api.api_keys[0]",
    }
    assert all(line.startswith(f"{SOURCE}: ") for line in problems)
    assert all("\n" not in line for line in problems)


# -- environment variables ---------------------------------------------------------------------


def test_env_reference_is_expanded() -> None:
    config = parse_config("sip:\n  user_agent: edge-${SITE}\n", SOURCE, {"SITE": "lon1"})
    assert config.sip.user_agent == "edge-lon1"


def test_env_reference_expands_into_numbers_after_validation() -> None:
    config = parse_config("sip:\n  port: ${SIP_PORT}\n", SOURCE, {"SIP_PORT": "5080"})
    assert config.sip.port == 5080


def test_env_default_is_used_only_when_the_variable_is_unset() -> None:
    text = "sip:\n  port: ${SIP_PORT:-5090}\n"
    assert parse_config(text, SOURCE, {}).sip.port == 5090
    assert parse_config(text, SOURCE, {"SIP_PORT": "5091"}).sip.port == 5091


def test_empty_env_default_is_allowed() -> None:
    config = parse_config("sip:\n  user_agent: a${SUFFIX:-}b\n", SOURCE, {})
    assert config.sip.user_agent == "ab"


def test_env_expands_inside_lists_and_number_variables() -> None:
    text = """
        trunks:
          - id: a
            allowed_ips: ["${CARRIER_NET}"]
        agents: [{id: e, type: echo}]
        numbers:
          - number: "+15550100"
            agent: e
            variables: {queue: "${QUEUE:-general}", site: "${SITE}"}
    """
    config = parse_config(
        textwrap.dedent(text), SOURCE, {"CARRIER_NET": "198.51.100.0/24", "SITE": "x"}
    )
    assert config.trunks[0].allowed_ips == ["198.51.100.0/24"]
    assert config.numbers[0].variables == {"queue": "general", "site": "x"}


def test_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIPEDGE_TEST_UA", "from-process-env")
    assert parse_config("sip:\n  user_agent: ${SIPEDGE_TEST_UA}\n", SOURCE).sip.user_agent == (
        "from-process-env"
    )


def test_missing_env_var_is_named_at_its_key_path() -> None:
    line = only_problem("trunks:\n  - id: a\n    password: ${CARRIER_PASSWORD}\n")
    assert line == f"{SOURCE}: trunks[0].password: environment variable CARRIER_PASSWORD is not set"


def test_missing_env_var_is_reported_once_not_again_as_a_type_error() -> None:
    line = only_problem("sip:\n  port: ${SIP_PORT}\n")
    assert line == f"{SOURCE}: sip.port: environment variable SIP_PORT is not set"


def test_every_missing_env_var_is_named() -> None:
    text = "mqtt:\n  username: ${MQ_USER}\n  password: ${MQ_PASS}\n"
    assert problems_of(text) == [
        f"{SOURCE}: mqtt.username: environment variable MQ_USER is not set",
        f"{SOURCE}: mqtt.password: environment variable MQ_PASS is not set",
    ]


# -- secrets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("trunks:\n  - id: a\n    password: hunter2\n", "trunks[0].password"),
        ("mqtt:\n  password: hunter2\n", "mqtt.password"),
        ("api:\n  api_keys: [hunter2]\n", "api.api_keys[0]"),
        (
            "agents:\n  - {id: b, type: pcm-ws, url: 'ws://a', headers: {Authorization:"
            " hunter2}}\n",
            "agents[0].headers.Authorization",
        ),
    ],
)
def test_literal_secret_is_refused_without_being_printed(text: str, path: str) -> None:
    line = only_problem(text)
    assert line == f"{SOURCE}: {path}: secrets must be an ${{ENV}} reference, not literal text"
    assert "hunter2" not in line


def test_secret_may_mix_text_and_a_reference() -> None:
    text = (
        "agents:\n  - {id: b, type: pcm-ws, url: 'ws://a', headers: {Authorization: 'Bearer"
        " ${T}'}}\n"
    )
    config = parse_config(text, SOURCE, {"T": "abc"})
    assert config.agents[0].headers["Authorization"].get_secret_value() == "Bearer abc"


def test_secret_of_the_wrong_type_does_not_print_its_value() -> None:
    problems = problems_of(f"trunks:\n  - id: a\n    password: [{SECRET}]\n")
    assert all(line.startswith(f"{SOURCE}: trunks[0].password") for line in problems)
    assert not any(SECRET in line for line in problems)


def test_secrets_never_appear_in_str_repr_or_summary() -> None:
    config = parse_config(VALID, SOURCE, VALID_ENV)
    for text in (
        str(config),
        repr(config),
        summary(config),
        str(config.trunks[0]),
        repr(config.api),
    ):
        for value in VALID_ENV.values():
            assert value not in text


def test_secret_never_appears_in_error_messages() -> None:
    broken = VALID.replace("port: 5070", "port: 99999")
    broken += "limits:\n  ring_timeout: 0\n"
    problems = problems_of(broken, VALID_ENV)
    assert len(problems) == 2
    assert SECRET not in "\n".join(problems)


def test_secret_env_value_used_in_a_plain_key_is_not_printed() -> None:
    # A typo puts the password variable where a number belongs: the error must not show it.
    text = VALID.replace("port: 5070", "port: ${PW}") + "limits:\n  retry_after: ${PW}\n"
    problems = problems_of(text, VALID_ENV)
    assert [p.split(": ", 2)[1] for p in problems] == ["sip.port", "limits.retry_after"]
    assert "${PW}" in problems[0]
    assert SECRET not in "\n".join(problems)


def test_secret_env_value_is_not_printed_when_a_validator_quotes_it() -> None:
    text = VALID.replace("listen: 127.0.0.1", "listen: ${PW}")
    line = only_problem(text, VALID_ENV)
    assert line.startswith(f"{SOURCE}: sip.listen: ")
    assert SECRET not in line


def test_config_error_text_never_holds_a_secret() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(VALID.replace("listen: 127.0.0.1", "listen: ${PW}"), SOURCE, VALID_ENV)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


# -- summary -----------------------------------------------------------------------------------


def test_summary_describes_the_node() -> None:
    text = summary(parse_config(VALID, SOURCE, VALID_ENV))
    assert "node test-node: SIP udp/tcp on 127.0.0.1:5070" in text
    assert "trunks (2):" in text
    assert "carrier: registers with sip:registrar.example.com:5060 as 4420700000" in text
    assert "pbx: static; inbound from 192.0.2.20/32" in text
    assert "+442070000000 -> agent bot" in text
    assert "bot: twilio-ws wss://agents.example.com/stream" in text
    assert "(1 keys)" in text


def test_summary_of_the_defaults() -> None:
    text = summary(Config())
    assert "trunks (0):" in text and "numbers (0):" in text and "agents (0):" in text
    assert "mqtt: 127.0.0.1:1883, topics sipedge/node-1/..." in text


def test_summary_shows_agent_urls_without_credentials_or_query() -> None:
    config = parse_config(
        "agents:\n  - {id: bot, type: pcm-ws, url: 'wss://bob:pa55word@agents.example.com:8443"
        "/pcm?token=t0ken'}\n",
        SOURCE,
        {},
    )
    text = summary(config)
    assert "bot: pcm-ws wss://agents.example.com:8443/pcm" in text
    assert "pa55word" not in text and "t0ken" not in text and "bob" not in text


# --- worker layout behind the SIP front ---------------------------------------------------


def _front(workers: object, **sip: object) -> Config:
    return Config.model_validate(
        {
            "node": {"workers": workers},
            "sip": {"front": {"mode": "embedded"}, "public_address": "192.0.2.10", **sip},
            "limits": {"max_concurrent_calls": 12},
        }  # fmt: skip
    )


def test_without_a_front_the_one_worker_faces_the_network() -> None:
    from gateway.config import worker_slots

    config = Config.model_validate({"sip": {"listen": "127.0.0.9", "port": 5099}})
    [slot] = worker_slots(config)
    assert (slot.sip_host, slot.sip_port) == ("127.0.0.9", 5099)
    assert (slot.rtp_start, slot.rtp_end) == (20000, 20999)


def test_auto_workers_hold_max_concurrent_calls_on_disjoint_rtp_slices() -> None:
    from gateway.config import slot_config, worker_slots

    slots = worker_slots(_front("auto", port=5070, rtp_ports={"start": 30000, "end": 30099}))
    assert [s.sip_port for s in slots] == [5170, 5171, 5172]
    assert all(s.sip_host == "127.0.0.1" for s in slots)
    ranges = [range(s.rtp_start, s.rtp_end + 1) for s in slots]
    assert all(r.start % 2 == 0 and r.stop <= 30100 for r in ranges)
    assert not set(ranges[0]) & set(ranges[1]) and not set(ranges[1]) & set(ranges[2])
    sip = slot_config(_front(3, port=5070), slots[1]).sip
    assert (sip.listen, sip.port, sip.rtp_listen) == ("127.0.0.1", 5171, "0.0.0.0")


def test_many_workers_need_a_front_and_enough_rtp_ports() -> None:
    with pytest.raises(ValueError, match="need a SIP front"):
        Config.model_validate({"node": {"workers": 3}})
    with pytest.raises(ValueError, match="each needs at least 16"):
        _front(4, rtp_ports={"start": 30000, "end": 30040})
    with pytest.raises(ValueError, match="between 1 and 64"):
        _front(65)


def _planes(planes: object, workers: object = 4, media: str = "plane") -> Config:
    config = _front(workers).model_dump()
    config["node"] |= {"media_planes": planes, "media": media}
    return Config.model_validate(config)


def test_media_planes_default_to_one_and_auto_is_a_plane_per_cpu_up_to_the_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway import config as module
    from gateway.config import plane_count

    assert plane_count(_front(3)) == 1
    assert plane_count(_planes(2)) == 2
    monkeypatch.setattr(module.os, "cpu_count", lambda: 8)
    assert plane_count(_planes("auto", workers=3)) == 3  # never a plane without a worker
    assert plane_count(_planes("auto", workers="auto")) == 3  # 12 calls: 3 workers
    monkeypatch.setattr(module.os, "cpu_count", lambda: None)
    assert plane_count(_planes("auto")) == 1
    assert plane_count(_planes(1, media="worker")) == 0


@pytest.mark.parametrize(
    ("planes", "workers", "media", "fragment"),
    [
        (0, 4, "plane", "node.media_planes: 0 is not between 1 and 16"),
        (17, 4, "plane", "node.media_planes: 17 is not between 1 and 16"),
        (5, 4, "plane", "node.media_planes: 5 planes for 4 workers"),
        (2, 2, "worker", "node.media_planes: 2 planes need node.media: plane"),
    ],
)
def test_a_media_plane_count_that_cannot_work_is_named(
    planes: int, workers: int, media: str, fragment: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        _planes(planes, workers, media)


def test_worker_ports_clash_with_other_listeners() -> None:
    with pytest.raises(ValueError, match="worker_ports_start"):
        _front(2, port=5070, front={"mode": "embedded", "worker_ports_start": 8080})


# -- session timers --------------------------------------------------------------------------


def test_session_timers_default_to_optional_and_a_trunk_may_set_its_own() -> None:
    config = parse_config(
        textwrap.dedent("""
        sip: {session_timers: {mode: required, expires: 600}}
        trunks:
          - {id: a, proxy: "sip:192.0.2.1"}
          - {id: b, proxy: "sip:192.0.2.2", session_timers: {mode: "off"}}
        """),
        SOURCE,
        {},
    )
    assert Config().sip.session_timers.mode == "optional"
    timers = config.sip.session_timers
    assert (timers.mode, timers.expires, timers.min_se) == ("required", 600, 90)
    assert config.trunks[0].session_timers is None  # sip.session_timers applies
    assert config.trunks[1].session_timers is not None
    assert config.trunks[1].session_timers.mode == "off"


@pytest.mark.parametrize(
    ("timers", "path", "fragment"),
    [
        ("{expires: 60}", "sip.session_timers.expires", "greater than or equal to 90"),
        ("{mode: sometimes}", "sip.session_timers.mode", "'optional'"),
        ("{expires: 120, min_se: 300}", "sip.session_timers", "must be >= min_se (300)"),
    ],
)
def test_a_bad_session_timer_is_named(timers: str, path: str, fragment: str) -> None:
    assert_problem(f"sip: {{session_timers: {timers}}}", path, fragment)


def test_a_trunks_srtp_is_off_unless_set_and_names_its_choices() -> None:
    trunk = "trunks: [{id: a, proxy: 'sip:192.0.2.1', srtp: %s}]"
    assert Config().model_validate({"trunks": [{"id": "a"}]}).trunks[0].srtp == "off"
    assert parse_config(trunk % "required", SOURCE, {}).trunks[0].srtp == "required"
    assert_problem(trunk % "always", "trunks[0].srtp", "'optional'", "'required'")


# -- the front's security settings (sip.tls, trunks' transport tls, inbound_auth) --------------

FRONT = "sip: {listen: 127.0.0.1, port: 5070, front: {mode: embedded}%s}\n"


def tls_block(tmp_path: Path, **extra: str) -> str:
    from tests.integration.tlscerts import CertAuthority

    ca = CertAuthority(tmp_path / "pki")
    front = ca.issue("front", passphrase=extra.pop("passphrase", None))
    keys = {"certificate": str(front.certificate), "private_key": str(front.key),
            "ca_file": str(ca.ca_file), **extra}  # fmt: skip
    return ", tls: {" + ", ".join(f"{k}: {v!r}" for k, v in keys.items()) + "}"


def test_sip_tls_parses_with_its_defaults(tmp_path: Path) -> None:
    config = parse_config(FRONT % tls_block(tmp_path), SOURCE, {})
    assert config.sip.tls is not None
    assert (config.sip.tls.port, config.sip.tls.min_version) == (5061, "1.2")


def test_sip_tls_needs_the_front(tmp_path: Path) -> None:
    text = "sip: {listen: 127.0.0.1" + tls_block(tmp_path) + "}\n"
    assert_problem(text, "sip.tls", "served by the SIP front", "sip.front.mode")


def test_a_certificate_file_that_is_missing_or_not_pem_is_named(tmp_path: Path) -> None:
    (tmp_path / "not.pem").write_text("hello")
    text = FRONT % tls_block(tmp_path, certificate=str(tmp_path / "none.pem"),
                             ca_file=str(tmp_path / "not.pem"))  # fmt: skip
    problems = problems_of(text)
    assert f"{SOURCE}: sip.tls.certificate: cannot read {tmp_path / 'none.pem'}: No such file" \
        in problems[0]  # fmt: skip
    assert problems[1].startswith(f"{SOURCE}: sip.tls.ca_file: {tmp_path / 'not.pem'} is not a PEM")


def test_an_encrypted_key_needs_its_passphrase_and_a_wrong_one_is_not_shown(
    tmp_path: Path,
) -> None:
    assert_problem(FRONT % tls_block(tmp_path, passphrase="right-one"), "sip.tls",
                   "is encrypted; set private_key_password")  # fmt: skip
    text = FRONT % tls_block(tmp_path / "b", passphrase="right-one",
                             private_key_password="${KEY_PASS}")  # fmt: skip
    line = assert_problem(text, "sip.tls", "private_key_password does not open",
                          env={"KEY_PASS": "wrong-one"})  # fmt: skip
    assert "wrong-one" not in line
    parse_config(textwrap.dedent(text), SOURCE, {"KEY_PASS": "right-one"})
    literal = FRONT % tls_block(tmp_path / "c", passphrase="x", private_key_password="plain")
    assert any("private_key_password: secrets must be an ${ENV} reference" in p
               for p in problems_of(literal))  # fmt: skip


def test_a_tls_port_on_the_sip_tcp_port_is_a_clash(tmp_path: Path) -> None:
    text = FRONT % tls_block(tmp_path, port="5070")
    assert_problem(text, "sip.tls.port", "is also sip.port (5070)", "TCP")


@pytest.mark.parametrize("trunk, key", [
    ("{id: carrier, transport: tls}", "trunks[0].transport: tls needs sip.tls"),
    ("{id: carrier, tls_client_certificate: true}",
     "trunks[0].tls_client_certificate: true needs sip.tls"),
])  # fmt: skip
def test_tls_trunks_need_sip_tls(trunk: str, key: str) -> None:
    line = only_problem(FRONT % "" + f"trunks: [{trunk}]\n")
    assert line.startswith(f"{SOURCE}: {key} (the front's certificate and private key)"), line


def test_inbound_auth_takes_its_password_from_the_environment_only() -> None:
    trunk = "trunks: [{id: pbx, allowed_ips: [192.0.2.20/32], inbound_auth: %s}]\n"
    config = parse_config(FRONT % "" + trunk % "{username: office, password: '${PBX_PW}'}",
                          SOURCE, {"PBX_PW": SECRET})  # fmt: skip
    auth = config.trunks[0].inbound_auth
    assert auth is not None and (auth.username, auth.realm) == ("office", "sipedge")
    assert SECRET not in repr(config) and auth.password.get_secret_value() == SECRET
    assert_problem(FRONT % "" + trunk % f"{{username: office, password: {SECRET}}}",
                   "trunks[0].inbound_auth.password", "must be an ${ENV} reference")  # fmt: skip


def test_inbound_auth_needs_the_front_and_allowed_ips() -> None:
    auth = "inbound_auth: {username: office, password: '${PBX_PW}'}"
    env = {"PBX_PW": SECRET}
    line = only_problem(FRONT % "" + f"trunks: [{{id: pbx, {auth}}}]\n", env)
    assert line.startswith(f"{SOURCE}: trunks[0].inbound_auth: needs allowed_ips"), line
    no_front = f"trunks: [{{id: pbx, allowed_ips: [192.0.2.20/32], {auth}}}]\n"
    line = only_problem(no_front, env)
    assert "trunks[0].inbound_auth: digest is checked by the SIP front" in line, line


def test_an_agents_backup_url_and_filler_are_checked(tmp_path: Path) -> None:
    agent = "agents: [{id: bot, type: twilio-ws, url: 'ws://a.example/x', %s}]"
    ok = parse_config(agent % "reconnect_timeout: 10, backup_url: 'wss://b.example/x', "
                      "filler: comfort_noise", SOURCE, {})  # fmt: skip
    assert (ok.agents[0].reconnect_timeout, ok.agents[0].filler) == (10, "comfort_noise")
    assert Config.model_validate({}).agents == [] and ok.agents[0].on_agent_failure == "hangup"
    assert_problem(agent % "backup_url: 'http://b.example'", "agents[0]", "ws:// or wss://")
    missing = tmp_path / "none.wav"
    assert_problem(agent % f"filler: '{missing}'", "agents[0]", "comfort_noise or a WAV file")


def test_webhooks_parse_with_the_secret_from_the_environment() -> None:
    config = parse_config(
        "webhooks:\n"
        "  - {id: cp, url: 'https://cp.example.com/hooks', events: [call.*, trunk.registered],"
        " secret: '${HOOK_SECRET}'}\n"
        "webhooks_max_failures: 5\n",
        SOURCE,
        {"HOOK_SECRET": "0123456789abcdef-secret"},
    )
    (hook,) = config.webhooks
    assert (hook.id, hook.events, hook.enabled) == ("cp", ["call.*", "trunk.registered"], True)
    assert hook.secret.get_secret_value() == "0123456789abcdef-secret"
    assert config.webhooks_max_failures == 5
    assert parse_config("{}\n", SOURCE, {}).webhooks_max_failures == 20


def test_webhook_problems_name_the_key_and_never_show_the_secret() -> None:
    found = problems_of(
        """
        webhooks:
          - {id: cp, url: 'ftp://cp/h', events: [call.*, Call], secret: plain-text-secret}
          - {id: cp, url: 'http://cp/h', events: [], secret: '${SHORT}'}
          - {id: big, url: 'http://cp:70000/h', secret: '${SHORT}'}
        webhooks_max_failures: 0
        """,
        {"SHORT": "tiny"},
    )
    assert (
        f"{SOURCE}: webhooks[0].secret: secrets must be an ${{ENV}} reference, not literal text"
        in found
    )
    assert any("webhooks[0].url: expected an http:// or https:// URL" in p for p in found)
    assert any("webhooks[0].events: 'Call' is not an event type or pattern" in p for p in found)
    assert any("webhooks[1].events: must list at least one" in p for p in found)
    assert any("webhooks[2].url: expected an http:// or https:// URL" in p for p in found)
    short = "must be at least 16 characters long (got the value of '${SHORT}', not shown)"
    assert f"{SOURCE}: webhooks[1].secret: {short}" in found
    assert any(p.startswith(f"{SOURCE}: webhooks_max_failures:") for p in found)
    assert not any("plain-text-secret" in p or "tiny" in p for p in found)


def test_webhook_ids_are_unique() -> None:
    found = problems_of(
        """
        webhooks:
          - {id: cp, url: 'http://a/h', secret: '${S}'}
          - {id: cp, url: 'http://b/h', secret: '${S}'}
        """,
        {"S": "0123456789abcdef"},
    )
    assert found == [f"{SOURCE}: webhooks[1]: 'cp' is defined twice"]
