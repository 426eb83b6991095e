"""The SIP worker <-> media plane boundary, and the worker's end of it.

With `node.media: plane` a worker does SIP only: each call's RTP socket (bound by the worker,
named in its SDP) goes to the node's media plane process with the call, and the plane runs the
call's RTP, codec, VAD, recording and agent. The worker's side of a call is a PlaneSession, a
MediaSession whose frames never pass through this process.

One SOCK_SEQPACKET connection per worker: every datagram is one UTF-8 JSON object, and may
carry file descriptors (SCM_RIGHTS). Per call, worker -> plane:
  {"op": "open", "call", "record"}   the call's agent session starts (it may connect ringing)
  {"op": "media", "call", "remote", "codec", "tx_pt", "rx_pt", "tx_event_pt", "rx_event_pt"}
                                      + [rtp, rtcp] fds the first time (contract.Negotiated)
  {"op": "dtmf", "call", "digit"}     a digit pjsua heard (SIP INFO), for the agent
  {"op": "answered", "call"}          the call is answered (AMD starts listening)
  {"op": "send_dtmf", "call", "digits"}  RFC 4733 to the far end
  {"op": "close", "call"}
plane -> worker:
  {"op": "event", "call", "event"}   a CallEvent of the session (worker/ipc.py's event_message)
  {"op": "hangup", "call", "by", "reason"}
  {"op": "closed", "call"}            the session's last event is out
  {"op": "rx", "counts": {call: packets}}  RTP received, for the media timeout (every second)
Lifecycle messages only: no frame crosses this socket.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

from gateway.calls.events import CallEvent
from gateway.calls.model import CallRecord
from gateway.errors import SipedgeError
from gateway.session.contract import CallControls, Negotiated
from gateway.worker.ipc import IpcError, event_from

log = logging.getLogger("sipedge.worker")

MAX_DATAGRAM = 256 * 1024
MAX_FDS = 4
SEND_TIMEOUT_S = 2.0
RECORD_FIELDS = ("id", "direction", "trunk", "from_number", "to_number", "agent", "variables",
                 "record", "sip_call_id", "amd")  # fmt: skip


class PlaneError(SipedgeError):
    """The media plane's socket is gone or a message broke the contract."""


def pack(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":"), default=str).encode()
    if len(data) > MAX_DATAGRAM:
        raise PlaneError(f"plane message of {len(data)} bytes exceeds {MAX_DATAGRAM} bytes")
    return data


def unpack(data: bytes) -> dict[str, Any]:
    try:
        message = json.loads(data)
    except ValueError as exc:
        raise PlaneError(f"plane message is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise PlaneError("plane message is not a JSON object")
    return message


def send(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    data = pack(message)
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def receive(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and the fds it carried; (None, []) when the other end closed. A bad
    message raises PlaneError after closing any fds it carried."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_DATAGRAM, MAX_FDS)
    if not data and not fds:
        return None, []
    try:
        return unpack(data), fds
    except PlaneError:
        for fd in fds:
            socket.close(fd)
        raise


def record_message(record: CallRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in RECORD_FIELDS}


def record_from(data: dict[str, Any]) -> CallRecord:
    try:
        return CallRecord(**{name: data[name] for name in RECORD_FIELDS})
    except (KeyError, TypeError) as exc:
        raise PlaneError(f"plane call record does not fit: {exc}") from None


class PlaneSession:
    """A call's media session as the worker sees it: lifecycle messages to the plane, the
    plane's events and requests back to the call (CallControls)."""

    rate = 8000  # unused: no frame of this call passes through the worker

    def __init__(self, link: PlaneLink, record: CallRecord, controls: CallControls) -> None:
        self.call_id = record.id
        self.controls = controls
        self._link = link
        self._lock = threading.Lock()
        self._closed_callbacks: list[Callable[[], None]] = []
        self._events_done = False
        self._closed = False
        self._attached = False
        self.rx_packets = 0
        link.add(self)
        link.send({"op": "open", "call": self.call_id, "record": record_message(record)})

    # -- the SIP thread -------------------------------------------------------------------------

    def attach(self, rtp: socket.socket, rtcp: socket.socket, media: Negotiated) -> None:
        """The call's media is up (or changed: a re-INVITE, hold): where to send, what codec.
        The sockets go to the plane the first time (it keeps its own copies)."""
        message = {"op": "media", "call": self.call_id, **dataclasses.asdict(media)}
        if self._attached:
            self._link.send(message)
            return
        self._link.send(message, (rtp.fileno(), rtcp.fileno()))
        self._attached = True

    def on_caller_frame(self, pcm: bytes, mulaw: bytes | None = None) -> None:
        # the plane hears the caller, not us
        raise NotImplementedError("a plane session's frames never reach the worker")

    def next_frame(self) -> bytes:
        raise NotImplementedError("a plane session's frames never reach the worker")

    def on_dtmf(self, digit: str) -> None:
        self._link.send({"op": "dtmf", "call": self.call_id, "digit": digit})

    def answered(self) -> None:
        self._link.send({"op": "answered", "call": self.call_id})

    def send_dtmf(self, digits: str) -> None:
        self._link.send({"op": "send_dtmf", "call": self.call_id, "digits": digits})

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._link.send({"op": "close", "call": self.call_id}):
            self.events_finished()  # no plane: nothing more will come

    def when_closed(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._events_done:
                self._closed_callbacks.append(callback)
                return
        callback()

    # -- the worker's loop (the plane's messages) -----------------------------------------------

    def events_finished(self) -> None:
        with self._lock:
            if self._events_done:
                return
            self._events_done = True
            callbacks, self._closed_callbacks = self._closed_callbacks, []
        self._link.remove(self)
        for callback in callbacks:
            callback()

    async def wait_closed(self) -> None:
        """The worker's stop waits for the plane's "closed" (polled: it comes from any
        thread, and a stop is rare)."""
        while not self._events_done:
            await asyncio.sleep(0.02)


class PlaneLink:
    """The worker's connection to the media plane; `send` from any thread, `on_readable` on
    the worker's loop (add_reader)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # "@name": an abstract socket (Linux), as the supervisor names it on the command line
        self.sock.connect("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(SEND_TIMEOUT_S)
        self._send_lock = threading.Lock()
        self._sessions: dict[str, PlaneSession] = {}
        self._sessions_lock = threading.Lock()
        self.lost = False

    def add(self, session: PlaneSession) -> None:
        with self._sessions_lock:
            self._sessions[session.call_id] = session

    def remove(self, session: PlaneSession) -> None:
        with self._sessions_lock:
            if self._sessions.get(session.call_id) is session:
                del self._sessions[session.call_id]

    def sessions(self) -> list[PlaneSession]:
        with self._sessions_lock:
            return list(self._sessions.values())

    def send(self, message: dict[str, Any], fds: Sequence[int] = ()) -> bool:
        """False if the plane is gone (the call then ends: see on_readable)."""
        if self.lost:
            return False
        try:
            with self._send_lock:
                send(self.sock, message, fds)
        except (OSError, PlaneError) as exc:
            log.error("event=plane_send_failed op=%s error=%s", message.get("op"), exc)
            return False
        return True

    def on_readable(self) -> bool:
        """Handle every message waiting; False once the plane has gone."""
        while True:
            try:
                self.sock.setblocking(False)
                try:
                    message, fds = receive(self.sock)
                finally:
                    self.sock.settimeout(SEND_TIMEOUT_S)
            except (BlockingIOError, InterruptedError):
                return True
            except PlaneError as exc:
                log.error("event=plane_message_dropped error=%s", exc)
                continue
            except OSError as exc:
                log.error("event=plane_link_failed error=%s", exc)
                message, fds = None, []
            for fd in fds:  # the plane sends none
                socket.close(fd)
            if message is None:
                self._lost()
                return False
            self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "rx":
            counts = message.get("counts") or {}
            for session in self.sessions():
                count = counts.get(session.call_id)
                if isinstance(count, int):
                    session.rx_packets = count
            return
        with self._sessions_lock:
            found = self._sessions.get(str(message.get("call")))
        if found is None:
            return  # a call that has finished on this side
        session = found
        if op == "event":
            try:
                event, _ts = event_from(message.get("event") or {})
            except IpcError as exc:
                log.error("event=plane_event_dropped call_id=%s error=%s", session.call_id, exc)
                return
            if isinstance(event, CallEvent):
                session.controls.emit(event)
        elif op == "hangup":
            reason = message.get("reason")
            session.controls.hangup(str(message.get("by") or "gateway"),
                                    str(reason) if reason else None)  # fmt: skip
        elif op == "closed":
            session.events_finished()
        else:
            log.error("event=plane_message_dropped op=%r", op)

    def _lost(self) -> None:
        if self.lost:
            return
        self.lost = True
        sessions = self.sessions()
        log.error("event=plane_lost calls=%d action=hang_up", len(sessions))
        for session in sessions:
            if session.controls.media_failed is not None:
                session.controls.media_failed()
            else:
                session.controls.hangup("gateway")
            session.events_finished()

    def close(self) -> None:
        self.lost = True
        self.sock.close()
