"""pjsua's conference bridge when nothing clocks it (node.media: plane).

pjsua puts every call's audio stream on its conference bridge, even where, as in plane mode,
the stream carries nothing (the media plane serves the call's own socket). Since pjproject
2.14 the bridge adds a port at once but removes one only from its clock: a remove is queued
and done by the next `get_frame` of the bridge's master port. With no sound device and no
clock no frame is ever asked for, so each ended call kept its slot (and its stream's memory),
and once the bridge's PJSUA_MAX_CONF_PORTS (254, slot 0 the master) were taken pjsua answered
every call 488 "Unable to create media session".

`UnclockedBridge.settle` asks for one frame whenever the bridge holds more ports than the
calls up can use: the queued removals are done then, on the SIP thread, the only thread that
touches the bridge in this mode. Nothing is connected to anything, so the frame is silence
and costs a few microseconds.
"""

from __future__ import annotations

import ctypes

import pjsua2 as pj

from gateway.sip.native import library


class _Frame(ctypes.Structure):
    """pjmedia_frame (pjmedia/frame.h)."""

    _fields_ = [
        ("type", ctypes.c_int),  # pjmedia_frame_type
        ("buf", ctypes.c_void_p),
        ("size", ctypes.c_size_t),
        ("timestamp", ctypes.c_uint64),  # pj_timestamp
        ("bit_info", ctypes.c_uint32),
    ]


class UnclockedBridge:
    """Created on the SIP thread after libStart, with the bridge's clock rate; it detaches
    the bridge from any sound device (pjsua_set_no_snd_dev), which hands back the master
    port."""

    def __init__(self, clock_rate: int) -> None:
        lib = library()
        lib.pjsua_set_no_snd_dev.restype = ctypes.c_void_p
        lib.pjsua_set_no_snd_dev.argtypes = []
        lib.pjmedia_port_get_frame.restype = ctypes.c_int
        lib.pjmedia_port_get_frame.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Frame)]
        lib.pjsua_conf_get_active_ports.restype = ctypes.c_uint
        lib.pjsua_conf_get_active_ports.argtypes = []
        self._master = lib.pjsua_set_no_snd_dev()
        self._get_frame = lib.pjmedia_port_get_frame
        self._active_ports = lib.pjsua_conf_get_active_ports
        # The bridge asserts (aborting the process: the wheel has assertions on) that a frame
        # asked of it is exactly one of its frames: 16-bit samples of the ptime and channels
        # the endpoint keeps at pjsua's defaults (gateway/sip/endpoint.py sets neither).
        defaults = pj.MediaConfig()
        samples = clock_rate * defaults.channelCount * defaults.audioFramePtime // 1000
        self._bytes = 2 * samples
        self._buf = ctypes.create_string_buffer(self._bytes)
        self._frame = _Frame()
        self.ticks = 0

    @property
    def ports(self) -> int:
        """Ports on the bridge, the master port and any removal still queued included."""
        return int(self._active_ports())

    def settle(self, calls: int) -> None:
        """Done after each poll round: with more ports than the master and one stream for
        each of `calls`, a removal is waiting for a tick."""
        if self._master and self.ports > 1 + calls:
            self.tick()

    def tick(self) -> None:
        frame = self._frame
        frame.type, frame.buf, frame.size = 0, ctypes.addressof(self._buf), self._bytes
        self._get_frame(self._master, ctypes.byref(frame))
        self.ticks += 1
