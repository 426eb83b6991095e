"""Creating the process's one pjsua2 endpoint from the `sip` settings: transports, media
clock, codec order. Runs on the SIP thread."""

from __future__ import annotations

import ctypes
import json
import logging
from collections.abc import Sequence
from typing import Any

import pjsua2 as pj

from gateway.config import SipSettings, sip_advertised_host
from gateway.errors import SipEngineError
from gateway.sip.native import library, pjmedia_endpoint

log = logging.getLogger("sipedge.sip")

CODEC_IDS = {"PCMU": "PCMU/8000/1", "PCMA": "PCMA/8000/1", "G722": "G722/16000/1"}


class _LogWriter(pj.LogWriter):  # type: ignore[misc]
    """pjsip's log lines, as key=value lines of the `pjsip` logger (at DEBUG)."""

    def write(self, entry: Any) -> None:
        message = json.dumps(str(entry.msg).rstrip())  # one line: SIP dumps span several
        logging.getLogger("pjsip").debug("event=pjsip level=%d msg=%s", entry.level, message)


def _silence_pjlib_until_configured() -> None:
    """pjlib logs to stdout from libCreate(), before libInit() installs our writer and levels:
    start it silent (libInit then sets the configured levels)."""
    library().pj_log_set_level(0)


def create_endpoint(
    sip: SipSettings, clock_rate: int, media_clock: bool = True
) -> tuple[pj.Endpoint, pj.LogWriter]:
    """A started endpoint whose conference bridge runs at `clock_rate` (see
    gateway.session.contract.bridge_rate); keep the returned log writer alive as long as the
    endpoint. Without `media_clock` (node.media: plane) pjmedia carries no audio at all: no
    sound device clocks the bridge and no thread polls its sockets, which the SDP never
    names (the media plane serves the call's RTP), so an idle worker only waits for SIP."""
    _silence_pjlib_until_configured()
    ep = pj.Endpoint()
    ep.libCreate()
    try:
        writer = _configure(ep, sip, clock_rate, media_clock)
    except BaseException:
        # Undone here, on the thread pjlib knows: left to a traceback, the endpoint would
        # be destroyed by whichever thread collects it, and pjlib aborts on a foreign one.
        ep.libDestroy()
        del ep
        raise
    return ep, writer


def _configure(ep: pj.Endpoint, sip: SipSettings, clock_rate: int, media_clock: bool) -> Any:
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0  # the SIP thread polls
    cfg.uaConfig.mainThreadOnly = False
    cfg.uaConfig.maxCalls = 32  # the build clamps this to its compiled limit
    cfg.uaConfig.userAgent = sip.user_agent
    writer = _LogWriter()
    cfg.logConfig.level = sip.log_level
    cfg.logConfig.consoleLevel = sip.log_level  # our writer gets what the console would
    cfg.logConfig.writer = writer
    cfg.logConfig.decor = 0
    cfg.medConfig.clockRate = clock_rate  # ports at another rate are resampled by pjmedia
    cfg.medConfig.sndClockRate = clock_rate  # the null device that clocks the bridge
    cfg.medConfig.ecTailLen = 0  # no echo canceller: there is no loudspeaker here
    cfg.medConfig.noVad = True  # agents get every frame; our VAD runs on them
    cfg.medConfig.threadCnt = 1 if media_clock else 0
    cfg.medConfig.sndAutoCloseTime = -1  # keep the media clock running while idle
    ep.libInit(cfg)
    for name in sip.transports:
        tc = pj.TransportConfig()
        tc.port = sip.port
        tc.boundAddress = sip.listen
        advertised = sip_advertised_host(sip)
        if advertised:
            tc.publicAddress = advertised
        kind = pj.PJSIP_TRANSPORT_UDP if name == "udp" else pj.PJSIP_TRANSPORT_TCP
        try:
            ep.transportCreate(kind, tc)
        except pj.Error as exc:
            where = f"[{sip.listen}]" if ":" in sip.listen else sip.listen
            raise SipEngineError(f"cannot listen for SIP on {name.upper()} {where}:{sip.port}: "
                                 f"{exc.reason} (pjsua status {exc.status})") from None  # fmt: skip
    ep.libStart()
    if media_clock:
        _start_media_clock(ep)
        log.info("event=media_clock_started clock_rate=%d", clock_rate)
    else:
        _stop_media_threads()  # the engine's UnclockedBridge detaches the sound device
    _set_codecs(ep, sip.codecs)
    return writer


def _stop_media_threads() -> None:
    """pjsua keeps one pjmedia thread however few are configured (0 reads as 1); with no
    socket to poll it sleeps 10 ms at a time, 100 wake-ups a second, most of what an idle
    worker costs (bench/worker_idle.py). In plane mode no pjmedia socket carries anything,
    so the thread is stopped (pjmedia_endpt_stop_threads, which libDestroy calls again
    harmlessly)."""
    lib = library()
    lib.pjmedia_endpt_stop_threads.argtypes = [ctypes.c_void_p]
    endpoint = pjmedia_endpoint(lib)
    if endpoint is not None:
        lib.pjmedia_endpt_stop_threads(endpoint)


def _start_media_clock(ep: pj.Endpoint) -> None:
    """The conference bridge, and with it every call's AudioPort, is clocked by the sound
    device, which pjsua opens only while something is connected to slot 0. A null device
    looped onto itself keeps that clock running for the life of the endpoint."""
    devices = ep.audDevManager()
    devices.setNullDev()
    devices.getCaptureDevMedia().startTransmit(devices.getPlaybackDevMedia())


def _set_codecs(ep: pj.Endpoint, order: Sequence[str]) -> None:
    for info in ep.codecEnum2():
        ep.codecSetPriority(info.codecId, 0)
    for rank, name in enumerate(order):
        ep.codecSetPriority(CODEC_IDS[name], 255 - rank)
