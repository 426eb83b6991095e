"""A call's stereo WAV, written on its own thread so no file I/O touches the media paths."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from media.errors import MediaError
from media.recorder import Recording, StereoWavRecorder

log = logging.getLogger("sipedge.recording")

Pair = tuple[bytes | None, bytes | None]  # (caller, agent) frames of one tick


class RecordingWriter:
    """Stereo WAV file I/O on its own thread; `on_ready` gets the result after close(), and
    `finished` completes once it has returned (or the recording failed)."""

    def __init__(self, path: Path, rate: int, on_ready: Callable[[Recording], None]) -> None:
        self.path = path
        self._rate = rate
        self._on_ready = on_ready
        self._queue: queue.SimpleQueue[list[Pair] | None] = queue.SimpleQueue()
        self.finished: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, name=f"rec-{path.stem}", daemon=True)
        self._thread.start()

    def write(self, pairs: list[Pair]) -> None:
        if pairs:
            self._queue.put(pairs)

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        try:
            self._record()
        finally:
            self.finished.set_result(None)

    def _record(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            recorder = StereoWavRecorder(self.path, self._rate)
        except OSError as exc:
            log.error("event=recording_failed path=%s error=%s", self.path, exc)
            return
        try:
            while (pairs := self._queue.get()) is not None:
                for caller, agent in pairs:
                    recorder.write_frame(caller, agent)
        except (OSError, MediaError) as exc:
            log.error("event=recording_failed path=%s error=%s", self.path, exc)
        self._on_ready(recorder.close())
