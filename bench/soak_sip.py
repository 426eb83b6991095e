"""Raw SIP over UDP for bench/soak.py: INVITEs that are never ACKed, INVITE floods from a
second loopback address, and the RFC 4475 torture messages. Every call here is bounded in
messages and time; everything goes to 127.0.0.0/8."""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from tests.integration.peers import HOST
from tests.integration.test_rfc4475 import send_udp
from tests.torture import RFC4475_DIR

TORTURE = sorted(RFC4475_DIR.glob("*.dat")) if RFC4475_DIR.is_dir() else []
_STATUS = re.compile(rb"^SIP/2\.0 (\d{3})")


def _header(raw: str, name: str) -> str:
    m = re.search(rf"(?im)^{name}[ \t]*:[ \t]*(.*)$", raw.split("\r\n\r\n")[0])
    return m.group(1).strip() if m else ""


def invite(number: str, node_port: int, src: tuple[str, int], call_id: str) -> bytes:
    """An INVITE with a PCMU offer whose RTP port nothing listens on (the soak never plays)."""
    host, port = src
    sdp = (
        f"v=0\r\no=soak 1 1 IN IP4 {host}\r\ns=soak\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        "m=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )
    return (
        f"INVITE sip:{number}@{HOST}:{node_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:soak@{host}:{port}>;tag={uuid.uuid4().hex[:8]}\r\n"
        f"To: <sip:{number}@{HOST}:{node_port}>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:soak@{host}:{port}>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
    ).encode()


def _in_dialog(method: str, reply: str, node_port: int, src: tuple[str, int], cseq: int) -> bytes:
    """ACK or BYE for the dialog (or failed transaction) a final reply belongs to."""
    via = _header(reply, "Via") if method == "ACK" and not reply.startswith("SIP/2.0 2") else ""
    via = via or f"SIP/2.0/UDP {src[0]}:{src[1]};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport"
    contact = re.search(r"<([^>]+)>", _header(reply, "Contact"))
    target = contact.group(1) if contact else f"sip:{HOST}:{node_port}"
    return (
        f"{method} {target} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n"
        f"From: {_header(reply, 'From')}\r\nTo: {_header(reply, 'To')}\r\n"
        f"Call-ID: {_header(reply, 'Call-ID')}\r\nCSeq: {cseq} {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def never_ack(node_port: int, number: str, wait: float = 3.0) -> int | None:
    """One INVITE, then silence: no ACK for the 200 (or anything else). The final status."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        s.sendto(invite(number, node_port, s.getsockname(), uuid.uuid4().hex), (HOST, node_port))
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                m = _STATUS.match(s.recv(65535))
            except (TimeoutError, ConnectionRefusedError):
                return None
            if m and int(m.group(1)) >= 200:
                return int(m.group(1))
    return None


class Flood:
    """INVITEs from `source` (a second loopback address) at `rate`/s in bursts every 100 ms
    to one number. Replies are counted by number and status; a non-2xx final is ACKed and
    a 200 is ACKed and hung up at once, so the flood itself leaves no call behind."""

    def __init__(self, node_port: int, source: str = "127.0.0.2") -> None:
        self.node_port = node_port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.src = self.sock.getsockname()
        self.codes: Counter[str] = Counter()  # "NUMBER sent", "NUMBER STATUS"
        self._finals: set[str] = set()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def burst(self, rate: int, seconds: float, number: str) -> None:
        per_tick = max(1, rate // 10)
        for _ in range(max(1, round(seconds * 10))):
            start = time.monotonic()
            for _ in range(per_tick):
                call_id = f"flood-{number}-{uuid.uuid4().hex}"
                self.sock.sendto(
                    invite(number, self.node_port, self.src, call_id), (HOST, self.node_port)
                )
                self.codes[f"{number} sent"] += 1
            time.sleep(max(0.0, 0.1 - (time.monotonic() - start)))

    def _read(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except (TimeoutError, ConnectionRefusedError):
                continue
            except OSError:
                return
            m = _STATUS.match(data)
            if not m or int(m.group(1)) < 200:
                continue
            reply, code = data.decode("utf-8", "replace"), int(m.group(1))
            key = _header(reply, "Call-ID")
            if key in self._finals:
                continue  # a retransmission: our ACK crossed it
            self._finals.add(key)
            self.codes[f"{key.split('-')[1]} {code}"] += 1
            dest = (HOST, self.node_port)
            self.sock.sendto(_in_dialog("ACK", reply, self.node_port, self.src, 1), dest)
            if code < 300:
                self.sock.sendto(_in_dialog("BYE", reply, self.node_port, self.src, 2), dest)

    def close(self, linger: float = 2.0) -> None:
        """Keep answering late replies for `linger` seconds, then stop."""
        time.sleep(linger)
        self._stop.set()
        self._reader.join(2)
        self.sock.close()


def torture(node_port: int, files: list[Path], wait: float = 0.5) -> Counter[str]:
    """Send each RFC 4475 message over UDP (tests/integration/test_rfc4475.send_udp rewrites
    the Via and ACKs a failed INVITE); count the outcomes by final status or "silence"."""
    outcomes: Counter[str] = Counter()
    for path in files:
        out = send_udp(node_port, path.read_bytes(), wait)
        finals = out.finals()
        outcomes[str(finals[0].code) if finals else "silence"] += 1
    return outcomes
