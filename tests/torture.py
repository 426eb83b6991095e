"""Where the RFC 4475 torture messages are: SIPEDGE_RFC4475_DIR, else shared/ beside the
repository (as in CI), else the workplace's /work/shared."""

from __future__ import annotations

import os
from pathlib import Path

_CANDIDATES = [
    Path(__file__).resolve().parents[2] / "shared" / "testdata" / "rfc4475",
    Path("/work/shared/testdata/rfc4475"),
]
RFC4475_DIR = Path(
    os.environ.get("SIPEDGE_RFC4475_DIR")
    or next((str(p) for p in _CANDIDATES if p.is_dir()), str(_CANDIDATES[0]))
)
