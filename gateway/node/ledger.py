"""Turns what the SIP worker reports into call records and outbox events, one transaction each.

The store write comes first; publishing happens later from the outbox, so a broker that is
down never loses or delays a call's record.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any

from gateway.events.schema import (
    AgentConnected,
    AgentDisconnected,
    CallAnswered,
    CallCompleted,
    CallDtmf,
    CallFailed,
    CallIncoming,
    CallPlaced,
    CallRinging,
    CallSpeechStarted,
    CallSpeechStopped,
    CallTransfer,
    Event,
    EventData,
    RecordingReady,
    TrunkRegistered,
    TrunkRegistrationFailed,
    TrunkUnregistered,
)
from gateway.store.sqlite import Store, StoredCall

log = logging.getLogger("sipedge.ledger")

_TRUNK_EVENTS: dict[str, type[TrunkRegistered | TrunkRegistrationFailed | TrunkUnregistered]] = {
    "registered": TrunkRegistered,
    "failed": TrunkRegistrationFailed,
    "unregistered": TrunkUnregistered,
}


# Media events are appended to the call's history as they are, validated by their model.
_MEDIA_EVENTS: dict[str, type[EventData]] = {
    m.event_type: m
    for m in (
        CallSpeechStarted,
        CallSpeechStopped,
        AgentConnected,
        AgentDisconnected,
        RecordingReady,
    )
}


def _utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC)


class Ledger:
    def __init__(
        self,
        store: Store,
        node: str,
        on_written: Callable[[], None] = lambda: None,
        on_trunk_state: Callable[[str, dict[str, Any]], None] = lambda t, s: None,
    ) -> None:
        self.store = store
        self.node = node
        self.on_written = on_written
        self.on_trunk_state = on_trunk_state
        self.active: set[str] = set()
        self.trunks: dict[str, dict[str, Any]] = {}
        self._ringing: set[str] = set()
        self._early: set[str] = set()

    def record(self, kind: str, call_id: str | None, data: dict[str, Any], ts: float) -> None:
        """Persist one worker event; never raises (a bad event is logged and skipped)."""
        try:
            self._record(kind, call_id, data, ts)
        except Exception:  # one bad event must not stop the node from recording the rest
            log.exception("event=ledger_failed type=%s call_id=%s", kind, call_id)
            return
        self.on_written()

    def _event(self, data: EventData, call_id: str | None, ts: float) -> Event:
        return Event.of(data, node=self.node, call_id=call_id, ts=_utc(ts))

    def _record(self, kind: str, call_id: str | None, data: dict[str, Any], ts: float) -> None:
        if kind == "trunk.state":
            self._trunk(data, ts)
            return
        if call_id is None:
            return
        if kind in ("call.incoming", "call.placed"):
            inbound = kind == "call.incoming"
            parties = {
                "from": data["from"],
                "to": data["to"],
                "trunk": data["trunk"],
                "agent": data["agent"],
                "variables": data["variables"],
            }
            record = StoredCall(
                id=call_id,
                direction=data["direction"],
                status="ringing" if inbound else "dialing",
                trunk=data["trunk"],
                from_number=data["from"],
                to_number=data["to"],
                route=data["to"] if inbound else None,
                agent=data["agent"],
                variables=data["variables"],
                sip_call_id=data.get("sip_call_id") or None,
                created_at=_utc(ts) or datetime.now(UTC),
            )
            model = CallIncoming if inbound else CallPlaced
            self.store.create_call(record, self._event(model.model_validate(parties), call_id, ts))
            self.active.add(call_id)
        elif kind in ("call.ringing", "call.early_media"):
            # One call.ringing, and a second one with early_media=true if early media (183
            # with SDP) starts after a plain 180.
            early = kind == "call.early_media"
            if call_id in self._ringing and (not early or call_id in self._early):
                return
            self._ringing.add(call_id)
            if early:
                self._early.add(call_id)
            event = self._event(CallRinging(early_media=early), call_id, ts)
            self.store.update_call(call_id, {"status": "ringing", "ringing_at": _utc(ts)}, event)
        elif kind == "call.answered":
            answered = _utc(data.get("answered_at") or ts) or datetime.now(UTC)
            event = self._event(
                CallAnswered(codec=data["codec"], answered_at=answered), call_id, ts
            )
            self.store.update_call(
                call_id,
                {"status": "answered", "answered_at": answered, "codec": data["codec"]},
                event,
            )
        elif kind == "call.completed":
            duration = float(data["duration"])
            billable = math.ceil(duration)
            event = self._event(
                CallCompleted(
                    duration=duration,
                    billable_seconds=billable,
                    reason=data["reason"],
                    sip_code=data.get("sip_code"),
                    hangup_by=data.get("hangup_by"),
                    latency=data.get("latency"),
                ),
                call_id,
                ts,
            )
            self.store.update_call(
                call_id,
                {
                    "status": "completed",
                    "ended_at": _utc(ts),
                    "duration": duration,
                    "billable_seconds": billable,
                    "end_reason": data["reason"],
                    "sip_code": data.get("sip_code"),
                    "hangup_by": data.get("hangup_by"),
                },
                event,
            )
            self._ended(call_id)
        elif kind == "call.failed":
            event = self._event(
                CallFailed(
                    reason=data["reason"],
                    sip_code=data.get("sip_code"),
                    sip_reason=data.get("sip_reason"),
                ),
                call_id,
                ts,
            )
            self.store.update_call(
                call_id,
                {
                    "status": "failed",
                    "ended_at": _utc(ts),
                    "duration": 0.0,
                    "billable_seconds": 0,
                    "end_reason": data["reason"],
                    "sip_code": data.get("sip_code"),
                    "hangup_by": data.get("hangup_by"),
                },
                event,
            )
            self._ended(call_id)
        elif kind == "call.dtmf":
            self.store.add_event(self._event(CallDtmf.model_validate(data), call_id, ts))
        elif kind == "call.transfer":
            self.store.add_event(self._event(CallTransfer.model_validate(data), call_id, ts))
        elif kind == RecordingReady.event_type:
            ready = RecordingReady.model_validate(data)
            event = self._event(ready, call_id, ts)
            self.store.update_call(call_id, {"recording_path": ready.path}, event)
        elif kind in _MEDIA_EVENTS:
            media = _MEDIA_EVENTS[kind].model_validate(data)
            self.store.add_event(self._event(media, call_id, ts))
        else:
            log.debug("event=ledger_ignored type=%s", kind)

    def close_orphans(
        self,
        reason: str,
        alive_until: float | None = None,
        keep: set[str] | frozenset[str] = frozenset(),
        only: Collection[str] | None = None,
    ) -> int:
        """End every open call except `keep` (of those in `only`, if given: the calls of one
        worker): after a worker crash or a node killed mid-call, those calls are gone on the
        SIP side, and the control plane must hear that they ended.
        A call ends at the last moment it is known to have been alive: `alive_until` (when the
        worker was seen to die, or the node's last heartbeat), never before its last event."""
        closed = 0
        for record in self.store.open_calls():
            if record.id in keep or (only is not None and record.id not in only):
                continue
            events = self.store.call_events(record.id)
            last = events[-1].ts.timestamp() if events else record.created_at.timestamp()
            ended = max(last, alive_until) if alive_until is not None else last
            if record.answered_at is not None:
                duration = max(0.0, ended - record.answered_at.timestamp())
                data = {
                    "duration": round(duration, 3),
                    "reason": reason,
                    "sip_code": None,
                    "hangup_by": "gateway",
                }
                self.record("call.completed", record.id, data, ended)
            else:
                data = {
                    "reason": reason,
                    "sip_code": None,
                    "sip_reason": "SIP worker lost the call",
                    "hangup_by": "gateway",
                }
                self.record("call.failed", record.id, data, ended)
            log.warning("event=orphan_call_closed call_id=%s reason=%s", record.id, reason)
            closed += 1
        return closed

    def _ended(self, call_id: str) -> None:
        self.active.discard(call_id)
        self._ringing.discard(call_id)
        self._early.discard(call_id)

    def _trunk(self, data: dict[str, Any], ts: float) -> None:
        trunk = data["trunk"]
        self.trunks[trunk] = data
        self.on_trunk_state(trunk, data)
        model = _TRUNK_EVENTS.get(data["state"])
        if model is None:
            return
        self.store.add_event(
            self._event(
                model(
                    trunk=trunk,
                    state=data["state"],
                    sip_code=data.get("sip_code"),
                    reason=data.get("reason"),
                    expires=data.get("expires"),
                    next_retry_at=_utc(data.get("next_retry_at")),
                ),
                None,
                ts,
            )
        )
