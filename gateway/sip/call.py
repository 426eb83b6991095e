"""One SIP call on pjsua2, and the audio port that joins it to its media session.

Call callbacks run on the SIP thread; AudioPort callbacks run on pjmedia's clock thread and
only move bytes (see gateway/sip/vectors.py for why they read the vector's buffer directly).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import pjsua2 as pj

from gateway.calls import CallRecord, CallState, EndReason, failure_reason
from gateway.media_session import MediaSession
from gateway.sip.executor import Timer
from gateway.sip.vectors import read_vector, write_vector

if TYPE_CHECKING:
    from gateway.sip.engine import SipEngine

log = logging.getLogger("sipedge.sip.call")

_DTMF_METHODS = {
    pj.PJSUA_DTMF_METHOD_RFC2833: "rfc4733",
    pj.PJSUA_DTMF_METHOD_SIP_INFO: "sip_info",
}
# pjsua reports (unsigned)-1 when it does not know a digit's duration: always for RFC 4733
# (the digit is reported as its first packet arrives), and for a SIP INFO without Duration.
_UNKNOWN_DTMF_DURATION = 0xFFFFFFFF


class AudioPort(pj.AudioMediaPort):  # type: ignore[misc]
    """Conference-bridge port: caller audio in, agent audio out, one 20 ms frame at a time."""

    def __init__(self, session: MediaSession) -> None:
        super().__init__()
        self.session = session
        self._frame_bytes = session.rate // 50 * 2

    def onFrameReceived(self, frame: pj.MediaFrame) -> None:  # noqa: N802 (pjsua2 name)
        if frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO:
            self.session.on_caller_frame(read_vector(frame.buf))

    def onFrameRequested(self, frame: pj.MediaFrame) -> None:  # noqa: N802
        data = self.session.next_frame()
        frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
        frame.size = len(data)
        write_vector(frame.buf, data)


class SipCall(pj.Call):  # type: ignore[misc]
    def __init__(
        self,
        engine: SipEngine,
        account: pj.Account,
        record: CallRecord,
        pj_call_id: int = pj.PJSUA_INVALID_ID,
    ) -> None:
        super().__init__(account, pj_call_id)
        self.engine = engine
        self.record = record
        self.session: MediaSession | None = None
        self.port: AudioPort | None = None
        self.bridged_slot: int | None = None
        self.codec = ""
        self.timed_out = False
        self.transfer_target: str | None = None
        self.timers: list[Timer] = []  # this call's limits; cancelled when it ends
        self.answered_at: float | None = None
        self.started_at = time.time()

    # -- pjsua2 callbacks (SIP thread) --------------------------------------------------------

    def onCallState(self, prm: Any) -> None:  # noqa: N802
        try:
            info = self.getInfo()
        except pj.Error as exc:
            log.warning("event=call_info_failed call_id=%s error=%s", self.record.id, exc.info())
            return
        state = info.state
        rec = self.record
        if state == pj.PJSIP_INV_STATE_EARLY and rec.direction == "outbound":
            rec.got_provisional = True
            if rec.advance(CallState.RINGING):
                self.engine.emit("call.ringing", rec, {"sip_code": info.lastStatusCode})
        elif state == pj.PJSIP_INV_STATE_CONFIRMED:
            if rec.advance(CallState.ANSWERED):
                self.answered_at = time.time()
                self.engine.on_answered(self)
        elif state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self._ended(info)

    def onCallMediaState(self, prm: Any) -> None:  # noqa: N802
        try:
            info = self.getInfo()
        except pj.Error:
            return
        for index, media in enumerate(info.media):
            if media.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            if media.status in (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD):
                try:
                    self._bridge(index)
                except Exception:  # no agent without media: end the call rather than sit silent
                    log.exception("event=media_bridge_failed call_id=%s", self.record.id)
                    self.record.end_reason = EndReason.FAILED
                    self.engine.schedule(0, lambda: self.engine.hangup(self.record.id, "gateway"))
                    return
                if info.state == pj.PJSIP_INV_STATE_EARLY and self.record.direction == "outbound":
                    self.engine.emit("call.early_media", self.record, {})
            break
        try:
            stream = self.getStreamInfo(0)
            self.codec = f"{stream.codecName}/{stream.codecClockRate}"
        except pj.Error:
            pass

    def onDtmfDigit(self, prm: Any) -> None:  # noqa: N802
        method = _DTMF_METHODS.get(prm.method, "unknown")
        duration = None if prm.duration == _UNKNOWN_DTMF_DURATION else int(prm.duration)
        if self.session is not None:
            self.session.on_dtmf(prm.digit)
        self.engine.emit(
            "call.dtmf",
            self.record,
            {"digit": prm.digit, "method": method, "duration_ms": duration},
        )

    def onCallTransferStatus(self, prm: Any) -> None:  # noqa: N802
        final, code = bool(prm.finalNotify), int(prm.statusCode)
        status = "accepted" if not final else "completed" if 200 <= code < 300 else "failed"
        self.engine.emit(
            "call.transfer",
            self.record,
            {"target": self.transfer_target or "", "status": status, "sip_code": code},
        )
        prm.cont = not final
        if status == "completed":
            # The far end now talks to the transfer target; our leg of the call is done.
            self.record.end_reason = EndReason.TRANSFERRED
            self.engine.schedule(0, lambda: self.engine.hangup(self.record.id, "control_plane"))

    # -- media --------------------------------------------------------------------------------

    def _bridge(self, index: int) -> None:
        audio = self.getAudioMedia(index)
        slot = audio.getPortId()
        if slot == self.bridged_slot:
            return
        if self.port is None:
            self.session = self.engine.make_session(self.record, self.engine.controls(self.record))
            fmt = pj.MediaFormatAudio()
            fmt.init(pj.PJMEDIA_FORMAT_PCM, self.session.rate, 1, 20000, 16)
            self.port = AudioPort(self.session)
            self.port.createPort(f"call-{self.record.id}", fmt)
        audio.startTransmit(self.port)
        self.port.startTransmit(audio)
        self.bridged_slot = slot

    def _ended(self, info: Any) -> None:
        rec = self.record
        was_answered = rec.state == CallState.ANSWERED
        code = info.lastStatusCode
        if was_answered:
            if rec.hangup_by is None:
                rec.hangup_by = "caller" if rec.direction == "inbound" else "callee"
            rec.end_reason = rec.end_reason or EndReason.NORMAL
        elif rec.end_reason is None:
            if rec.direction == "inbound":
                rec.end_reason = EndReason.CANCELLED if code == 487 else EndReason.REJECTED
            else:
                rec.end_reason = failure_reason(code, rec.got_provisional, self.timed_out)
        rec.advance(CallState.ENDED)
        if self.session is not None:
            self.session.close()
        self.engine.on_ended(self, was_answered, code, info.lastReason)

    def duration(self) -> float:
        return 0.0 if self.answered_at is None else max(0.0, time.time() - self.answered_at)
