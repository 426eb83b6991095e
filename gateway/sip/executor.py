"""Commands and timers for the SIP thread: other threads submit work, the SIP thread runs it.

No pjsua2 here: the SIP thread's loop calls `run_due()` between `libHandleEvents` polls and
sleeps in the poll for at most `poll_ms()`.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import logging
import queue
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("sipedge.sip")

T = TypeVar("T")
POLL_MS = 10


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
        if self._timers:
            wait = (self._timers[0][0] - time.monotonic()) * 1000
            return int(max(0, min(POLL_MS, wait)))
        return POLL_MS

    def run_due(self) -> None:
        """SIP thread: every submitted command, then every timer that is due."""
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
