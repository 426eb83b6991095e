"""A pjsip module, registered through ctypes, that looks at every request before pjsip's
transaction layer and answers two kinds itself:

* a request whose CSeq method does not match its method gets 400 (RFC 3261 8.2.2). Why: pjsip
  keys server transactions by branch and CSeq method. An OPTIONS whose CSeq says
INVITE (RFC 4475 mismatch01/02) that reuses the branch of an INVITE transaction in its
Confirmed state (a non-2xx answer was ACKed less than T4 ago) is handed to that transaction,
and the PyPI wheel, built with assertions on, aborts the whole SIP worker. pjsua2 exposes no
hook before the transaction layer, but the wheel exports pjsip's C API, so a tiny module at a
priority just below the transaction layer answers such requests 400 as RFC 3261 wants.
* a new INVITE (no To tag) that the node will not take (admission says why: rate per source,
  draining, at capacity, no media sockets, unrouted number, source not allowed) gets its
  answer here (503 with Retry-After, 403, 404). Why: pjsua creates a call with its RTP/RTCP
  sockets before `onIncomingCall` can refuse it, so a burst of INVITEs it would refuse
  exhausts the wheel's 64-key ioqueue, whose assertion aborts the worker; and at its compiled
  call limit pjsua answers `486 Busy Here` itself, the wrong signal to a carrier.

The module reads the received bytes and the source address at offsets into `pjsip_rx_data`
that it measures once at start with a request it sends to itself; if that calibration fails,
the filter stays off and says so in the log.
"""

from __future__ import annotations

import ctypes
import logging
import re
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from gateway.sip.native import library

log = logging.getLogger("sipedge.sip.sanity")

PRIORITY = 15  # PJSIP_MOD_PRIORITY_TSX_LAYER is 16: we run just before it
SCAN_BYTES = 2048
PKT_SCAN_BYTES = 4000 + 512  # the packet buffer and the pkt_info fields after it
_INFO = re.compile(rb"^Request msg ([A-Za-z!%*_+`'~.-]+)/cseq=(-?\d+) ")
_REQUEST_LINE = re.compile(rb"^([A-Za-z!%*_+`'~.-]+) ")
_CSEQ = re.compile(rb"\r?\n(?:CSeq|cseq|CSEQ)[ \t]*:[ \t]*(-?\d+)[ \t]+([A-Za-z!%*_+`'~.-]+)")

_RxCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
_Fn = ctypes.c_void_p  # callbacks we leave NULL


class _PjStr(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_char_p), ("slen", ctypes.c_ssize_t)]


class _Module(ctypes.Structure):
    """`struct pjsip_module` (pjsip/sip_module.h), stable since pjsip 1.x."""

    _fields_ = [
        ("prev", ctypes.c_void_p),
        ("next", ctypes.c_void_p),
        ("name", _PjStr),
        ("id", ctypes.c_int),
        ("priority", ctypes.c_int),
        ("load", _Fn),
        ("start", _Fn),
        ("stop", _Fn),
        ("unload", _Fn),
        ("on_rx_request", _RxCallback),
        ("on_rx_response", _Fn),
        ("on_tx_request", _Fn),
        ("on_tx_response", _Fn),
        ("on_tsx_state", _Fn),
    ]


def mismatched_cseq(message: bytes) -> bool:
    """True for a request whose CSeq method differs from its request-line method."""
    line = _REQUEST_LINE.match(message)
    cseq = _CSEQ.search(message.split(b"\r\n\r\n", 1)[0])
    return bool(line and cseq and line.group(1) != cseq.group(2))


_TO_TAG = re.compile(rb"\r?\n(?:To|t|TO|to)[ \t]*:[^\r\n]*;[ \t]*tag[ \t]*=", re.IGNORECASE)


def is_new_invite(message: bytes) -> bool:
    """An INVITE outside any dialog: its To header carries no tag."""
    head = message.split(b"\r\n\r\n", 1)[0]
    return head.startswith(b"INVITE ") and _TO_TAG.search(head) is None


@dataclass(frozen=True)
class GateAnswer:
    """A stateless final answer the gate sends instead of letting pjsua see a new INVITE."""

    code: int
    retry_after: int | None = None

    @property
    def header(self) -> tuple[bytes, bytes] | None:
        """The one header this answer carries, if any."""
        if self.code == 415:
            return b"Accept", b"application/sdp"
        if self.retry_after is not None:
            return b"Retry-After", str(self.retry_after).encode()
        return None


_CONTENT_TYPE = re.compile(rb"\r?\n(?:Content-Type|c)[ \t]*:[ \t]*([^;\r\n]*)", re.IGNORECASE)


def unsupported_body(message: bytes) -> bool:
    """A body that is not SDP: the INVITE gets 415 (RFC 3261 21.4.13), whatever its routing."""
    head, _, body = message.partition(b"\r\n\r\n")
    kind = _CONTENT_TYPE.search(b"\r\n" + head.split(b"\r\n", 1)[-1])
    if kind is None or not body.strip(b"\0\r\n "):
        return False
    return kind.group(1).strip().lower() not in (b"application/sdp", b"multipart/mixed")


# (message bytes up to the NUL, source IP and port) -> None to let the INVITE through
Admit = Callable[[bytes, tuple[str, int]], GateAnswer | None]

SOCKADDR_BYTES = 28  # pj_sockaddr: a union up to sockaddr_in6
_AF_INET, _AF_INET6 = 2, 10  # Linux values, as pj_sockaddr stores them


def sockaddr_address(raw: bytes) -> tuple[str, int]:
    """The address and port in a Linux pj_sockaddr's bytes (('', 0) if it is neither IPv4
    nor IPv6)."""
    family = int.from_bytes(raw[0:2], "little")
    port = int.from_bytes(raw[2:4], "big")
    if family == _AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == _AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    return "", 0


def _sockaddr_pattern(host: str, port: int) -> bytes:
    if ":" in host:
        return (
            _AF_INET6.to_bytes(2, "little")
            + port.to_bytes(2, "big")
            + b"\0\0\0\0"
            + socket.inet_pton(socket.AF_INET6, host)
        )
    return _AF_INET.to_bytes(2, "little") + port.to_bytes(2, "big") + socket.inet_aton(host)


class RequestGate:
    """Owns the module struct and callback: keep the instance alive as long as the endpoint.

    `admit(message, (source_ip, source_port))` runs on the SIP thread for each new INVITE;
    it returns the answer to refuse the call with, or None to let it through to pjsua."""

    def __init__(self, admit: Admit = lambda message, source: None) -> None:
        self.admit = admit
        lib = library()
        self.lib = lib
        self._header = lib.pjsip_generic_string_hdr_create
        self._header.restype = ctypes.c_void_p
        self._header.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.pjsua_get_pjsip_endpt.restype = ctypes.c_void_p
        self._endpt = ctypes.c_void_p(lib.pjsua_get_pjsip_endpt())
        self._info = lib.pjsip_rx_data_get_info
        self._info.restype = ctypes.c_char_p
        self._info.argtypes = [ctypes.c_void_p]
        self._respond = lib.pjsip_endpt_respond_stateless
        self._respond.restype = ctypes.c_int
        self._respond.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self._register = lib.pjsip_endpt_register_module
        self._register.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self._register.restype = ctypes.c_int
        self._token = f"sipedge-calibrate-{uuid.uuid4().hex}".encode()
        self.packet_offset: int | None = None
        self.source_offset: int | None = None
        self._expect_source = b""
        self.rejected = 0
        self.refused_calls = 0
        self._callback = _RxCallback(self._on_rx_request)
        self._name = b"mod-sipedge-request-gate"
        self._module = _Module(
            name=_PjStr(self._name, len(self._name)),
            id=-1,
            priority=PRIORITY,
            on_rx_request=self._callback,
        )

    def install(self, host: str, port: int, poll: Callable[[int], None]) -> bool:
        """Register the module and calibrate it with one OPTIONS to ourselves over UDP."""
        status = self._register(self._endpt, ctypes.addressof(self._module))
        if status != 0:
            log.warning("event=sip_sanity_filter_disabled reason=register_failed status=%d", status)
            return False
        target = "127.0.0.1" if host in ("0.0.0.0", "") else host
        with socket.socket(
            socket.AF_INET6 if ":" in target else socket.AF_INET, socket.SOCK_DGRAM
        ) as sock:
            sock.bind((target, 0))
            local = sock.getsockname()[1]
            self._expect_source = _sockaddr_pattern(target, local)
            sock.sendto(self._calibration(target, port, local), (target, port))
            for _ in range(100):
                poll(10)
                if self.packet_offset is not None:
                    break
        if self.packet_offset is None:
            log.warning("event=sip_sanity_filter_disabled reason=calibration_failed")
            return False
        if self.source_offset is None:
            log.warning("event=sip_sanity_filter_disabled reason=source_address_not_found")
            self.packet_offset = None
            return False
        log.info(
            "event=sip_sanity_filter_installed packet_offset=%d source_offset=%d",
            self.packet_offset,
            self.source_offset,
        )
        return True

    def _calibration(self, host: str, port: int, local: int) -> bytes:
        return (
            f"OPTIONS sip:calibrate@{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{local};branch=z9hG4bK{uuid.uuid4().hex[:16]}\r\n"
            f"From: <sip:calibrate@{host}>;tag={uuid.uuid4().hex[:8]}\r\n"
            f"To: <sip:calibrate@{host}>\r\n"
            f"Call-ID: {self._token.decode()}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()

    def _on_rx_request(self, rdata: int | None) -> int:
        if not rdata:
            return 0
        if self.packet_offset is None:
            self._calibrate(rdata)
            return 0
        message = ctypes.string_at(rdata + self.packet_offset, SCAN_BYTES)
        info = _INFO.match(self._info(rdata) or b"")
        line = _REQUEST_LINE.match(message)
        if info is None or line is None or line.group(1) != info.group(1):
            return 0  # not the message pjsip is dispatching (e.g. a second one on TCP)
        message = message.split(b"\0", 1)[0]
        if mismatched_cseq(message):
            self.rejected += 1
            log.info(
                "event=sip_request_rejected reason=cseq_method_mismatch method=%s",
                info.group(1).decode(errors="replace"),
            )
            self._respond(self._endpt, rdata, 400, None, None, None)
            return 1  # handled: the transaction layer never sees it
        if is_new_invite(message) and self.source_offset is not None:
            raw = ctypes.string_at(rdata + self.source_offset, SOCKADDR_BYTES)
            source = sockaddr_address(raw)
            answer = GateAnswer(415) if unsupported_body(message) else self.admit(message, source)
            if answer is not None:
                self.refused_calls += 1
                extra = answer.header
                if extra is not None:
                    self._refuse(rdata, answer.code, *extra)
                else:
                    self._respond(self._endpt, rdata, answer.code, None, None, None)
                return 1
        return 0

    def _refuse(self, rdata: int, code: int, name: bytes, value: bytes) -> None:
        """`code` with one header (Retry-After, Accept), built in the request's own pool."""
        pool = ctypes.c_void_p.from_address(rdata).value  # rdata->tp_info.pool, first field
        hname, hvalue = _PjStr(name, len(name)), _PjStr(value, len(value))
        header = self._header(pool, ctypes.byref(hname), ctypes.byref(hvalue))
        if not header:
            self._respond(self._endpt, rdata, code, None, None, None)
            return
        # A one-element pjsip_hdr list: the sentinel's and the header's prev/next links.
        sentinel = (ctypes.c_void_p * 8)()
        sentinel[0] = sentinel[1] = header
        links = (ctypes.c_void_p * 2).from_address(header)
        links[0] = links[1] = ctypes.addressof(sentinel)
        self._respond(self._endpt, rdata, code, None, ctypes.addressof(sentinel), None)

    def _calibrate(self, rdata: int) -> None:
        memory = ctypes.string_at(rdata, SCAN_BYTES)
        start = memory.find(b"OPTIONS sip:calibrate@")
        if start < 0 or self._token not in memory[start:]:
            return
        self.packet_offset = start
        # The source address follows the packet buffer (PJSIP_MAX_PKT_LEN, 4000 in the wheel)
        # in pkt_info; look for our own socket's address just past it.
        window = ctypes.string_at(rdata + start, PKT_SCAN_BYTES)
        found = window.find(self._expect_source, 1024)
        if found >= 0 and self._expect_source:
            self.source_offset = start + found
