"""Answering-machine detection (AMD): who picked up an outbound call, from its first seconds.

`AmdClassifier` is the rule machine of Asterisk's AMD() application, pure: one decision per
frame (voiced or not, mean absolute level) in, an `AmdResult` out when a rule fires.
`BeepDetector` finds a voicemail beep (one steady tone) with a DFT of the beep band per frame;
`BeepWaiter` is the wait_for_beep step after a machine verdict. `AnsweringMachineDetector`
feeds the classifier and the beep detector from PCM16 frames (webrtcvad + level).

The rules, checked per frame in Asterisk's order (apps/app_amd.c, isAnsweringMachine):
  Rule 1: when the audio analysed reaches total_analysis_time -> unknown, "too_long".
  Rule 2: a frame is silent if the VAD calls it unvoiced or its mean |sample| is below
          silence_threshold. between_words_silence of silence ends a word.
          Before the first word, initial_silence of silence -> machine, "initial_silence".
          After it, after_greeting_silence of silence -> human, "human".
  Rule 3: min_word_length of voice (pauses shorter than between_words_silence do not break it)
          is a word; the first word starts the greeting. A word of maximum_word_length
          -> machine, "max_word_length"; more than maximum_number_of_words words -> machine,
          "max_words"; greeting voice (all voiced frames so far) reaching greeting -> machine,
          "long_greeting".
  Rule 4 (ours, `AnsweringMachineDetector` with detect_beep): a beep -> machine, "beep".
One deviation: Asterisk starts "in a word", so speech from the very first frame is counted as
a word only after a silence; here every word counts, wherever the first one starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
import webrtcvad

from media.frames import bytes_per_frame, samples_per_frame

AmdVerdict = Literal["human", "machine", "unknown"]


@dataclass(frozen=True, slots=True)
class BeepSettings:
    """A beep: one tone between min_hz and max_hz, min_ms to max_ms long, dominating its frames.

    purity is the share of a frame's power (DC excluded) within +-2 FFT bins of its peak: a
    Hann-windowed pure tone puts ~99 % there, voiced speech spreads over its harmonics. Tones
    longer than max_ms (a fax's 2100 Hz answer tone lasts 2.6-4 s) are not beeps. min_ms
    counts whole tonal frames, so a 150 ms beep, which covers at least 6 whole 20 ms frames
    wherever it starts, passes min_ms=120.
    """

    min_hz: float = 400.0
    max_hz: float = 2500.0
    min_ms: int = 120
    max_ms: int = 2000
    purity: float = 0.9
    min_level: float = 100.0  # mean |sample| of the frame, PCM16 units (about -50 dBFS)

    def __post_init__(self) -> None:
        if not 0 < self.min_hz < self.max_hz:
            raise ValueError("beep needs 0 < min_hz < max_hz")
        if not 0 < self.min_ms <= self.max_ms:
            raise ValueError("beep needs 0 < min_ms <= max_ms")
        if not 0 < self.purity <= 1:
            raise ValueError("beep purity must be in (0, 1]")


@dataclass(frozen=True, slots=True)
class AmdSettings:
    """Asterisk's AMD parameters, in ms unless named otherwise.

    Defaults are Asterisk's current app_amd.c ones (dfltInitialSilence ... dfltMaximumWordLength,
    as in configs/samples/amd.conf.sample): maximum_number_of_words = 2 with the rule "more
    than 2 words is a machine" (`iWordsCount > maximumNumberOfWords`). Older Asterisk shipped
    3 with `>=`: the same verdict, the third word.
    """

    initial_silence_ms: int = 2500
    greeting_ms: int = 1500
    after_greeting_silence_ms: int = 800
    total_analysis_time_ms: int = 5000
    min_word_length_ms: int = 100
    between_words_silence_ms: int = 50
    maximum_number_of_words: int = 2
    maximum_word_length_ms: int = 5000
    silence_threshold: int = 256  # mean |sample| below this is silence (0..32767)
    # Not Asterisk's: it calls silence at answer a machine; dead air is as often a person
    # waiting for the caller to speak first, so a deployment may prefer "unknown".
    initial_silence_result: Literal["machine", "unknown"] = "machine"
    vad_aggressiveness: int = 3  # webrtcvad 0..3, ANDed with silence_threshold
    detect_beep: bool = True
    beep: BeepSettings = field(default_factory=BeepSettings)

    def __post_init__(self) -> None:
        durations = (
            self.initial_silence_ms,
            self.greeting_ms,
            self.after_greeting_silence_ms,
            self.total_analysis_time_ms,
            self.min_word_length_ms,
            self.between_words_silence_ms,
            self.maximum_word_length_ms,
        )
        if min(durations) <= 0:
            raise ValueError("AMD durations must be > 0 ms")
        if self.maximum_number_of_words < 1:
            raise ValueError("maximum_number_of_words must be >= 1")
        if not 0 <= self.silence_threshold <= 32767:
            raise ValueError("silence_threshold must be 0..32767")
        if self.vad_aggressiveness not in range(4):
            raise ValueError("vad_aggressiveness must be 0..3")


@dataclass(frozen=True, slots=True)
class AmdResult:
    result: AmdVerdict
    reason: str  # initial_silence, human, long_greeting, max_words, max_word_length, beep, ...
    analysis_ms: int  # audio analysed when the verdict was reached, the deciding frame included


class AmdClassifier:
    """Asterisk's AMD rules (module docstring) over per-frame decisions; no audio, no clock."""

    def __init__(self, settings: AmdSettings | None = None, frame_ms: int = 20) -> None:
        if frame_ms <= 0:
            raise ValueError("frame_ms must be > 0")
        self.settings = settings or AmdSettings()
        self.frame_ms = frame_ms
        self.result: AmdResult | None = None
        self.elapsed_ms = 0
        self.words = 0
        self.voice_ms = 0  # every voiced frame so far (Asterisk's voiceDuration)
        self.in_greeting = False
        self._silence_ms = 0  # consecutive silent frames
        self._word_ms = 0  # voice since the last between-words silence
        self._in_word = False

    def update(self, voiced: bool, level: float) -> AmdResult | None:
        """Take one frame's VAD decision and mean |sample|; return the verdict once, when known."""
        if self.result is not None:
            return None
        s = self.settings
        f = self.frame_ms
        self.elapsed_ms += f
        if self.elapsed_ms >= s.total_analysis_time_ms:
            return self._decide("unknown", "too_long")
        if not voiced or level < s.silence_threshold:
            self._silence_ms += f
            if self._silence_ms >= s.between_words_silence_ms:
                self._in_word = False
                self._word_ms = 0
            if not self.in_greeting and self._silence_ms >= s.initial_silence_ms:
                return self._decide(s.initial_silence_result, "initial_silence")
            if self.in_greeting and self._silence_ms >= s.after_greeting_silence_ms:
                return self._decide("human", "human")
            return None
        self._silence_ms = 0
        self._word_ms += f
        self.voice_ms += f
        if self._word_ms >= s.min_word_length_ms and not self._in_word:
            self.words += 1
            self._in_word = True
        if self._word_ms >= s.maximum_word_length_ms:
            return self._decide("machine", "max_word_length")
        if self.words > s.maximum_number_of_words:
            return self._decide("machine", "max_words")
        if self.in_greeting and self.voice_ms >= s.greeting_ms:
            return self._decide("machine", "long_greeting")
        if self._word_ms >= s.min_word_length_ms:
            self.in_greeting = True
        return None

    def decide(self, result: AmdVerdict, reason: str) -> AmdResult | None:
        """Force a verdict (a beep, the call hung up); None if there already is one."""
        return None if self.result is not None else self._decide(result, reason)

    def _decide(self, result: AmdVerdict, reason: str) -> AmdResult:
        self.result = AmdResult(result, reason, self.elapsed_ms)
        return self.result


@dataclass(frozen=True, slots=True)
class Beep:
    start_ms: int  # first tonal frame, ms after the detector's first frame
    end_ms: int  # end of the last tonal frame
    frequency_hz: float


class BeepDetector:
    """Finds beeps in PCM16 frames: runs of tonal frames at one frequency (`BeepSettings`).

    A beep is reported on the first frame after it ends, so whoever waits for it can speak
    into the recording that starts there.
    """

    def __init__(
        self, settings: BeepSettings | None = None, rate: int = 8000, frame_ms: int = 20
    ) -> None:
        self.settings = settings or BeepSettings()
        self.rate = rate
        self.frame_ms = frame_ms
        self.elapsed_ms = 0
        n = samples_per_frame(rate, frame_ms)
        self._n = n
        self._frame_bytes = n * 2
        self._bin_hz = rate / n
        s = self.settings
        # Only the beep band's bins are computed (a DFT as one matrix product: cheaper than an
        # FFT of the whole frame at this size); the frame's total power comes from Parseval.
        lo = max(3, int(np.ceil(s.min_hz / self._bin_hz)))
        hi = min(n // 2 - 3, int(s.max_hz / self._bin_hz))
        self._first_bin = lo - 2
        bins = np.arange(lo - 2, hi + 3)
        phase = 2 * np.pi * np.outer(bins, np.arange(n)) / n
        self._basis = np.concatenate([np.cos(phase), np.sin(phase)]).astype(np.float32)
        self._window = np.hanning(n).astype(np.float32)
        self._windowed = np.empty(n, dtype=np.float32)
        self._projection = np.empty(2 * len(bins), dtype=np.float32)
        self._power = np.empty(len(bins), dtype=np.float32)
        self._scratch = np.empty(len(bins), dtype=np.float32)
        self._samples = np.empty(n, dtype=np.float32)
        self._magnitudes = np.empty(n, dtype=np.float32)
        self._run_start = 0
        self._run_ms = 0
        self._run_bin = 0
        self._run_hz = 0.0

    def feed(self, frame: bytes) -> Beep | None:
        """One frame of PCM16 LE; the beep that just ended, if any."""
        if len(frame) != self._frame_bytes:
            raise ValueError(f"expected {self._frame_bytes} bytes, got {len(frame)}")
        samples = self._samples
        samples[:] = np.frombuffer(frame, dtype="<i2")
        level = float(np.abs(samples, out=self._magnitudes).sum()) / self._n
        return self.feed_samples(samples, level)

    def feed_samples(self, samples: npt.NDArray[np.float32], level: float) -> Beep | None:
        """One frame as float samples with its mean |sample| (shared with the AMD's level)."""
        tone = self.tone(samples, level)
        return self.update(tone)

    def tone(self, samples: npt.NDArray[np.float32], level: float) -> tuple[int, float] | None:
        """(FFT bin, Hz) of the frame's single dominant tone in the beep band, or None."""
        s = self.settings
        if level < s.min_level:
            return None
        w = self._windowed
        np.multiply(samples, self._window, out=w)
        dc = float(w.sum())
        total = (self._n * float(np.dot(w, w)) - dc * dc) / 2  # one-sided power, DC excluded
        np.matmul(self._basis, w, out=self._projection)
        half = len(self._power)
        re, im = self._projection[:half], self._projection[half:]
        power = self._power
        np.multiply(re, re, out=power)
        np.multiply(im, im, out=self._scratch)
        power += self._scratch
        i = int(power[2:-2].argmax()) + 2  # the peak, with 2 bins either side in the band
        if float(power[i - 2 : i + 3].sum()) < s.purity * total:
            return None
        # Parabolic interpolation of the peak: the frequency to within a few Hz, not 50.
        a, b, c = float(power[i - 1]), float(power[i]), float(power[i + 1])
        denom = a - 2 * b + c
        offset = 0.5 * (a - c) / denom if denom else 0.0
        k = self._first_bin + i
        return k, (k + offset) * self._bin_hz

    def update(self, tone: tuple[int, float] | None) -> Beep | None:
        """Advance by one frame with its tone decision (see `tone`); the beep that ended."""
        start = self.elapsed_ms
        self.elapsed_ms += self.frame_ms
        if tone is not None and self._run_ms and abs(tone[0] - self._run_bin) <= 1:
            self._run_ms += self.frame_ms
            return None
        beep = self._end_run()
        if tone is not None:
            self._run_start, self._run_ms = start, self.frame_ms
            self._run_bin, self._run_hz = tone
        return beep

    def flush(self) -> Beep | None:
        """End of audio: a beep still sounding counts if it is long enough."""
        return self._end_run()

    def _end_run(self) -> Beep | None:
        s = self.settings
        run_ms, self._run_ms = self._run_ms, 0
        if s.min_ms <= run_ms <= s.max_ms:
            return Beep(self._run_start, self._run_start + run_ms, round(self._run_hz, 1))
        return None


@dataclass(frozen=True, slots=True)
class BeepWaitResult:
    beep: Beep | None
    beep_ms: int | None  # when the beep ended, ms after the wait began: the moment to speak
    waited_ms: int


class BeepWaiter:
    """wait_for_beep: feed frames until a beep ends or `timeout_ms` of audio has passed.

    Pass the AMD's `beeps` detector to carry on a tone that started before the verdict.
    """

    def __init__(self, timeout_ms: int = 30000, detector: BeepDetector | None = None) -> None:
        if timeout_ms <= 0:
            raise ValueError("timeout_ms must be > 0")
        self.timeout_ms = timeout_ms
        self.detector = detector or BeepDetector()
        self.result: BeepWaitResult | None = None
        self._start_ms = self.detector.elapsed_ms

    def feed(self, frame: bytes) -> BeepWaitResult | None:
        """One PCM16 frame; the outcome once, on the frame that decides it."""
        return self._after(self.detector.feed(frame))

    def update(self, tone: tuple[int, float] | None) -> BeepWaitResult | None:
        """Like `feed`, with the frame's tone decision instead of its audio."""
        return self._after(self.detector.update(tone))

    def _after(self, beep: Beep | None) -> BeepWaitResult | None:
        if self.result is not None:
            return None
        waited = self.detector.elapsed_ms - self._start_ms
        if beep is not None:
            self.result = BeepWaitResult(beep, beep.end_ms - self._start_ms, waited)
        elif waited >= self.timeout_ms:
            self.result = BeepWaitResult(None, None, waited)
        return self.result


class AnsweringMachineDetector:
    """AMD for one call's callee audio: PCM16 LE frames in, one `AmdResult` out."""

    def __init__(
        self, settings: AmdSettings | None = None, rate: int = 8000, frame_ms: int = 20
    ) -> None:
        self.settings = settings or AmdSettings()
        self.rate = rate
        self.frame_ms = frame_ms
        self._frame_bytes = bytes_per_frame(rate, frame_ms)
        self._vad = webrtcvad.Vad(self.settings.vad_aggressiveness)
        self._samples = np.empty(self._frame_bytes // 2, dtype=np.float32)
        self._magnitudes = np.empty(self._frame_bytes // 2, dtype=np.float32)
        self.classifier = AmdClassifier(self.settings, frame_ms)
        self.beeps = BeepDetector(self.settings.beep, rate, frame_ms)
        self.beep: Beep | None = None  # a beep heard during the analysis

    @property
    def result(self) -> AmdResult | None:
        return self.classifier.result

    def feed(self, frame: bytes) -> AmdResult | None:
        """A whole number of frames; the verdict once, on the frame that reaches it."""
        size = self._frame_bytes
        if not frame or len(frame) % size:
            raise ValueError(f"expected a multiple of {size} bytes, got {len(frame)}")
        view = memoryview(frame)
        for k in range(len(frame) // size):
            result = self._feed_one(view[k * size : (k + 1) * size])
            if result is not None:
                return result
        return None

    def finish(self, reason: str = "hangup") -> AmdResult | None:
        """The audio stopped (the callee hung up) before a verdict: unknown, `reason`."""
        return self.classifier.decide("unknown", reason)

    def _feed_one(self, frame: memoryview) -> AmdResult | None:
        if self.classifier.result is not None:
            return None
        samples = self._samples
        samples[:] = np.frombuffer(frame, dtype="<i2")
        level = float(np.abs(samples, out=self._magnitudes).sum()) / len(samples)
        voiced = level >= self.settings.silence_threshold and self._vad.is_speech(frame, self.rate)
        result = self.classifier.update(voiced, level)
        if self.settings.detect_beep:
            beep = self.beeps.feed_samples(samples, level)
            if beep is not None:
                self.beep = beep
                if result is None:
                    result = self.classifier.decide("machine", "beep")
        return result
