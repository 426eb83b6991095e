"""Which worker takes an outbound call, owns a call, registers a trunk: plain decisions."""

from __future__ import annotations

from gateway.node.placement import (
    CallOwners,
    WorkerPhase,
    WorkerState,
    assign_trunks,
    claim,
    pick_worker,
    take_over,
)


def worker(index: int, calls: int = 0, phase: WorkerPhase = "running") -> WorkerState:
    return WorkerState(index=index, phase=phase, capacity=4, active_calls=calls)


def test_an_outbound_call_goes_to_the_worker_with_the_most_free_slots() -> None:
    assert pick_worker([worker(1, calls=2), worker(2, calls=0), worker(3, calls=1)]) == 2


def test_equally_free_workers_are_taken_in_index_order() -> None:
    assert pick_worker([worker(3), worker(1), worker(2)]) == 1
    assert pick_worker([worker(1, calls=1), worker(2), worker(3)]) == 2


def test_a_full_worker_a_stopped_one_and_one_that_refused_this_call_are_skipped() -> None:
    workers = [
        worker(1, calls=4),
        worker(2, phase="restarting"),
        worker(3, phase="starting"),
        worker(4, calls=3),
        worker(5, calls=1),
    ]
    assert pick_worker(workers) == 5
    assert pick_worker(workers, tried={5}) == 4
    assert pick_worker(workers, tried={4, 5}) is None


def test_no_worker_has_room_when_all_are_full() -> None:
    assert pick_worker([worker(1, calls=4), worker(2, calls=4)]) is None
    assert pick_worker([]) is None


def test_a_worker_holding_more_calls_than_its_capacity_has_no_free_slot() -> None:
    assert worker(1, calls=5).free_slots == 0
    assert worker(1, calls=1, phase="restarting").free_slots == 0


def test_call_owners_count_per_worker_and_per_trunk_and_release_a_lost_worker() -> None:
    owners = CallOwners()
    owners.add("call_a", 1, "carrier")
    owners.add("call_b", 2, "carrier")
    owners.add("call_c", 2, "other")
    owners.add("call_d", 2, None)
    assert owners.worker_of("call_b") == 2 and owners.worker_of("call_x") is None
    assert (owners.count(1), owners.count(2), owners.count(3)) == (1, 3, 0)
    assert owners.on_trunk("carrier") == 2
    assert owners.release(2) == {"call_b", "call_c", "call_d"}
    assert owners.count(2) == 0 and owners.on_trunk("carrier") == 1
    owners.drop("call_a")
    owners.drop("call_a")  # an ended call's last event may come twice: harmless
    assert owners.worker_of("call_a") is None


def test_trunks_are_spread_over_the_workers_in_order() -> None:
    assert assign_trunks(["a", "b", "c", "d"], [1, 2, 3]) == {"a": 1, "b": 2, "c": 3, "d": 1}
    assert assign_trunks(["a", "b"], [1]) == {"a": 1, "b": 1}
    assert assign_trunks(["a"], []) == {}


def test_a_lost_workers_trunks_go_to_the_running_workers_with_the_fewest() -> None:
    owners: dict[str, int | None] = {"a": 1, "b": 2, "c": 3, "d": 1, "e": 2}
    moves = take_over(owners, lost=2, running=[1, 3])
    assert moves == {"b": 3, "e": 1}  # 3 had one trunk, 1 had two: b to 3, then a tie -> 1


def test_with_no_other_worker_running_the_trunks_wait_unowned() -> None:
    owners: dict[str, int | None] = {"a": 1, "b": 2}
    assert take_over(owners, lost=1, running=[1]) == {"a": None}
    assert take_over(owners, lost=1, running=[]) == {"a": None}


def test_a_starting_worker_reports_its_own_trunks_and_the_unowned_ones_only() -> None:
    owners: dict[str, int | None] = {"a": 1, "b": None, "c": 2, "d": 3}
    assert claim(owners, 1) == ["a", "b"]
    # Worker 2 comes back after its trunk "c" went to worker 3: "c" stays there.
    assert claim({**owners, "c": 3}, 2) == ["b"]
