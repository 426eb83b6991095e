"""Commands and timers for the SIP thread: other threads submit work, the SIP thread runs it.

No pjsua2 here: the SIP thread's loop calls `run_due()` between `libHandleEvents` polls and
sleeps in the poll for at most `begin_poll()` ms. Without a waker that is POLL_MS, so queued
work waits at most 10 ms, at the price of 100 wake-ups a second (1.5 % of a core for an idle
worker). With one (`set_waker`: a callable that makes the poll return, e.g. a datagram to the
endpoint's own UDP transport, `datagram_waker`), `submit` wakes a sleeping poll and an idle
poll lasts up to IDLE_POLL_MS.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import itertools
import logging
import queue
import socket
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("sipedge.sip")

T = TypeVar("T")
POLL_MS = 10
# The longest sleep with a waker. It bounds what nothing wakes: timers that other threads (the
# media thread) put on pjsip's own heap while the SIP thread sleeps.
IDLE_POLL_MS = 200


class Timer:
    """A scheduled call; `cancel()` it when what it guards has ended (a call's duration limit
    or ring timeout), so the heap does not hold it for the rest of its delay."""

    __slots__ = ("fn", "cancelled")

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn: Callable[[], None] | None = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.fn = None  # drop what the callback holds now, not when the entry is popped


class SipExecutor:
    def __init__(
        self, on_timer_error: type[BaseException] | tuple[type[BaseException], ...] = Exception
    ) -> None:
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._timer_error = on_timer_error
        self._waker: Callable[[], None] | None = None
        self._sleeping = False  # between begin_poll() and run_due()
        self._woken = False  # a wake-up is on its way to the current poll

    def set_waker(self, waker: Callable[[], None] | None) -> None:
        """From now on (SIP thread, before polling), submit() makes a sleeping poll return by
        calling `waker` from the submitting thread; None goes back to short polls."""
        self._waker = waker

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Any thread: run `fn` on the SIP thread; the future carries its result or error."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller through the future
                future.set_exception(exc)

        self._commands.put(run)
        # Queue first, then look: begin_poll() sets _sleeping before it looks at the queue, so
        # either it sees this command (and does not sleep) or we see it sleeping (and wake it).
        waker = self._waker
        if waker is not None and self._sleeping and not self._woken:
            self._woken = True
            try:
                waker()
            except OSError as exc:  # the poll still returns within IDLE_POLL_MS
                log.warning("event=sip_wake_failed error=%s", exc)
        return future

    def schedule(self, delay: float, fn: Callable[[], None]) -> Timer:
        """SIP thread only: run `fn` on the SIP thread after `delay` seconds."""
        timer = Timer(fn)
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), timer))
        if len(self._timers) > 64 and len(self._timers) > 2 * self.pending_timers():
            # Mostly cancelled entries (calls that ended long before their limits): compact.
            self._timers = [entry for entry in self._timers if not entry[2].cancelled]
            heapq.heapify(self._timers)
        return timer

    def pending_timers(self) -> int:
        return sum(1 for entry in self._timers if not entry[2].cancelled)

    def poll_ms(self) -> int:
        """How long the next libHandleEvents may wait without delaying queued work."""
        if not self._commands.empty():
            return 0
        most = POLL_MS if self._waker is None else IDLE_POLL_MS
        if self._timers:
            wait = (self._timers[0][0] - time.monotonic()) * 1000
            return int(max(0, min(most, wait)))
        return most

    def begin_poll(self) -> int:
        """SIP thread, right before libHandleEvents: poll_ms(); until run_due(), a submit()
        from another thread wakes the poll."""
        self._sleeping = True
        return self.poll_ms()

    def run_due(self) -> None:
        """SIP thread: every submitted command, then every timer that is due."""
        self._sleeping = False
        self._woken = False
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            command()
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            fn = timer.fn
            if timer.cancelled or fn is None:
                continue
            try:
                fn()
            except self._timer_error as exc:  # a failed timer must not stop the SIP thread
                log.warning("event=timer_failed error=%s", exc)


class DatagramWaker:
    """Wakes a poll on a UDP socket by sending it one byte. pjsip's UDP transport drops a
    datagram too short to be SIP (32 bytes or less, sip_transport_udp.c) without a log line,
    but its ioqueue poll returns: the SIP thread's sleep ends and it runs what was queued."""

    def __init__(self, host: str, port: int) -> None:
        target = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        family = socket.AF_INET6 if ":" in target else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._sock.connect((target, port))

    def __call__(self) -> None:
        # A full buffer (BlockingIOError) holds wake-ups already: the poll will return.
        with contextlib.suppress(BlockingIOError):
            self._sock.send(b"\0")

    def close(self) -> None:
        self._sock.close()
