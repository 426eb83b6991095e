"""What a reload of the config changes, decided before anything is touched: pure code, no I/O.

A running node takes a new config for what it can change without dropping a call: the trunks,
the numbers, the agents, the limits, VAD and recording settings, the webhooks. Anything else
(the node's id, its SIP sockets, ports, MQTT, the API, the store, the number of workers) is
where calls, sockets and connections live: a reload that changes it is refused whole, naming
each key, and the node keeps running on the config it has. Messages name keys only, never
values (a changed password must not appear in a log line).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.config import Config, worker_count

# Top-level sections a running node applies (everything else takes a restart).
LIVE_SECTIONS = ("trunks", "numbers", "agents", "limits", "vad", "recording", "webhooks",
                 "webhooks_max_failures")  # fmt: skip


@dataclass(frozen=True)
class ReloadPlan:
    problems: list[str] = field(default_factory=list)  # non-empty: the reload is refused
    changed: list[str] = field(default_factory=list)  # live sections that differ
    trunks_added: list[str] = field(default_factory=list)
    trunks_removed: list[str] = field(default_factory=list)
    trunks_changed: list[str] = field(default_factory=list)

    def as_event_data(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "trunks_added": self.trunks_added,
            "trunks_removed": self.trunks_removed,
            "trunks_changed": self.trunks_changed,
        }


def plan_reload(source: str, old: Config, new: Config) -> ReloadPlan:
    """How the node goes from `old` to `new`, read from the file `source`."""
    fixed = [key for key in _changed_keys(_fixed(old), _fixed(new))]
    problems = [
        f"{source}: {key}: changed; a running node applies only "
        f"{', '.join(LIVE_SECTIONS)} (restart the node for this one)"
        for key in fixed
    ]
    if not problems and worker_count(old) != worker_count(new):
        problems.append(
            f"{source}: node.workers: auto now gives {worker_count(new)} workers for "
            f"limits.max_concurrent_calls (was {worker_count(old)}); restart the node for that"
        )
    if problems:
        return ReloadPlan(problems=problems)
    before = {t.id: t for t in old.trunks}
    after = {t.id: t for t in new.trunks}
    return ReloadPlan(
        changed=[s for s in LIVE_SECTIONS if getattr(old, s) != getattr(new, s)],
        trunks_added=sorted(set(after) - set(before)),
        trunks_removed=sorted(set(before) - set(after)),
        trunks_changed=sorted(t for t in set(before) & set(after) if before[t] != after[t]),
    )


def _fixed(config: Config) -> dict[str, Any]:
    """The sections a reload must leave as they are (SecretStr values compare by secret)."""
    data = config.model_dump(exclude=set(LIVE_SECTIONS))
    return data


def _changed_keys(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            keys += _changed_keys(old.get(key), new.get(key), sub)
        return keys
    return [] if old == new else [path]
