"""The SIP thread's executor: commands from other threads, timers, and how long to poll."""

from __future__ import annotations

import threading

import pytest

from gateway.sip.executor import POLL_MS, SipExecutor


def test_submitted_command_runs_on_the_draining_thread_and_returns_its_result() -> None:
    executor = SipExecutor()
    ran_on: list[str] = []
    future = executor.submit(lambda: ran_on.append(threading.current_thread().name) or 42)
    assert not future.done()
    worker = threading.Thread(target=executor.run_due, name="sip")
    worker.start()
    worker.join()
    assert future.result(timeout=1) == 42 and ran_on == ["sip"]


def test_a_failing_command_hands_its_exception_to_the_caller() -> None:
    executor = SipExecutor()
    future = executor.submit(lambda: 1 / 0)
    executor.run_due()
    with pytest.raises(ZeroDivisionError):
        future.result(timeout=1)


def test_poll_is_immediate_with_queued_work_and_bounded_otherwise() -> None:
    executor = SipExecutor()
    assert executor.poll_ms() == POLL_MS
    executor.submit(lambda: None)
    assert executor.poll_ms() == 0
    executor.run_due()
    executor.schedule(0.0, lambda: None)
    assert executor.poll_ms() == 0
    executor.run_due()
    executor.schedule(60.0, lambda: None)
    assert executor.poll_ms() == POLL_MS


def test_timers_run_in_due_order_only_when_due_and_a_failing_one_is_logged() -> None:
    executor = SipExecutor(on_timer_error=RuntimeError)
    fired: list[str] = []

    def boom() -> None:
        raise RuntimeError("timer failed")

    executor.schedule(0.0, lambda: fired.append("b"))
    executor.schedule(-1.0, lambda: fired.append("a"))
    executor.schedule(-0.5, boom)
    executor.schedule(60.0, lambda: fired.append("later"))
    executor.run_due()
    assert fired == ["a", "b"]


def test_a_cancelled_timer_never_runs_and_releases_its_callback() -> None:
    executor = SipExecutor()
    fired: list[str] = []
    timer = executor.schedule(-1.0, lambda: fired.append("no"))
    timer.cancel()
    assert timer.fn is None
    executor.run_due()
    assert fired == []


def test_cancelled_timers_are_compacted_away_instead_of_held_until_due() -> None:
    executor = SipExecutor()
    for _ in range(1000):
        executor.schedule(3600.0, lambda: None).cancel()
    executor.schedule(3600.0, lambda: None)
    assert executor.pending_timers() == 1
    assert len(executor._timers) < 200  # noqa: SLF001 - the bound is the point of the test


def test_a_timer_raising_any_of_the_listed_errors_leaves_the_others_running() -> None:
    from gateway.errors import CallRefused

    executor = SipExecutor(on_timer_error=(RuntimeError, CallRefused))
    fired: list[str] = []

    def gone() -> None:  # e.g. hanging up a call that ended before the timer ran
        raise CallRefused("call_not_found", "no active call call_1")

    executor.schedule(-1.0, gone)
    executor.schedule(0.0, lambda: fired.append("after"))
    executor.run_due()
    assert fired == ["after"]
