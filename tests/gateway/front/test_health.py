"""The front's state from Kamailio's RPC answers (captured from Kamailio 5.6.3), and its
Prometheus lines."""

from __future__ import annotations

import json

from gateway.front.health import (
    FrontHealth,
    parse_dispatcher,
    parse_htable_item,
    parse_statistics,
    prometheus,
)

# `dispatcher.list` of a front with two workers, the second one down (captured).
DISPATCHER_LIST = json.loads(
    '{"NRSETS":1,"RECORDS":[{"SET":{"ID":1,"TARGETS":['
    '{"DEST":{"URI":"sip:127.0.0.1:6090","FLAGS":"AP","PRIORITY":0,"ATTRS":{"BODY":'
    '"duid=worker-1;maxload=4;socket=udp:127.0.0.1:6089","DUID":"worker-1","MAXLOAD":4,'
    '"WEIGHT":0,"RWEIGHT":0,"SOCKET":"udp:127.0.0.1:6089","SOCKNAME":null,"OBPROXY":null},'
    '"RUNTIME":{"DLGLOAD":3}}},'
    '{"DEST":{"URI":"sip:127.0.0.1:6091","FLAGS":"IP","PRIORITY":0,"ATTRS":{"BODY":'
    '"duid=worker-2;maxload=4;socket=udp:127.0.0.1:6089","DUID":"worker-2","MAXLOAD":4,'
    '"WEIGHT":0,"RWEIGHT":0,"SOCKET":"udp:127.0.0.1:6089","SOCKNAME":null,"OBPROXY":null},'
    '"RUNTIME":{"DLGLOAD":0}}}]}}]}'
)
STATISTICS = [
    "core:rcv_requests = 92",
    "core:rcv_requests_invite = 20",
    "pike:blocked_ips = 1",
    "script:front_flood_dropped = 610",
    "script:front_refused_number = 12",
    "script:front_refused_source = 2",
    "script:front_dispatched = 5",
    "script:front_failovers = 1",
    "shmem:fragments = 6",
    "sl:sent_replies = 66",
    "tmx:rpl_sent = 39",
]


def test_dispatcher_states_become_workers_with_their_slot_state_and_calls() -> None:
    first, second = parse_dispatcher(DISPATCHER_LIST)
    assert (first.index, first.uri, first.active, first.probing, first.calls) == (
        1, "sip:127.0.0.1:6090", True, True, 3
    )  # fmt: skip
    assert (second.index, second.active, second.calls) == (2, False, 0)
    assert parse_dispatcher(None) == [] and parse_dispatcher({"NRSETS": 0}) == []


def test_statistics_lines_become_counters() -> None:
    stats = parse_statistics(STATISTICS + ["garbage", "x:y = not-a-number"])
    assert stats["core:rcv_requests"] == 92 and stats["script:front_flood_dropped"] == 610
    assert "x:y" not in stats


def test_health_sums_replies_and_names_refusal_reasons() -> None:
    health = FrontHealth("embedded", True, parse_dispatcher(DISPATCHER_LIST),
                         parse_statistics(STATISTICS))  # fmt: skip
    assert health.requests == 92 and health.replies_sent == 66 + 39
    assert health.refused["number_not_routed"] == 12 and health.refused["rate_limited"] == 0
    body = health.as_dict()
    assert body["workers"][1] == {"worker": 2, "uri": "sip:127.0.0.1:6091", "active": False,
                                  "calls": 0}  # fmt: skip


def test_prometheus_lines_of_a_running_front() -> None:
    health = FrontHealth("embedded", True, parse_dispatcher(DISPATCHER_LIST),
                         parse_statistics(STATISTICS))  # fmt: skip
    text = prometheus(health)
    for line in (
        "sipedge_front_up 1",
        'sipedge_front_worker_active{worker="1"} 1',
        'sipedge_front_worker_active{worker="2"} 0',
        'sipedge_front_worker_calls{worker="1"} 3',
        "sipedge_front_requests_total 92",
        "sipedge_front_replies_sent_total 105",
        "sipedge_front_flood_dropped_total 610",
        'sipedge_front_invites_refused_total{reason="source_not_allowed"} 2',
        "sipedge_front_invites_dispatched_total 5",
        "sipedge_front_failovers_total 1",
    ):
        assert line in text.splitlines(), line
    assert "# TYPE sipedge_front_requests_total counter" in text


def test_a_front_that_does_not_answer_is_only_down() -> None:
    assert prometheus(FrontHealth("embedded", False)) == (
        "# HELP sipedge_front_up 1 while the SIP front answers its control socket.\n"
        "# TYPE sipedge_front_up gauge\nsipedge_front_up 0\n"
    )


def test_htable_items_give_their_value() -> None:
    item = {"item": {"name": "draining", "value": 1, "flags": 0, "expire": "NEVER"}}
    assert parse_htable_item(item) == 1
    assert parse_htable_item(None) is None and parse_htable_item({"item": "x"}) is None


def metric_lines(health: FrontHealth) -> list[str]:
    return prometheus(health).splitlines()


def test_refused_tls_handshakes_and_missing_client_certificates_reach_the_metrics() -> None:
    health = FrontHealth("embedded", True, stats={"script:front_refused_certificate": 1},
                         tls_refused={"in": 2})  # fmt: skip
    lines = metric_lines(health)
    assert 'sipedge_front_invites_refused_total{reason="certificate_required"} 1' in lines
    assert 'sipedge_front_tls_refused_total{direction="in"} 2' in lines
    assert 'sipedge_front_tls_refused_total{direction="out"} 0' in lines
    assert health.as_dict()["tls_refused"] == {"in": 2, "out": 0}


def test_failed_digest_reaches_the_metrics_as_a_refusal_reason() -> None:
    health = FrontHealth("embedded", True, stats={"script:front_refused_auth": 3})
    assert 'sipedge_front_invites_refused_total{reason="auth_failed"} 3' in metric_lines(health)


def test_scanner_drops_reach_the_metrics() -> None:
    health = FrontHealth("embedded", True, stats={"script:front_scanner_dropped": 7})
    assert "sipedge_front_scanner_dropped_total 7" in metric_lines(health)
    assert health.as_dict()["scanner_dropped"] == 7
