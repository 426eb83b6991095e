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

from gateway.calls import events as ev
from gateway.calls.events import WorkerEvent
from gateway.events.schema import (
    AgentConnected,
    AgentDisconnected,
    CallAmd,
    CallAnswered,
    CallCompleted,
    CallDtmf,
    CallFailed,
    CallIncoming,
    CallPlaced,
    CallQuality,
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


def media_event_data(event: WorkerEvent) -> EventData | None:
    """The public data (gateway/events/schema.py) of a happening that joins its call's history
    as it is, changing nothing in the call's record; None for every other happening."""
    match event:
        case ev.DtmfReceived(digit=digit, method=method, duration_ms=duration_ms):
            return CallDtmf.model_validate(
                {"digit": digit, "method": method, "duration_ms": duration_ms}
            )
        case ev.AmdDetected(result=result, reason=reason, analysis_ms=ms, beep_ms=beep_ms):
            return CallAmd.model_validate(
                {"result": result, "reason": reason, "analysis_ms": ms, "beep_ms": beep_ms}
            )
        case ev.QualityMeasured():
            return CallQuality(
                mos=event.mos, jitter_ms=event.jitter_ms, packet_loss_pct=event.packet_loss_pct,
                rtt_ms=event.rtt_ms, packets_received=event.packets_received,
                packets_lost=event.packets_lost, final=event.final,
            )  # fmt: skip
        case ev.TransferProgress(target=target, status=status, sip_code=code):
            return CallTransfer.model_validate(
                {"target": target, "status": status, "sip_code": code}
            )
        case ev.SpeechBegan(party=party, offset_ms=offset):
            return CallSpeechStarted(party=party, offset_ms=offset)
        case ev.SpeechEnded(party=party, offset_ms=offset, duration_ms=duration_ms):
            return CallSpeechStopped(party=party, offset_ms=offset, duration_ms=duration_ms)
        case ev.AgentLinkUp(agent=agent, transport=transport, codec=codec, reconnect=again):
            return AgentConnected.model_validate(
                {"agent": agent, "transport": transport, "codec": codec, "reconnect": again}
            )
        case ev.AgentLinkDown(agent=agent, transport=transport, reason=reason):
            return AgentDisconnected.model_validate(
                {"agent": agent, "transport": transport, "reason": reason}
            )
        case ev.RecordingFinished(path=path, duration=duration, bytes=size):
            return RecordingReady(path=path, duration=duration, bytes=size)
    return None


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
        # One handler per kind of happening (gateway/calls/events.py).
        self._handlers: dict[type[WorkerEvent], Callable[[Any, float], None]] = {
            ev.CallOffered: self._offered,
            ev.CallDialed: self._offered,
            ev.Ringing: self._ringing_or_early,
            ev.EarlyMedia: self._ringing_or_early,
            ev.Answered: self._answered,
            ev.Completed: self._completed,
            ev.Failed: self._failed,
            ev.DtmfReceived: self._append,
            ev.TransferProgress: self._append,
            ev.AmdDetected: self._append,
            ev.QualityMeasured: self._append,
            ev.SpeechBegan: self._append,
            ev.SpeechEnded: self._append,
            ev.AgentLinkUp: self._append,
            ev.AgentLinkDown: self._append,
            ev.RecordingFinished: self._recording,
            ev.TrunkStateChanged: self._trunk,
        }

    def record(self, event: WorkerEvent, ts: float) -> None:
        """Persist one worker event; never raises (a bad event is logged and skipped)."""
        handler = self._handlers.get(type(event))
        if handler is None:
            return  # not a record (InvitesRefused: metrics only)
        try:
            handler(event, ts)
        except Exception:  # one bad event must not stop the node from recording the rest
            log.exception(
                "event=ledger_failed type=%s call_id=%s", type(event).__name__, event.call_id
            )
            return
        self.on_written()

    def _event(self, data: EventData, call_id: str | None, ts: float) -> Event:
        return Event.of(data, node=self.node, call_id=call_id, ts=_utc(ts))

    def _offered(self, event: ev.CallOffered | ev.CallDialed, ts: float) -> None:
        inbound = isinstance(event, ev.CallOffered)
        record = StoredCall(
            id=event.call_id,
            direction=event.direction,
            status="ringing" if inbound else "dialing",
            trunk=event.trunk,
            from_number=event.from_number,
            to_number=event.to_number,
            route=event.to_number if inbound else None,
            agent=event.agent,
            variables=event.variables,
            sip_call_id=event.sip_call_id or None,
            created_at=_utc(ts) or datetime.now(UTC),
        )
        parties = {"from": event.from_number, "to": event.to_number, "trunk": event.trunk,
                   "agent": event.agent, "variables": event.variables}  # fmt: skip
        model = CallIncoming if inbound else CallPlaced
        data = model.model_validate(parties)
        self.store.create_call(record, self._event(data, event.call_id, ts))
        self.active.add(event.call_id)

    def _ringing_or_early(self, event: ev.Ringing | ev.EarlyMedia, ts: float) -> None:
        # One call.ringing, and a second one with early_media=true if early media (183
        # with SDP) starts after a plain 180.
        call_id, early = event.call_id, isinstance(event, ev.EarlyMedia)
        if call_id in self._ringing and (not early or call_id in self._early):
            return
        self._ringing.add(call_id)
        if early:
            self._early.add(call_id)
        data = self._event(CallRinging(early_media=early), call_id, ts)
        self.store.update_call(call_id, {"status": "ringing", "ringing_at": _utc(ts)}, data)

    def _answered(self, event: ev.Answered, ts: float) -> None:
        answered = _utc(event.answered_at or ts) or datetime.now(UTC)
        data = CallAnswered(codec=event.codec, answered_at=answered)
        self.store.update_call(
            event.call_id,
            {"status": "answered", "answered_at": answered, "codec": event.codec},
            self._event(data, event.call_id, ts),
        )

    def _completed(self, event: ev.Completed, ts: float) -> None:
        billable = math.ceil(event.duration)
        data = CallCompleted(
            duration=event.duration,
            billable_seconds=billable,
            reason=event.reason,
            sip_code=event.sip_code,
            hangup_by=event.hangup_by,
            latency=event.latency,
        )
        fields = {"status": "completed", "ended_at": _utc(ts), "duration": event.duration,
                  "billable_seconds": billable, "latency": event.latency or None}  # fmt: skip
        self._end(event, fields, data, ts)

    def _failed(self, event: ev.Failed, ts: float) -> None:
        data = CallFailed(reason=event.reason, sip_code=event.sip_code, sip_reason=event.sip_reason)
        fields = {"status": "failed", "ended_at": _utc(ts), "duration": 0.0,
                  "billable_seconds": 0}  # fmt: skip
        self._end(event, fields, data, ts)

    def _end(
        self, event: ev.Completed | ev.Failed, fields: dict[str, Any], data: EventData, ts: float
    ) -> None:
        fields |= {"end_reason": event.reason, "sip_code": event.sip_code,
                   "hangup_by": event.hangup_by}  # fmt: skip
        self.store.update_call(event.call_id, fields, self._event(data, event.call_id, ts))
        self.active.discard(event.call_id)
        self._ringing.discard(event.call_id)
        self._early.discard(event.call_id)

    def _append(self, event: ev.CallEvent, ts: float) -> None:
        data = media_event_data(event)
        if data is not None:
            self.store.add_event(self._event(data, event.call_id, ts))

    def _recording(self, event: ev.RecordingFinished, ts: float) -> None:
        data = RecordingReady(path=event.path, duration=event.duration, bytes=event.bytes)
        fields = {"recording_path": data.path, "recording_duration": data.duration,
                  "recording_bytes": data.bytes, "recording_at": _utc(ts),
                  "recording_deleted_at": None}  # fmt: skip
        self.store.update_call(event.call_id, fields, self._event(data, event.call_id, ts))

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
                completed = ev.Completed(
                    call_id=record.id,
                    duration=round(duration, 3),
                    reason=reason,
                    hangup_by="gateway",
                )
                self.record(completed, ended)
            else:
                failed = ev.Failed(
                    call_id=record.id,
                    reason=reason,
                    sip_reason="SIP worker lost the call",
                    hangup_by="gateway",
                )
                self.record(failed, ended)
            log.warning("event=orphan_call_closed call_id=%s reason=%s", record.id, reason)
            closed += 1
        return closed

    def _trunk(self, event: ev.TrunkStateChanged, ts: float) -> None:
        status = event.as_status()
        self.trunks[event.trunk] = status
        self.on_trunk_state(event.trunk, status)
        model = _TRUNK_EVENTS.get(event.state)
        if model is None:
            return
        data = model(
            trunk=event.trunk,
            state=event.state,
            sip_code=event.sip_code,
            reason=event.reason,
            expires=event.expires,
            next_retry_at=_utc(event.next_retry_at),
        )
        self.store.add_event(self._event(data, None, ts))
