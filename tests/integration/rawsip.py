"""A SIP user agent made of raw UDP datagrams, for tests that need to misbehave on purpose:
never ACK, send no RTP, flood, or read exactly what the node put in a BYE. The same agent
over TLS (`TlsUac`: it connects; `TlsServer`: a carrier the front connects to), with
Python's ssl module, since Debian's SIPp has no TLS."""

from __future__ import annotations

import hashlib
import queue
import re
import socket
import ssl
import threading
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
        self.transport = "UDP"  # in Via
        self.contact_params = ""  # after our Contact URI's host:port

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
        via = f"SIP/2.0/{self.transport} {self.host}:{self.port}"
        return (
            f"INVITE {dialog.ruri} SIP/2.0\r\n{headers}"
            f"Via: {via};branch={dialog.branch};rport\r\n"
            f"From: <sip:+15557770000@{self.host}>;tag={dialog.from_tag}\r\n"
            f"To: <sip:{dialog.to}@{self.node[0]}>\r\n"
            f"Call-ID: {dialog.call_id}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:uac@{self.host}:{self.port}{self.contact_params}>\r\n"
            "Max-Forwards: 70\r\n"
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
            f"Via: SIP/2.0/{self.transport} {self.host}:{self.port};branch={branch};rport\r\n"
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

    def short_call(self, wait_bye: bool = False) -> int:
        """One call of no length: the INVITE's final answer ACKed and, if 200, a BYE at once
        (its answer awaited with `wait_bye`). The INVITE's status."""
        dialog = self.invite()
        final = self.wait_final(dialog)
        self.ack(dialog, final)
        if final.status == 200:
            self.bye(dialog, final)
            if wait_bye:
                self.wait_final(dialog)
        return final.status

    def bye(self, dialog: Dialog, final: SipMessage) -> None:
        contact = final.header("contact").strip("<>").split(">", 1)[0]
        self.send(
            f"BYE {contact} SIP/2.0\r\n{_routes(dialog)}"
            f"Via: SIP/2.0/{self.transport} {self.host}:{self.port};"
            f"branch=z9hG4bK{uuid.uuid4().hex[:16]};rport\r\n"
            f"From: <sip:+15557770000@{self.host}>;tag={dialog.from_tag}\r\n"
            f"To: {dialog.to_header}\r\nCall-ID: {dialog.call_id}\r\nCSeq: 2 BYE\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )

    def answer(
        self,
        request: SipMessage,
        code: int = 200,
        reason: str = "OK",
        headers: str = "",
        body: str = "",
        to_tag: str | None = None,
    ) -> None:
        """A response to a request the node sent us (e.g. 200 to its BYE); `headers`: extra
        lines, each ending in CRLF; `to_tag` is added to a To without one."""
        lines = [f"SIP/2.0 {code} {reason}"]
        for line in request.text.split("\r\n\r\n", 1)[0].split("\r\n")[1:]:
            name = line.split(":", 1)[0].strip().lower()
            if name in ("via", "v", "from", "f", "to", "t", "call-id", "i", "cseq"):
                if name in ("to", "t") and to_tag and ";tag=" not in line:
                    line += f";tag={to_tag}"
                lines.append(line)
            elif name == "record-route" and code < 300:
                lines.append(line)
        content = "Content-Type: application/sdp\r\n" if body else ""
        self.send(
            "\r\n".join(lines) + f"\r\n{headers}{content}Content-Length: {len(body)}\r\n\r\n{body}"
        )


def response_to(request: SipMessage, status: str = "486 Busy Here") -> bytes:
    """A final response without a body to `request` (a carrier refusing our INVITE)."""
    lines = [f"SIP/2.0 {status}"] + [
        line
        for line in request.text.split("\r\n\r\n")[0].split("\r\n")[1:]
        if line.split(":", 1)[0].lower() in ("via", "from", "to", "call-id", "cseq")
    ]
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def _routes(dialog: Dialog) -> str:
    """The Route header lines of an in-dialog request (none without a Record-Route)."""
    return "".join(f"Route: {entry}\r\n" for entry in dialog.route_set)


def split_stream(buffer: bytes) -> tuple[list[SipMessage], bytes]:
    """The complete SIP messages at the start of a stream (RFC 3261 18.3: framed by
    Content-Length), and what is left over. Keep-alive CRLFs between messages are skipped."""
    messages = []
    while True:
        buffer = buffer.lstrip(b"\r\n")
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return messages, buffer
        head = buffer[:head_end].decode("utf-8", "replace")
        length = re.search(r"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)", head)
        end = head_end + 4 + (int(length.group(1)) if length else 0)
        if len(buffer) < end:
            return messages, buffer
        messages.append(SipMessage(buffer[:end].decode("utf-8", "replace")))
        buffer = buffer[end:]


class TlsUac(RawUac):
    """RawUac over one TLS connection to the front's TLS port (`context`: ours, with the CA
    to check the front by and, for a client certificate, our own chain)."""

    def __init__(self, node_port: int, context: ssl.SSLContext, host: str = HOST) -> None:
        super().__init__(node_port, host)
        self.sock.close()
        raw = socket.create_connection((HOST, node_port), timeout=5, source_address=(host, 0))
        self.sock = context.wrap_socket(raw, server_hostname=HOST)  # handshake: raises
        self.port = self.sock.getsockname()[1]
        self.transport = "TLS"
        self.contact_params = ";transport=tls"
        self._buffer = b""
        self._inbox: list[SipMessage] = []

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def recv(self, timeout: float = 5.0) -> SipMessage | None:
        deadline = time.monotonic() + timeout
        while not self._inbox:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65535)
            except (TimeoutError, ssl.SSLWantReadError):
                return None
            if not data:
                raise ConnectionError("the front closed the TLS connection")
            messages, self._buffer = split_stream(self._buffer + data)
            self._inbox += messages
        return self._inbox.pop(0)


class TlsServer(RawUac):
    """A carrier listening for SIP over TLS on `host`:`port` (0: any free port); the front
    connects to it. `context` is a server context (our certificate; with verify_mode set,
    the client certificate it asks for). Messages from every accepted connection land in
    one inbox, in order; we send on the connection the last one came from. A connection
    whose handshake fails is recorded in `handshake_errors`."""

    def __init__(self, context: ssl.SSLContext, host: str = HOST, port: int = 0) -> None:
        super().__init__(0, host)
        self.sock.close()
        self.listener = socket.create_server((host, port))
        self.port = self.listener.getsockname()[1]
        self.context = context
        self.transport = "TLS"
        self.contact_params = ";transport=tls"
        self.inbox: queue.Queue[SipMessage] = queue.Queue()
        self.handshake_errors: queue.Queue[str] = queue.Queue()
        self.peer_certificates: list[dict[str, object]] = []
        self._conn: ssl.SSLSocket | None = None
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            try:
                conn = self.context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                self.handshake_errors.put(str(exc))
                raw.close()
                continue
            self.peer_certificates.append(conn.getpeercert() or {})
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: ssl.SSLSocket) -> None:
        buffer = b""
        while True:
            try:
                data = conn.recv(65535)
            except OSError:
                return
            if not data:
                return
            messages, buffer = split_stream(buffer + data)
            for message in messages:
                self._conn = conn
                self.inbox.put(message)

    def send(self, text: str) -> None:
        assert self._conn is not None, "no connection from the front yet"
        self._conn.sendall(text.encode())

    def recv(self, timeout: float = 5.0) -> SipMessage | None:
        try:
            return self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def wait_method(self, method: str, timeout: float = 10.0) -> SipMessage:
        """The next request of `method`, whatever its dialog."""
        message = self._next(lambda m: m.method == method, timeout)
        if message is None:
            raise AssertionError(f"no {method} reached the TLS server")
        return message

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        if self._conn is not None:
            self._conn.close()


def digest_authorization(
    challenge: str, method: str, uri: str, username: str, password: str
) -> str:
    """The Authorization (or Proxy-Authorization) value answering a Digest `challenge`
    (RFC 2617: MD5, qop=auth when offered)."""
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge.split(" ", 1)[1]))
    realm, nonce = params["realm"], params["nonce"]

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1, ha2 = md5(f"{username}:{realm}:{password}"), md5(f"{method}:{uri}")
    value = f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}"'
    if "auth" in params.get("qop", "").split(","):
        cnonce, nc = uuid.uuid4().hex[:8], "00000001"
        response = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        value += f', qop=auth, nc={nc}, cnonce="{cnonce}"'
    else:
        response = md5(f"{ha1}:{nonce}:{ha2}")
    if "opaque" in params:
        value += f', opaque="{params["opaque"]}"'
    return value + f', response="{response}", algorithm=MD5'
