"""Finding the installed pjsua2 build's real concurrent call limit at start.

The limit is a compile-time constant (PJSUA_MAX_CALLS) that pjsua2 does not expose; asking for
more in UaConfig.maxCalls is silently clamped. So we place calls to a throwaway UDP responder
on loopback until pjsua refuses with PJ_ETOOMANY; the responder answers each INVITE with 486
so every probe call ends at once and frees its slot.
"""

from __future__ import annotations

import logging
import socket
import threading

import pjsua2 as pj

log = logging.getLogger("sipedge.sip.probe")

PJ_ETOOMANY = 70010
MAX_PROBE = 64


def _respond_busy(sock: socket.socket, stop: threading.Event) -> None:
    sock.settimeout(0.05)
    while not stop.is_set():
        try:
            data, addr = sock.recvfrom(65535)
        except TimeoutError:
            continue
        except OSError:
            return
        text = data.decode("utf-8", "replace")
        if not text.startswith("INVITE "):
            continue  # ACKs for our 486s
        keep = [
            line
            for line in text.split("\r\n\r\n", 1)[0].split("\r\n")[1:]
            if line.split(":", 1)[0].strip().lower() in ("via", "from", "call-id", "cseq", "to")
        ]
        keep = [line + (";tag=probe" if line.lower().startswith("to:") else "") for line in keep]
        reply = "SIP/2.0 486 Busy Here\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n"
        sock.sendto(reply.encode(), addr)


def probe_call_limit(ep: pj.Endpoint, host: str) -> int:
    """Effective max concurrent calls of this pjsua2 build (SIP thread, before any call)."""
    bind = "127.0.0.1" if host in ("0.0.0.0", "") else host
    sock = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((bind, 0))
    port = sock.getsockname()[1]
    stop = threading.Event()
    responder = threading.Thread(target=_respond_busy, args=(sock, stop), daemon=True)
    responder.start()
    account = pj.Account()
    cfg = pj.AccountConfig()
    cfg.idUri = f"sip:probe@{bind}"
    cfg.mediaConfig.transportConfig.boundAddress = bind
    account.create(cfg)
    calls: list[pj.Call] = []
    limit = MAX_PROBE
    host_port = f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"
    try:
        for n in range(MAX_PROBE):
            call = pj.Call(account)
            try:
                call.makeCall(f"sip:probe@{host_port};transport=udp", pj.CallOpParam(True))
            except pj.Error as exc:
                call.__disown__()  # never got a pjsua id: its destructor would assert
                if exc.status != PJ_ETOOMANY:
                    log.warning("event=call_limit_probe_error error=%s", exc.reason)
                limit = n
                break
            calls.append(call)
        for _ in range(200):
            if all(_ended(c) for c in calls):
                break
            ep.libHandleEvents(10)
    finally:
        stop.set()
        responder.join()
        sock.close()
    del calls
    account.shutdown()
    return limit


def _ended(call: pj.Call) -> bool:
    try:
        return bool(call.getInfo().state == pj.PJSIP_INV_STATE_DISCONNECTED)
    except pj.Error:
        return True
