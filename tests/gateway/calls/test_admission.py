"""Admission of new INVITEs: what is refused, with which SIP answer, in which order."""

from __future__ import annotations

from typing import Any

from gateway.calls.admission import Admission, NodeLoad, RefusalLog, SocketBudget, SourceRate
from gateway.config import Config


def config(**limits: Any) -> Config:
    return Config.model_validate(
        {
            "trunks": [{"id": "carrier", "allowed_ips": ["10.0.0.0/8"]}],
            "numbers": [{"number": "+15550100", "agent": "echo"}],
            "agents": [{"id": "echo", "type": "echo"}],
            "limits": {"max_concurrent_calls": 4, **limits},
        }
    )


def idle(**overrides: Any) -> NodeLoad:
    return NodeLoad(**{"active_calls": 0, "capacity": 4, **overrides})


def decide(admission: Admission, source: str = "10.1.1.1", load: NodeLoad | None = None,
           dialled: str = "+15550100", now: float = 0.0) -> Any:  # fmt: skip
    return admission.decide(source, [dialled], load or idle(), now)[1]


def test_a_routed_invite_from_an_allowed_source_is_admitted() -> None:
    assert decide(Admission(config())) is None


def test_unrouted_numbers_get_404_and_foreign_sources_403_without_retry_after() -> None:
    admission = Admission(config())
    unrouted = decide(admission, dialled="+19990000000")
    assert (unrouted.code, unrouted.reason, unrouted.retry_after) == (
        404,
        "number_not_routed",
        None,
    )
    foreign = decide(admission, source="192.0.2.1")
    assert (foreign.code, foreign.reason) == (403, "source_not_allowed")


def test_full_draining_or_out_of_sockets_is_503_with_retry_after() -> None:
    admission = Admission(config(retry_after=7))
    for load, reason in (
        (idle(active_calls=4), "capacity"),
        (idle(draining=True), "draining"),
        (idle(room_for_media=False), "sockets"),
    ):
        refusal = decide(admission, load=load)
        assert (refusal.code, refusal.reason, refusal.retry_after) == (503, reason, 7)


def test_draining_node_refuses_with_503_before_anything_else() -> None:
    refusal = decide(Admission(config()), source="203.0.113.1", dialled="+19999999999",
                     load=idle(draining=True))  # fmt: skip
    assert (refusal.code, refusal.reason) == (503, "draining")


def test_node_at_capacity_refuses_with_503() -> None:
    admission = Admission(config())
    refusal = decide(admission, load=idle(active_calls=4, capacity=4))
    assert (refusal.code, refusal.detail) == (503, "node at capacity (4 calls)")
    assert decide(admission, load=idle(active_calls=3, capacity=4)) is None


# --- outbound: the same load checks, then the trunk's limit -------------------------------


def outbound(config: Config) -> Config:
    trunk = {"id": "carrier", "allowed_destinations": ["+44"], "max_concurrent_calls": 2}
    return config.model_validate({**config.model_dump(by_alias=True), "trunks": [trunk]})


def test_an_outbound_call_names_what_is_wrong_with_it_before_the_load() -> None:
    admission = Admission(outbound(config()))
    full = idle(active_calls=4)
    for args, reason in (
        (("nope", "+442070000000", "echo"), "unknown_trunk"),
        (("carrier", "+442070000000", "nope"), "unknown_agent"),
        (("carrier", "+15550100", "echo"), "destination_not_allowed"),
    ):
        refusal = admission.decide_outbound(*args, full)
        assert refusal is not None and refusal.reason == reason
    assert admission.decide_outbound("carrier", "+442070000000", "echo", idle()) is None


def test_an_outbound_call_is_refused_as_inbound_ones_are_when_full_or_draining() -> None:
    admission = Admission(outbound(config()))
    call = ("carrier", "+442070000000", "echo")
    for load, reason, detail in (
        (idle(active_calls=4), "capacity_exceeded", "node at capacity (4 calls)"),
        (idle(draining=True), "draining", "the node is draining and takes no new calls"),
        (idle(room_for_media=False), "capacity_exceeded", "no free media sockets in this worker"),
        (idle(active_by_trunk={"carrier": 2}), "capacity_exceeded",
         "trunk carrier at max_concurrent_calls"),
    ):  # fmt: skip
        refusal = admission.decide_outbound(*call, load)
        assert refusal is not None and (refusal.reason, refusal.detail) == (reason, detail)


def test_one_source_may_hold_only_so_many_unconfirmed_calls() -> None:
    admission = Admission(config(max_unconfirmed_per_source=2))
    load = idle(unconfirmed_by_source={"10.1.1.1": 2})
    assert decide(admission, load=load).reason == "unconfirmed"
    assert decide(admission, source="10.2.2.2", load=load) is None


def test_the_rate_limit_applies_per_source_and_refills_over_time() -> None:
    admission = Admission(config(invites_per_second_per_source=2, invite_burst_per_source=3))
    results = [decide(admission, now=0.0) for _ in range(5)]
    assert [r.reason if r else None for r in results] == [None] * 3 + ["rate_limited"] * 2
    assert decide(admission, source="10.9.9.9", now=0.0) is None  # another source is unaffected
    assert decide(admission, now=0.5) is None  # one token back after 0.5 s at 2/s
    assert decide(admission, now=0.5).reason == "rate_limited"


def test_the_rate_limit_is_checked_first_so_a_flood_costs_no_routing() -> None:
    admission = Admission(config(invites_per_second_per_source=1, invite_burst_per_source=1))
    decide(admission, dialled="+19990000000")
    assert decide(admission, dialled="+19990000000").reason == "rate_limited"


def test_source_rate_forgets_refilled_sources_when_full() -> None:
    rate = SourceRate(rate=10, burst=1, max_sources=2)
    rate.allow("a", 0.0)
    rate.allow("b", 0.0)
    rate.allow("c", 1.0)  # a and b have refilled by now: forgotten
    assert len(rate) == 1


def test_socket_budget_wants_a_calls_sockets_beyond_its_reserve() -> None:
    budget = SocketBudget(per_call=2, reserve=2)
    assert budget.room_for_call(4)
    assert not budget.room_for_call(3)
    assert not budget.room_for_call(0)


def test_refusal_log_says_once_per_source_and_reason_per_interval_with_the_count() -> None:
    log = RefusalLog(interval_s=10)
    assert log.note("10.1.1.1", "rate_limited", 0.0) == 1
    assert all(log.note("10.1.1.1", "rate_limited", t) is None for t in (1.0, 2.0, 3.0))
    assert log.note("10.1.1.1", "capacity", 3.0) == 1  # another reason has its own line
    assert log.note("10.1.1.1", "rate_limited", 10.0) == 4  # the three silent ones and this
