"""Per-call stereo WAV: caller on the left channel, agent on the right, one write per frame tick.

The call's frame clock drives write_frame(caller, agent) every tick, so the channels stay
aligned by construction: a side with nothing to say that tick (None, or a short frame) is
padded with silence. The file is written incrementally, and its header sizes are patched
every `header_every_s` of audio as well as on close, so a crash leaves a readable WAV.
File writes block: call this from a writer thread or task, not from pjmedia's clock thread.
"""

from __future__ import annotations

import struct
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, NamedTuple, Self

import numpy as np

from media.errors import MediaError
from media.frames import FRAME_MS, SAMPLE_WIDTH, bytes_per_frame

CHANNELS = 2
HEADER_BYTES = 44
MAX_DATA_BYTES = 0xFFFFFFFF - (HEADER_BYTES - 8)


class RecorderError(MediaError):
    """The recording cannot take more audio (closed, or past the 4 GiB WAV limit)."""


class Recording(NamedTuple):
    path: Path
    duration_s: float
    size_bytes: int


def _wav_header(rate: int, data_bytes: int) -> bytes:
    block_align = CHANNELS * SAMPLE_WIDTH
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        HEADER_BYTES - 8 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        CHANNELS,
        rate,
        rate * block_align,
        block_align,
        SAMPLE_WIDTH * 8,
        b"data",
        data_bytes,
    )


class StereoWavRecorder:
    """Incremental 16-bit stereo WAV writer for one call."""

    def __init__(
        self, path: str | Path, rate: int, frame_ms: int = FRAME_MS, header_every_s: float = 1.0
    ) -> None:
        self.path = Path(path)
        self.rate = rate
        self._frame_bytes = bytes_per_frame(rate, frame_ms)
        self._header_every = max(1, int(header_every_s * rate)) * CHANNELS * SAMPLE_WIDTH
        self._data_bytes = 0
        self._since_header = 0
        self._file: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._file.write(_wav_header(rate, 0))

    @property
    def duration_s(self) -> float:
        return self._data_bytes / (CHANNELS * SAMPLE_WIDTH) / self.rate

    def write_frame(self, caller_pcm: bytes | None, agent_pcm: bytes | None) -> None:
        """Record one tick: both sides are padded with silence to the longer side (>= a frame
        when both are None)."""
        if self._file is None:
            raise RecorderError(f"recording {self.path} is closed")
        caller = caller_pcm or b""
        agent = agent_pcm or b""
        if len(caller) % SAMPLE_WIDTH or len(agent) % SAMPLE_WIDTH:
            raise ValueError("PCM16 frames must have an even length")
        size = max(len(caller), len(agent)) or self._frame_bytes
        if self._data_bytes + size * CHANNELS > MAX_DATA_BYTES:
            raise RecorderError(f"recording {self.path} reached the 4 GiB WAV size limit")
        stereo = np.zeros((size // SAMPLE_WIDTH, CHANNELS), dtype="<i2")
        stereo[: len(caller) // SAMPLE_WIDTH, 0] = np.frombuffer(caller, dtype="<i2")
        stereo[: len(agent) // SAMPLE_WIDTH, 1] = np.frombuffer(agent, dtype="<i2")
        self._file.write(stereo.tobytes())
        self._data_bytes += stereo.nbytes
        self._since_header += stereo.nbytes
        if self._since_header >= self._header_every:
            self._patch_header()

    def close(self) -> Recording:
        """Finish the file; closing twice returns the same result."""
        if self._file is not None:
            self._patch_header()
            self._file.close()
            self._file = None
        return Recording(self.path, self.duration_s, HEADER_BYTES + self._data_bytes)

    def _patch_header(self) -> None:
        assert self._file is not None
        self._file.seek(0)
        self._file.write(_wav_header(self.rate, self._data_bytes))
        self._file.seek(0, 2)
        self._file.flush()
        self._since_header = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
