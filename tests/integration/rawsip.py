"""A SIP user agent made of raw UDP datagrams, for tests that need to misbehave on purpose:
never ACK, send no RTP, flood, or read exactly what the node put in a BYE."""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.sip.message import header

HOST = "127.0.0.1"


@dataclass
class SipMessage:
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\r\n", 1)[0]

    @property
    def is_response(self) -> bool:
        return self.first_line.startswith("SIP/2.0 ")

    @property
    def status(self) -> int:
        return int(self.first_line.split(" ", 2)[1]) if self.is_response else 0

    @property
    def method(self) -> str:
        return "" if self.is_response else self.first_line.split(" ", 1)[0]

    def header(self, name: str) -> str:
        return header(self.text, name)

    def record_route(self) -> list[str]:
        """Every Record-Route entry, top first (a proxy such as the SIP front adds them)."""
        entries: list[str] = []
        for line in self.text.split("\r\n\r\n", 1)[0].split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "record-route":
                entries += [e.strip() for e in re.findall(r"<[^>]*>[^,]*", value)]
        return entries


@dataclass
class Dialog:
    call_id: str
    from_tag: str
    branch: str
    to: str
    ruri: str
    to_header: str = ""  # with the tag, once a final answer came
    route_set: list[str] = field(default_factory=list)  # from the 2xx's Record-Route
    received: list[SipMessage] = field(default_factory=list)


def sdp(rtp_port: int, host: str = HOST) -> str:
    return (
        f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    )


class RawUac:
    def __init__(self, node_port: int, host: str = HOST) -> None:
        self.node = (HOST, node_port)
        self.host = host
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self._pending: list[SipMessage] = []

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawUac:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, text: str) -> None:
        self.sock.sendto(text.encode(), self.node)

    def invite_text(
        self, dialog: Dialog, rtp_port: int = 40000, headers: str = "", body: str | None = None
    ) -> str:
        """The INVITE of `dialog`; `headers`: extra header lines, each ending in CRLF; `body`:
        the SDP offer (default: PCMU on `rtp_port`)."""
        body = sdp(rtp_port, self.host) if body is None else body
        return (
            f"INVITE {dialog.ruri} SIP/2.0\r\n{headers}"
            f"Via: SIP/2.0/UDP {self.host}:{self.port};branch={dialog.branch};rport\r\n"
            f"From: <sip:+15557770000@{self.host}>;tag={dialog.from_tag}\r\n"
            f"To: <sip:{dialog.to}@{self.node[0]}>\r\n"
            f"Call-ID: {dialog.call_id}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:uac@{self.host}:{self.port}>\r\nMax-Forwards: 70\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        )

    def invite(
        self,
        to: str = "+15550100",
        ruri_user: str | None = None,
        headers: str = "",
        body: str | None = None,
    ) -> Dialog:
        dialog = Dialog(
            call_id=uuid.uuid4().hex,
            from_tag=uuid.uuid4().hex[:8],
            branch="z9hG4bK" + uuid.uuid4().hex[:16],
            to=to,
            ruri=f"sip:{ruri_user or to}@{self.node[0]}:{self.node[1]}",
        )
        self.send(self.invite_text(dialog, headers=headers, body=body))
        return dialog

    def recv(self, timeout: float = 5.0) -> SipMessage | None:
        """The next datagram from the socket (messages set aside by the waits are not seen)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65535)
        except TimeoutError:
            return None
        return SipMessage(data.decode("utf-8", "replace"))

    def _next(self, wanted: Callable[[SipMessage], bool], timeout: float) -> SipMessage | None:
        """The first message `wanted` accepts, set-aside ones first; others are set aside."""
        for index, message in enumerate(self._pending):
            if wanted(message):
                return self._pending.pop(index)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.recv(max(0.01, deadline - time.monotonic()))
            if message is None:
                return None
            if wanted(message):
                return message
            self._pending = [*self._pending[-200:], message]
        return None

    def wait_final(self, dialog: Dialog, timeout: float = 10.0) -> SipMessage:
        """The final response to the dialog's INVITE (provisionals are kept in `received`)."""
        deadline = time.monotonic() + timeout
        while True:
            message = self._next(
                lambda m: m.is_response and m.header("call-id") == dialog.call_id,
                max(0.0, deadline - time.monotonic()),
            )
            if message is None:
                raise AssertionError(f"no final answer to INVITE {dialog.call_id}")
            dialog.received.append(message)
            if message.status >= 200:
                dialog.to_header = message.header("to")
                if message.status < 300:
                    dialog.route_set = list(reversed(message.record_route()))
                return message

    def wait_request(self, method: str, dialog: Dialog, timeout: float = 15.0) -> SipMessage:
        message = self._next(
            lambda m: m.method == method and m.header("call-id") == dialog.call_id, timeout
        )
        if message is None:
            raise AssertionError(f"no {method} for {dialog.call_id}")
        return message

    def ack(self, dialog: Dialog, final: SipMessage) -> None:
        branch = (
            dialog.branch if final.status >= 300 else "z9hG4bK" + uuid.uuid4().hex[:16]
        )  # a non-2xx ACK is part of the INVITE transaction; a 2xx ACK is its own
        contact = final.header("contact").strip("<>").split(">", 1)[0] or dialog.ruri
        target = dialog.ruri if final.status >= 300 else contact
        routes = "" if final.status >= 300 else _routes(dialog)
        self.send(
            f"ACK {target} SIP/2.0\r\n{routes}"
            f"Via: SIP/2.0/UDP {self.host}:{self.port};branch={branch};rport\r\n"
            f"From: <sip:+15557770000@{self.host}>;tag={dialog.from_tag}\r\n"
            f"To: {dialog.to_header}\r\nCall-ID: {dialog.call_id}\r\nCSeq: 1 ACK\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )

    def call(
        self, to: str = "+15550100", ruri_user: str | None = None
    ) -> tuple[Dialog, SipMessage]:
        """INVITE, a 200 for it (asserted), and our ACK: an answered call."""
        dialog = self.invite(to=to, ruri_user=ruri_user)
        final = self.wait_final(dialog)
        assert final.status == 200, final.first_line
        self.ack(dialog, final)
        return dialog, final

    def bye(self, dialog: Dialog, final: SipMessage) -> None:
        contact = final.header("contact").strip("<>").split(">", 1)[0]
        self.send(
            f"BYE {contact} SIP/2.0\r\n{_routes(dialog)}"
            f"Via: SIP/2.0/UDP {self.host}:{self.port};"
            f"branch=z9hG4bK{uuid.uuid4().hex[:16]};rport\r\n"
            f"From: <sip:+15557770000@{self.host}>;tag={dialog.from_tag}\r\n"
            f"To: {dialog.to_header}\r\nCall-ID: {dialog.call_id}\r\nCSeq: 2 BYE\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )

    def answer(self, request: SipMessage, code: int = 200, reason: str = "OK") -> None:
        """A response to a request the node sent us (e.g. 200 to its BYE)."""
        lines = [f"SIP/2.0 {code} {reason}"]
        for line in request.text.split("\r\n\r\n", 1)[0].split("\r\n")[1:]:
            if line.split(":", 1)[0].strip().lower() in ("via", "from", "to", "call-id", "cseq"):
                lines.append(line)
        self.send("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n")


def _routes(dialog: Dialog) -> str:
    """The Route header lines of an in-dialog request (none without a Record-Route)."""
    return "".join(f"Route: {entry}\r\n" for entry in dialog.route_set)
