"""pjsua2's shared library, for the few pjsip/pjmedia C functions the SWIG binding does not
expose (the request gate's module, pjlib's log level, pjmedia's endpoint)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pjsua2 as pj


def library() -> ctypes.CDLL:
    """The already loaded _pjsua2 library: the same pjsip/pjmedia globals as the binding's."""
    so = next(Path(pj.__file__).parent.glob("_pjsua2*.so"))
    return ctypes.CDLL(str(so))


def pjmedia_endpoint(lib: ctypes.CDLL) -> int | None:
    """pjsua's pjmedia endpoint (a pjmedia_endpt *), None before libInit or after libDestroy."""
    lib.pjsua_get_pjmedia_endpt.restype = ctypes.c_void_p
    return lib.pjsua_get_pjmedia_endpt() or None
