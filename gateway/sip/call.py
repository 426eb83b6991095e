"""One SIP call on pjsua2, and the audio port that joins it to its media session.

Call callbacks run on the SIP thread; AudioPort callbacks run on pjmedia's clock thread and
only move bytes (see gateway/sip/vectors.py for why they read the vector's buffer directly).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import pjsua2 as pj

from gateway.calls.events import DtmfReceived, EarlyMedia, TransferProgress, WorkerEvent
from gateway.calls.leg import (
    CallLeg,
    Confirmed,
    Disconnected,
    Happening,
    MediaFailed,
    Provisional,
    TransferCompleted,
)
from gateway.calls.model import CallRecord, CallState
from gateway.session.contract import (
    AnswerAware,
    MediaSession,
    Negotiated,
    PlaneMedia,
    SrtpKeys,
)
from gateway.sip.executor import Timer
from gateway.sip.rtpsock import NoRtpPort, RtpSockets
from gateway.sip.sdp import Crypto, audio_crypto, point_audio_at
from gateway.sip.vectors import fit_frame, read_vector, write_vector

if TYPE_CHECKING:
    from gateway.session.contract import CallControls

log = logging.getLogger("sipedge.sip.call")

_DTMF_METHODS = {
    pj.PJSUA_DTMF_METHOD_RFC2833: "rfc4733",
    pj.PJSUA_DTMF_METHOD_SIP_INFO: "sip_info",
}
# pjsua reports (unsigned)-1 when it does not know a digit's duration: always for RFC 4733
# (the digit is reported as its first packet arrives), and for a SIP INFO without Duration.
_UNKNOWN_DTMF_DURATION = 0xFFFFFFFF


def _library_running() -> bool:
    """pjsua's conference bridge exists: from libInit until libDestroy has torn media down
    (CLOSING covers the calls libDestroy itself hangs up)."""
    try:
        state = pj.Endpoint.instance().libGetState()
    except pj.Error:  # no endpoint (any more)
        return False
    return bool(pj.PJSUA_STATE_INIT <= state <= pj.PJSUA_STATE_CLOSING)


class AudioPort(pj.AudioMediaPort):  # type: ignore[misc]
    """Conference-bridge port: caller audio in, agent audio out, one 20 ms frame at a time.

    pjmedia's clock thread calls the two callbacks through SWIG's director for as long as the
    C++ port is in the bridge, and the C++ destructor (which takes it out) runs with the GIL
    released. If that destructor runs from the Python object's deallocation, the clock thread
    can get the GIL in that window and call into an object being freed (its attributes
    already gone: `AttributeError: ... 'session'`, then a dangling reference and a crash).
    So the SIP thread `close()`s the port while the object is whole, and `__del__` does the
    same for a port nobody closed.
    """

    def __init__(self, session: MediaSession) -> None:
        # Set before the C++ director exists, so no callback can find the object without them.
        self.session: MediaSession | None = session
        self._frame_bytes = session.rate // 50 * 2
        self.frames_cut = 0  # frames the session made longer than the bridge's buffer
        super().__init__()

    def onFrameReceived(self, frame: pj.MediaFrame) -> None:  # noqa: N802 (pjsua2 name)
        session = self.session
        if session is not None and frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO:
            session.on_caller_frame(read_vector(frame.buf))

    def onFrameRequested(self, frame: pj.MediaFrame) -> None:  # noqa: N802
        session = self.session
        if session is None:  # closing: an empty frame
            return
        # On input frame.size is the capacity of the bridge's buffer; pjsua2 copies
        # min(len(buf), frame.size) bytes into it, so frame.size must never grow past it.
        capacity = frame.size
        data = session.next_frame()
        if len(data) != capacity:
            if len(data) > capacity:
                self.frames_cut += 1
            data = fit_frame(data, capacity)
        frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
        write_vector(frame.buf, data)
        frame.size = len(data)

    def close(self) -> None:
        """SIP thread: take the port out of the bridge and destroy its C++ side, now.

        Once this returns the clock thread will never call this object again (pjsua2's
        destructor waits for a callback in progress, under the port's group lock, then
        detaches the port); a callback already waiting for the GIL finds `session` None."""
        session, self.session = self.session, None
        if session is None or "this" not in self.__dict__:  # closed, or never constructed
            return
        if _library_running():
            pj.AudioMediaPort.__swig_destroy__(self)  # disowns: deallocation won't destroy again
        else:  # after libDestroy the destructor would assert in pjmedia_conf_remove_port
            self.this.disown()  # the C++ object is left behind; the process is ending
        del self.this  # a stray pjsua2 call on the husk raises TypeError instead of crashing

    def __del__(self) -> None:
        self.close()


class CallHooks(Protocol):
    """What a call calls back into (the SIP engine), so this module needs no import of the
    engine (that import was a circle)."""

    @property
    def make_session(self) -> Callable[[CallRecord, CallControls], MediaSession]: ...

    def emit(self, event: WorkerEvent) -> None: ...

    def controls(self, record: CallRecord) -> CallControls: ...

    def feed(self, call: SipCall, happening: Happening) -> None: ...

    rtp_sockets: RtpSockets | None  # node.media plane: where a call's own RTP socket comes from
    rtp_host: str | None  # the address our SDP names for it (None: the one pjsua chose)


class SipCall(pj.Call):  # type: ignore[misc]
    """A pjsua2 call: its callbacks tell the call's leg (gateway/calls/leg.py) what happened,
    through the engine, which does what the leg decides."""

    def __init__(
        self,
        engine: CallHooks,
        account: pj.Account,
        leg: CallLeg,
        pj_call_id: int = pj.PJSUA_INVALID_ID,
    ) -> None:
        super().__init__(account, pj_call_id)
        self.engine = engine
        self.leg = leg
        self.record = leg.record
        self.session: MediaSession | None = None
        self.port: AudioPort | None = None
        self.bridged_slot: int | None = None
        self.codec = ""
        self.transfer_target: str | None = None
        self.timers: list[Timer] = []  # this call's limits; cancelled when it ends
        self.source = ""  # the IP an inbound INVITE came from
        self.on_hold = False
        self.rtp: socket.socket | None = None  # node.media plane: the call's RTP and RTCP,
        self.rtcp: socket.socket | None = None  # named in our SDP, served by the plane
        # SDES keys (node.media plane): ours, from the SDP pjsua wrote, and the far end's, from
        # its offer or answer; None until that SDP is seen
        self.local_crypto: list[Crypto] = []
        self.remote_crypto: list[Crypto] | None = None
        self._attach_waiting: int | None = None  # media up before the far end's SDP was seen

    # -- liveness (SIP thread) ------------------------------------------------------------------

    def rx_packets(self) -> int | None:
        """RTP packets received from the far end so far (None: no stream to read)."""
        if isinstance(self.session, PlaneMedia):
            return self.session.rx_packets
        try:
            return int(self.getStreamStat(0).rtcp.rxStat.pkt)
        except pj.Error:
            return None  # no stream (yet, or any more)

    def is_gone(self) -> bool:
        """True if pjsua no longer has this call (its slot is free or holds another call)."""
        try:
            info = self.getInfo()
        except (pj.Error, TypeError):  # TypeError: the C++ Call was destroyed at DISCONNECTED
            return True
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            return True
        return bool(self.record.sip_call_id) and info.callIdString != self.record.sip_call_id

    # -- pjsua2 callbacks (SIP thread) --------------------------------------------------------

    def onCallState(self, prm: Any) -> None:  # noqa: N802
        if self.engine.rtp_sockets is not None and self.local_crypto:
            self._remote_sdp_from(prm.e)
        try:
            info = self.getInfo()
        except pj.Error as exc:
            log.warning("event=call_info_failed call_id=%s error=%s", self.record.id, exc.info())
            return
        state = info.state
        if state == pj.PJSIP_INV_STATE_EARLY:
            self.engine.feed(self, Provisional(info.lastStatusCode))
        elif state == pj.PJSIP_INV_STATE_CONFIRMED:
            self.engine.feed(self, Confirmed(time.time()))
        elif state == pj.PJSIP_INV_STATE_DISCONNECTED:
            try:
                self.engine.feed(
                    self, Disconnected(info.lastStatusCode, info.lastReason, time.time())
                )
            finally:
                self._release_pjsua()

    def onCallMediaState(self, prm: Any) -> None:  # noqa: N802
        try:
            info = self.getInfo()
        except pj.Error:
            return
        for index, media in enumerate(info.media):
            if media.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            self.on_hold = media.status in (
                pj.PJSUA_CALL_MEDIA_REMOTE_HOLD,
                pj.PJSUA_CALL_MEDIA_LOCAL_HOLD,
                pj.PJSUA_CALL_MEDIA_NONE,
            )
            if media.status in (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD):
                try:
                    self._bridge(index)
                except Exception:  # the leg ends the call: no agent without media
                    log.exception("event=media_bridge_failed call_id=%s", self.record.id)
                    self.engine.feed(self, MediaFailed())
                    return
                if info.state == pj.PJSIP_INV_STATE_EARLY and self.record.direction == "outbound":
                    self.engine.emit(EarlyMedia(call_id=self.record.id))
            break
        try:
            stream = self.getStreamInfo(0)
            self.codec = f"{stream.codecName}/{stream.codecClockRate}"
        except pj.Error:
            pass

    def onCallSdpCreated(self, prm: Any) -> None:  # noqa: N802
        """node.media plane: every SDP we send (offer, answer, re-INVITE) names the call's
        own socket, which the media plane serves; what pjsua negotiated is kept."""
        sockets = self.engine.rtp_sockets
        if sockets is None:
            return
        if self.rtp is None:
            try:
                self.rtp, self.rtcp = sockets.bind()
            except (NoRtpPort, OSError) as exc:
                log.error("event=rtp_port_unavailable call_id=%s error=%s", self.record.id, exc)
                return  # the SDP keeps pjsua's socket; the call fails when its media does
        port = self.rtp.getsockname()[1]
        prm.sdp.wholeSdp = point_audio_at(prm.sdp.wholeSdp, self.engine.rtp_host, port)
        self.local_crypto = audio_crypto(prm.sdp.wholeSdp)
        remote = str(prm.remSdp.wholeSdp or "")
        if remote:  # our SDP answers this one (an INVITE's offer, a re-INVITE's)
            self.remote_crypto = audio_crypto(remote)

    def _remote_sdp_from(self, event: Any) -> None:
        """The far end's SDP answer to our offer (a 18x or 200 to our INVITE): its keys.
        pjsua tells the media before the state, so media that came up first attaches now."""
        try:
            message = str(event.body.tsxState.src.rdata.wholeMsg or "")
        except (AttributeError, pj.Error):
            return
        head, _, body = message.partition("\r\n\r\n")
        if not message.startswith("SIP/2.0 ") or "application/sdp" not in head.lower() or not body:
            return
        self.remote_crypto = audio_crypto(body)
        waiting, self._attach_waiting = self._attach_waiting, None
        if waiting is not None:
            try:
                self._attach_plane(waiting)
            except Exception:  # the leg ends the call: no agent without media
                log.exception("event=media_bridge_failed call_id=%s", self.record.id)
                self.engine.feed(self, MediaFailed())

    def onDtmfDigit(self, prm: Any) -> None:  # noqa: N802
        method = _DTMF_METHODS.get(prm.method, "unknown")
        duration = None if prm.duration == _UNKNOWN_DTMF_DURATION else int(prm.duration)
        if self.session is not None:
            self.session.on_dtmf(prm.digit)
        self.engine.emit(
            DtmfReceived(
                call_id=self.record.id, digit=prm.digit, method=method, duration_ms=duration
            )
        )

    def onCallTransferStatus(self, prm: Any) -> None:  # noqa: N802
        final, code = bool(prm.finalNotify), int(prm.statusCode)
        status = "accepted" if not final else "completed" if 200 <= code < 300 else "failed"
        self.engine.emit(
            TransferProgress(
                call_id=self.record.id,
                target=self.transfer_target or "",
                status=status,
                sip_code=code,
            )
        )
        prm.cont = not final
        if status == "completed":
            self.engine.feed(self, TransferCompleted())

    # -- media --------------------------------------------------------------------------------

    def _bridge(self, index: int) -> None:
        if self.engine.rtp_sockets is not None:
            self._attach_plane(index)
            return
        audio = self.getAudioMedia(index)
        slot = audio.getPortId()
        if slot == self.bridged_slot:
            return
        if self.port is None:
            # an inbound call may have connected its agent ringing
            session = self.session or self._make_session()
            fmt = pj.MediaFormatAudio()
            fmt.init(pj.PJMEDIA_FORMAT_PCM, session.rate, 1, 20000, 16)
            self.port = AudioPort(session)
            self.port.createPort(f"call-{self.record.id}", fmt)
        audio.startTransmit(self.port)
        self.port.startTransmit(audio)
        self.bridged_slot = slot

    def _make_session(self) -> MediaSession:
        session = self.engine.make_session(self.record, self.engine.controls(self.record))
        self.session = session
        if self.record.state is CallState.ANSWERED and isinstance(session, AnswerAware):
            session.answered()  # media came up after the answer
        return session

    def _attach_plane(self, index: int) -> None:
        """The media plane gets the call's sockets and where RTP goes (again after a
        re-INVITE: the far end may have moved, or put us on hold)."""
        if self.rtp is None or self.rtcp is None:
            raise NoRtpPort(f"call {self.record.id} has no RTP socket of its own")
        if self.session is None:  # an inbound call may have connected its agent ringing
            self._make_session()
        if not isinstance(self.session, PlaneMedia):
            raise TypeError(f"session {type(self.session).__name__} cannot take plane media")
        if self.local_crypto and self.remote_crypto is None:
            self._attach_waiting = index  # no plain RTP on what may be an SRTP call
            return
        stream = self.getStreamInfo(index)
        media = Negotiated(
            remote=_address(stream.remoteRtpAddress),
            codec=str(stream.codecName),
            tx_pt=int(stream.txPt),
            rx_pt=int(stream.rxPt),
            tx_event_pt=_event_pt(stream.audTxEventPt),
            rx_event_pt=_event_pt(stream.audRxEventPt),
            srtp=srtp_keys(self.local_crypto, self.remote_crypto or []),
        )
        self.session.attach(self.rtp, self.rtcp, media)
        self.bridged_slot = index

    def release_media(self) -> None:
        """The port leaves the bridge before the session closes: no clock-thread callback can
        reach a closed session, and the port is gone before this Python object can be freed
        (whenever the engine drops it)."""
        if self.port is not None:
            self.port.close()
            if self.port.frames_cut:
                log.warning(
                    "event=frames_cut call_id=%s frames=%d reason=longer_than_bridge_frame",
                    self.record.id,
                    self.port.frames_cut,
                )
            self.port = None
        if self.session is not None:
            self.session.close()
        for sock in (self.rtp, self.rtcp):
            if sock is not None:
                sock.close()  # the plane holds its own copies until its session closes
        self.rtp = self.rtcp = None

    def _release_pjsua(self) -> None:
        """DISCONNECTED, inside pjsua's callback: destroy the C++ Call now, while the pjsua
        call slot is still this call's. pjsua frees the slot when the callback returns and a
        new call may take it in the same poll; pjsua2's ~Call, run any later (the engine
        dropping this object), clears the user data of, and hangs up, whatever call then
        holds the slot. pjsua2 allows deleting a Call from its DISCONNECTED callback: it has
        already cleared the slot's user data and touches the object no more."""
        if "this" in self.__dict__:
            pj.Call.__swig_destroy__(self)  # disowns: deallocation will not destroy again
            del self.this  # a pjsua2 call on the ended call raises TypeError


def srtp_keys(local: list[Crypto], remote: list[Crypto]) -> SrtpKeys | None:
    """The keys of the suite both SDPs settled on: the answer's one a=crypto line names the
    offer's by its tag (RFC 4568 6.1). None: plain RTP (no crypto in the answer)."""
    for theirs in remote:
        for ours in local:
            if ours.tag == theirs.tag and ours.suite == theirs.suite:
                return SrtpKeys(ours.suite, tx_key=ours.key, rx_key=theirs.key)
    return None


def _address(text: str) -> tuple[str, int]:
    """pjsua's "host:port" or "[v6]:port"."""
    host, _, port = str(text).rpartition(":")
    return host.strip("[]"), int(port)


def _event_pt(value: Any) -> int | None:
    """pjsua says -1 (or 0) for telephone-event not negotiated."""
    pt = int(value)
    return pt if pt > 0 else None
