"""Reading how many sockets pjlib's ioqueue can still take, so the engine refuses a call
(503) before it would exhaust it: the PyPI wheel's select ioqueue has 64 keys and, built with
assertions on, aborts the process when `register_sock` finds its free list empty.

pjlib exposes no getter for that. The select ioqueue keeps every key in one of three lists
(active, closing, free; pjlib/src/pj/ioqueue_select.c), each a `pj_list` sentinel inside the
struct. At start, when no call exists, the free list is the one list in the struct holding
`max - count` keys; we find its sentinel once by walking the candidate lists, then count it.
Keys never move in memory (they are allocated once from the ioqueue's pool), so a walk that
races the media thread can miscount by one, never read freed memory; walks are bounded.
If the layout is not found the gauge is off and the engine relies on its call limit alone.
"""

from __future__ import annotations

import ctypes
import logging

from gateway.sip.native import pjmedia_endpoint

log = logging.getLogger("sipedge.sip.ioqueue")

MAX_HANDLES = 64  # PJ_IOQUEUE_MAX_HANDLES in the PyPI wheel
FD_SETSIZE = 1024
_HEADER_WORDS = 16  # `unsigned max, count; int nfds;` lie within the struct's first 64 bytes
_STRUCT_SCAN = 8192  # bytes of the struct searched for the free list's sentinel
_NEAR = 1 << 24  # keys come from the ioqueue's own pool: within 16 MB of the struct


def media_ioqueue(lib: ctypes.CDLL) -> int | None:
    """The ioqueue of pjsua's media endpoint, where every call's RTP/RTCP sockets go (pjsua
    gives pjmedia its own, apart from the SIP endpoint's)."""
    get = lib.pjmedia_endpt_get_ioqueue
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.c_void_p]
    endpoint = pjmedia_endpoint(lib)
    return get(endpoint) if endpoint is not None else None


def _word(address: int) -> int:
    return int(ctypes.c_void_p.from_address(address).value or 0)


class IoQueueGauge:
    def __init__(self, ioqueue: int | None) -> None:
        self._ioqueue = ioqueue or 0
        self.capacity = MAX_HANDLES
        self._free_list: int | None = None
        registered = self._registered()
        if registered is not None:
            self._free_list = self._find_list(MAX_HANDLES - registered)
        if self._free_list is None:
            log.warning("event=ioqueue_gauge_disabled reason=layout_not_found")
        else:
            log.info(
                "event=ioqueue_gauge capacity=%d registered=%d free=%d",
                self.capacity,
                registered,
                self.free,
            )

    @property
    def available(self) -> bool:
        return self._free_list is not None

    @property
    def free(self) -> int:
        """Keys on the free list now: sockets the ioqueue can take (0 when the gauge is off)."""
        if self._free_list is None:
            return 0
        length = self._length(self._free_list)
        return length if length is not None else 0

    def _registered(self) -> int | None:
        """The `count` of `unsigned max, count; int nfds;`, found by its neighbours' values."""
        if not self._ioqueue:
            return None
        words = (ctypes.c_uint * _HEADER_WORDS).from_address(self._ioqueue)
        for i in range(_HEADER_WORDS - 2):
            if (
                words[i] == MAX_HANDLES
                and words[i + 1] <= MAX_HANDLES
                and words[i + 2] == FD_SETSIZE - 1
            ):
                return int(words[i + 1])
        return None

    def _find_list(self, want: int) -> int | None:
        found = [
            self._ioqueue + offset
            for offset in range(_HEADER_WORDS * 4, _STRUCT_SCAN, ctypes.sizeof(ctypes.c_void_p))
            if self._length(self._ioqueue + offset) == want
        ]
        # The keys are allocated right after the struct, and a walk from any key on the free
        # list counts the same: the struct's own sentinel is the first one in memory.
        return found[0] if found else None

    def _length(self, sentinel: int, limit: int = MAX_HANDLES + 1) -> int | None:
        """Members of the doubly linked list at `sentinel`, or None if it is not one."""
        node, steps = _word(sentinel + ctypes.sizeof(ctypes.c_void_p)), 0  # sentinel->next
        while node != sentinel:
            if not node or abs(node - self._ioqueue) > _NEAR or steps > limit:
                return None
            following = _word(node + ctypes.sizeof(ctypes.c_void_p))
            if not following or (following != sentinel and abs(following - self._ioqueue) > _NEAR):
                return None
            if _word(following) != node:  # following->prev must point back: a real list
                return None
            node, steps = following, steps + 1
        return steps
