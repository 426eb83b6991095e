"""What a node's log says about its SIP worker's health: deaths, interpreter errors, calls
that began and never ended. Shared by the teardown load test and bench/teardown_load.py."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_READY = re.compile(r"event=worker_ready worker=\d+ pid=(\d+)")
_EXITED = re.compile(r"event=worker_exited worker=\d+ code=(-?\d+)")
_INCOMING = re.compile(r"event=call_incoming call_id=(\S+)")
_ENDED = re.compile(r"event=call_(?:completed|failed) call_id=(\S+)")
# What CPython prints when a thread dies, the interpreter aborts or memory is corrupted.
INTERPRETER_ERRORS = (
    "Fatal Python error",
    "Traceback (most recent call last)",
    "Immortal interned string died",
    "Exception ignored in",
)


@dataclass
class WorkerFaults:
    worker_pids: list[int] = field(default_factory=list)  # one per worker start
    deaths: int = 0  # worker exits with a non-zero code (signal: negative)
    interpreter_errors: dict[str, int] = field(default_factory=dict)
    unended_calls: list[str] = field(default_factory=list)  # call_incoming, no end logged
    answered_calls: int = 0

    @property
    def clean(self) -> bool:
        return (
            len(self.worker_pids) == 1
            and self.deaths == 0
            and not self.interpreter_errors
            and not self.unended_calls
        )


def worker_faults(log: str) -> WorkerFaults:
    ended = set(_ENDED.findall(log))
    return WorkerFaults(
        worker_pids=[int(pid) for pid in _READY.findall(log)],
        deaths=sum(1 for code in _EXITED.findall(log) if int(code) != 0),
        interpreter_errors={e: log.count(e) for e in INTERPRETER_ERRORS if e in log},
        unended_calls=[c for c in _INCOMING.findall(log) if c not in ended],
        answered_calls=log.count("event=call_answered "),
    )
