"""An idle SIP thread sleeps in its poll until work is submitted: the executor's waker."""

from __future__ import annotations

import select
import socket
import threading

from gateway.sip.executor import IDLE_POLL_MS, POLL_MS, DatagramWaker, SipExecutor


class CountingWaker:
    def __init__(self) -> None:
        self.wakes = 0

    def __call__(self) -> None:
        self.wakes += 1


def test_with_a_waker_an_idle_poll_sleeps_long_and_queued_work_still_polls_at_once() -> None:
    executor = SipExecutor()
    executor.set_waker(CountingWaker())
    assert executor.begin_poll() == IDLE_POLL_MS
    executor.run_due()
    executor.schedule(60.0, lambda: None)
    assert executor.begin_poll() == IDLE_POLL_MS
    executor.run_due()
    executor.submit(lambda: None)
    assert executor.begin_poll() == 0
    executor.set_waker(None)
    executor.run_due()
    assert executor.begin_poll() == POLL_MS


def test_a_submit_wakes_a_sleeping_poll_once_and_an_awake_thread_not_at_all() -> None:
    executor = SipExecutor()
    waker = CountingWaker()
    executor.set_waker(waker)
    executor.submit(lambda: None)  # the SIP thread is not polling: nothing to wake
    assert waker.wakes == 0
    executor.run_due()
    executor.begin_poll()
    executor.submit(lambda: None)
    executor.submit(lambda: None)  # the first wake-up is still on its way
    assert waker.wakes == 1
    executor.run_due()
    executor.begin_poll()
    executor.submit(lambda: None)
    assert waker.wakes == 2


def test_a_command_submitted_while_the_thread_sleeps_runs_without_waiting_for_the_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as endpoint:
        endpoint.bind(("127.0.0.1", 0))
        executor = SipExecutor()
        waker = DatagramWaker("127.0.0.1", endpoint.getsockname()[1])
        executor.set_waker(waker)
        sleeping = threading.Event()

        def sip_thread() -> None:  # stands in for libHandleEvents on the endpoint's socket
            assert executor.begin_poll() == IDLE_POLL_MS
            sleeping.set()
            # Far longer than IDLE_POLL_MS: only the wake-up ends this wait in time.
            readable, _, _ = select.select([endpoint], [], [], 30)
            assert readable, "the poll was not woken"
            assert endpoint.recv(64) == b"\0"  # too short to be SIP: pjsip drops it
            executor.run_due()

        thread = threading.Thread(target=sip_thread)
        thread.start()
        sleeping.wait(5)
        assert executor.submit(lambda: "ran").result(timeout=5) == "ran"
        thread.join(5)
        waker.close()
