"""Reading how many sockets pjlib's ioqueue holds, so the engine can refuse a call before it
would exhaust the ioqueue (64 keys in the PyPI wheel, which aborts on an empty free list).

pjlib exposes no getter for the key count. The select ioqueue's struct starts with the common
fields and then `unsigned max, count; int nfds;` (pjlib/src/pj/ioqueue_select.c); we find
that triple by its values (max = PJ_IOQUEUE_MAX_HANDLES, nfds = FD_SETSIZE - 1) in the first
bytes of the struct, once, and read `count` from there. If the layout is not found the gauge
is off and the engine falls back to counting its own calls' sockets.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("sipedge.sip.ioqueue")

MAX_HANDLES = 64  # PJ_IOQUEUE_MAX_HANDLES in the PyPI wheel
FD_SETSIZE = 1024
_SCAN_WORDS = 16


class IoQueueGauge:
    def __init__(self, lib: ctypes.CDLL) -> None:
        lib.pjsua_get_pjsip_endpt.restype = ctypes.c_void_p
        get = lib.pjsip_endpt_get_ioqueue
        get.restype = ctypes.c_void_p
        get.argtypes = [ctypes.c_void_p]
        self._ioqueue = get(lib.pjsua_get_pjsip_endpt())
        self._count: ctypes.c_uint | None = None
        self.capacity = MAX_HANDLES
        if self._ioqueue:
            words = (ctypes.c_uint * _SCAN_WORDS).from_address(self._ioqueue)
            for i in range(_SCAN_WORDS - 2):
                if (
                    words[i] == MAX_HANDLES
                    and words[i + 1] <= MAX_HANDLES
                    and words[i + 2] == FD_SETSIZE - 1
                ):
                    self._count = ctypes.c_uint.from_address(self._ioqueue + 4 * (i + 1))
                    break
        if self._count is None:
            log.warning("event=ioqueue_gauge_disabled reason=layout_not_found")
        else:
            log.info("event=ioqueue_gauge capacity=%d registered=%d", self.capacity, self.count)

    @property
    def available(self) -> bool:
        return self._count is not None

    @property
    def count(self) -> int:
        """Sockets registered now (0 when the gauge is off)."""
        return int(self._count.value) if self._count is not None else 0
