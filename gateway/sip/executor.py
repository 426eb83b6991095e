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


class SipExecutor:
    def __init__(self, on_timer_error: type[BaseException] = Exception) -> None:
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
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

    def schedule(self, delay: float, fn: Callable[[], None]) -> None:
        """SIP thread only: run `fn` on the SIP thread after `delay` seconds."""
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn))

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
            _, _, fn = heapq.heappop(self._timers)
            try:
                fn()
            except self._timer_error as exc:  # a failed timer must not stop the SIP thread
                log.warning("event=timer_failed error=%s", exc)
