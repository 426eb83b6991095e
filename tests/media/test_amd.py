"""Answering-machine detection: each Asterisk rule with per-frame booleans, then the beep
detector and the whole detector on synthetic audio (tones, harmonic "speech", noise)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from media.amd import (
    AmdClassifier,
    AmdResult,
    AmdSettings,
    AnsweringMachineDetector,
    Beep,
    BeepDetector,
    BeepSettings,
    BeepWaiter,
)
from media.codecs import ulaw_decode, ulaw_encode

LOUD = 2000.0  # a frame level well above the default silence_threshold (256)
RATE = 8000
FRAME = 320  # bytes of one 20 ms frame at 8 kHz


def run(classifier: AmdClassifier, *runs: tuple[str, int]) -> AmdResult | None:
    """Feed ("v" voiced | "s" silent, ms) runs of frames; return the first verdict."""
    for kind, ms in runs:
        for _ in range(ms // classifier.frame_ms):
            result = classifier.update(kind == "v", LOUD if kind == "v" else 10.0)
            if result is not None:
                return result
    return None


# --- the rules, with booleans -------------------------------------------------------------


def test_initial_silence_is_a_machine_exactly_when_it_reaches_initial_silence() -> None:
    assert run(AmdClassifier(), ("s", 2480)) is None
    classifier = AmdClassifier()
    assert run(classifier, ("s", 2500)) == AmdResult("machine", "initial_silence", 2500)


def test_initial_silence_can_be_configured_to_be_unknown() -> None:
    classifier = AmdClassifier(AmdSettings(initial_silence_result="unknown"))
    assert run(classifier, ("s", 3000)) == AmdResult("unknown", "initial_silence", 2500)


def test_a_short_greeting_then_after_greeting_silence_is_a_human() -> None:
    classifier = AmdClassifier()
    result = run(classifier, ("s", 500), ("v", 400), ("s", 2000))
    assert result == AmdResult("human", "human", 500 + 400 + 800)
    assert classifier.words == 1


def test_a_pause_shorter_than_after_greeting_silence_keeps_listening() -> None:
    classifier = AmdClassifier()
    assert run(classifier, ("s", 300), ("v", 300), ("s", 780), ("v", 300)) is None
    assert classifier.result is None and classifier.words == 2


def test_greeting_voice_reaching_greeting_ms_is_a_long_greeting() -> None:
    result = run(AmdClassifier(), ("s", 400), ("v", 3000))
    assert result == AmdResult("machine", "long_greeting", 400 + 1500)


def test_the_third_word_is_max_words_and_two_words_are_still_a_human() -> None:
    words3 = run(AmdClassifier(), ("s", 200), ("v", 200), ("s", 200), ("v", 200), ("s", 200))
    assert words3 is None
    result = run(AmdClassifier(), *[("s", 200), ("v", 200)] * 3)
    # the third word counts once it has min_word_length (100 ms) of voice
    assert result == AmdResult("machine", "max_words", 200 * 5 + 100)
    two = run(AmdClassifier(), ("s", 200), ("v", 200), ("s", 200), ("v", 200), ("s", 900))
    assert two is not None and two.result == "human"


def test_pauses_shorter_than_between_words_silence_do_not_split_a_word() -> None:
    classifier = AmdClassifier()
    result = run(classifier, ("s", 200), *[("v", 200), ("s", 40)] * 4, ("s", 800))
    assert result is not None and result.result == "human"
    assert classifier.words == 1


def test_voice_blips_shorter_than_a_word_neither_count_nor_let_silence_run() -> None:
    # 60 ms blips every 260 ms: no word, no greeting, and the silence never reaches 2.5 s
    classifier = AmdClassifier()
    result = run(classifier, *[("s", 200), ("v", 60)] * 30)
    assert result == AmdResult("unknown", "too_long", 5000)
    assert classifier.words == 0 and not classifier.in_greeting


def test_voice_below_silence_threshold_is_silence() -> None:
    classifier = AmdClassifier()
    for _ in range(125):
        result = classifier.update(True, 255.0)
    assert result == AmdResult("machine", "initial_silence", 2500)


def test_one_word_of_maximum_word_length_is_a_machine() -> None:
    settings = AmdSettings(greeting_ms=4000, maximum_word_length_ms=1000)
    result = run(AmdClassifier(settings), ("s", 300), ("v", 2000))
    assert result == AmdResult("machine", "max_word_length", 300 + 1000)


def test_total_analysis_time_gives_up_unknown() -> None:
    settings = AmdSettings(total_analysis_time_ms=1000)
    assert run(AmdClassifier(settings), ("s", 300), ("v", 60), ("s", 700)) == AmdResult(
        "unknown", "too_long", 1000
    )


def test_the_verdict_is_returned_once_and_kept() -> None:
    classifier = AmdClassifier()
    assert run(classifier, ("s", 2500)) is not None
    assert classifier.update(True, LOUD) is None
    assert classifier.decide("unknown", "hangup") is None
    assert classifier.result == AmdResult("machine", "initial_silence", 2500)


def test_asterisk_defaults() -> None:
    s = AmdSettings()
    assert (s.initial_silence_ms, s.greeting_ms, s.after_greeting_silence_ms) == (2500, 1500, 800)
    assert (s.total_analysis_time_ms, s.min_word_length_ms, s.between_words_silence_ms) == (
        5000,
        100,
        50,
    )
    assert (s.maximum_number_of_words, s.maximum_word_length_ms, s.silence_threshold) == (
        2,
        5000,
        256,
    )


@pytest.mark.parametrize(
    "kwargs",
    [{"greeting_ms": 0}, {"maximum_number_of_words": 0}, {"vad_aggressiveness": 4}],
)
def test_bad_settings_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        AmdSettings(**kwargs)  # type: ignore[arg-type]


# --- audio ---------------------------------------------------------------------------------


def tone(hz: float, ms: int, amplitude: float = 8000.0) -> np.ndarray:
    t = np.arange(RATE * ms // 1000) / RATE
    return amplitude * np.sin(2 * np.pi * hz * t)


def quiet(ms: int, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0, 15, RATE * ms // 1000)


def vowel(ms: int, rng: np.random.Generator, f0: float = 140.0) -> np.ndarray:
    """Voiced-speech-like: harmonics of f0 with a 4 Hz syllable envelope (as test_vad's)."""
    t = np.arange(RATE * ms // 1000) / RATE
    harmonics = sum(
        np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k
        for k in range(1, 25)
        if f0 * k < RATE / 2
    )
    signal = harmonics * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    return signal / np.abs(signal).max() * 8000 + rng.normal(0, 200, len(t))


def pcm(*parts: np.ndarray, ulaw: bool = False) -> bytes:
    x = np.concatenate(parts)
    x = x[: len(x) // 160 * 160]
    data = np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()
    return ulaw_decode(ulaw_encode(data)) if ulaw else data


def frames(data: bytes) -> list[bytes]:
    return [data[i : i + FRAME] for i in range(0, len(data), FRAME)]


def beeps_in(data: bytes, settings: BeepSettings | None = None) -> list[Beep]:
    detector = BeepDetector(settings)
    found = [b for f in frames(data) if (b := detector.feed(f)) is not None]
    last = detector.flush()
    return found + ([last] if last else [])


def test_a_steady_tone_is_one_beep_with_its_times_and_frequency() -> None:
    rng = np.random.default_rng(1)
    (beep,) = beeps_in(pcm(quiet(500, rng), tone(1000, 400), quiet(500, rng), ulaw=True))
    assert abs(beep.start_ms - 500) <= 20 and abs(beep.end_ms - 900) <= 20
    assert abs(beep.frequency_hz - 1000) < 15


@pytest.mark.parametrize("hz", [440.0, 850.0, 1400.0, 2000.0])
def test_beeps_across_the_band_are_found(hz: float) -> None:
    rng = np.random.default_rng(2)
    (beep,) = beeps_in(pcm(quiet(300, rng), tone(hz, 250, 3000), quiet(300, rng)))
    assert abs(beep.frequency_hz - hz) < 25


def test_the_beep_is_reported_on_the_first_frame_after_it() -> None:
    detector = BeepDetector()
    rng = np.random.default_rng(3)
    reported = [
        i
        for i, f in enumerate(frames(pcm(tone(1000, 300), quiet(200, rng))))
        if detector.feed(f) is not None
    ]
    assert reported == [15]  # 300 ms of tone is frames 0..14


@pytest.mark.parametrize(
    "signal",
    [
        pytest.param(lambda rng: tone(1000, 80), id="too short"),
        pytest.param(lambda rng: tone(1000, 2600), id="too long (fax answer tone)"),
        pytest.param(lambda rng: tone(300, 400), id="below the band"),
        pytest.param(lambda rng: tone(3000, 400), id="above the band"),
        pytest.param(lambda rng: tone(770, 400) + tone(1336, 400), id="two tones (DTMF 5)"),
        pytest.param(lambda rng: tone(1000, 400, 60), id="too quiet"),
        pytest.param(
            lambda rng: np.concatenate([tone(1000, 100), tone(1600, 100), tone(1000, 100)]),
            id="a chime of short tones at different pitches",
        ),
        pytest.param(lambda rng: vowel(3000, rng), id="speech"),
        pytest.param(lambda rng: vowel(3000, rng, f0=220), id="higher speech"),
        pytest.param(lambda rng: rng.normal(0, 3000, 3 * RATE), id="white noise"),
    ],
)
def test_what_is_not_a_beep(signal: object) -> None:
    rng = np.random.default_rng(4)
    make = signal  # a callable: rng -> samples
    assert callable(make)
    assert beeps_in(pcm(quiet(200, rng), make(rng), quiet(400, rng))) == []


def test_beep_waiter_times_out_without_a_beep() -> None:
    rng = np.random.default_rng(5)
    waiter = BeepWaiter(timeout_ms=1000)
    outcomes = [o for f in frames(pcm(vowel(2000, rng))) if (o := waiter.feed(f)) is not None]
    assert len(outcomes) == 1
    assert outcomes[0].beep is None and outcomes[0].beep_ms is None
    assert outcomes[0].waited_ms == 1000


def test_beep_waiter_reports_beep_end_from_its_own_start_and_carries_on_a_tone() -> None:
    rng = np.random.default_rng(6)
    audio = frames(pcm(quiet(400, rng), tone(1400, 500), quiet(400, rng)))
    detector = BeepDetector()
    for f in audio[:25]:  # the wait starts 100 ms into the tone, which began at 400 ms
        assert detector.feed(f) is None
    waiter = BeepWaiter(timeout_ms=5000, detector=detector)
    outcome = next(o for f in audio[25:] if (o := waiter.feed(f)) is not None)
    assert outcome.beep is not None and outcome.beep.start_ms == 400
    assert outcome.beep_ms == outcome.beep.end_ms - 500
    assert abs(outcome.beep.end_ms - 900) <= 20


def amd_verdict(data: bytes, settings: AmdSettings | None = None) -> AmdResult | None:
    detector = AnsweringMachineDetector(settings)
    for f in frames(data):
        if (result := detector.feed(f)) is not None:
            return result
    return detector.finish()


def test_hello_then_silence_is_a_human() -> None:
    rng = np.random.default_rng(7)
    result = amd_verdict(pcm(quiet(600, rng), vowel(500, rng), quiet(2000, rng), ulaw=True))
    assert result is not None and (result.result, result.reason) == ("human", "human")
    assert 1800 <= result.analysis_ms <= 2100


def test_continuous_talking_is_a_machine() -> None:
    rng = np.random.default_rng(8)
    talk = [p for _ in range(6) for p in (vowel(450, rng), quiet(150, rng))]
    result = amd_verdict(pcm(quiet(300, rng), *talk, ulaw=True))
    assert result is not None and result.result == "machine"
    assert result.reason in {"max_words", "long_greeting"}
    assert result.analysis_ms < 2500


def test_a_beep_during_the_analysis_is_a_machine() -> None:
    rng = np.random.default_rng(9)
    detector = AnsweringMachineDetector()
    data = pcm(quiet(500, rng), vowel(300, rng), quiet(200, rng), tone(1000, 300), quiet(1500, rng))
    result = next(r for f in frames(data) if (r := detector.feed(f)) is not None)
    assert (result.result, result.reason) == ("machine", "beep")
    assert detector.beep is not None and abs(detector.beep.end_ms - 1300) <= 20
    assert result.analysis_ms == detector.beep.end_ms + 20


def test_beep_detection_can_be_turned_off() -> None:
    rng = np.random.default_rng(9)
    data = pcm(quiet(500, rng), vowel(300, rng), quiet(200, rng), tone(1000, 300), quiet(1500, rng))
    result = amd_verdict(data, AmdSettings(detect_beep=False))
    assert result is not None and result.reason != "beep"


def test_silence_is_initial_silence_and_audio_ending_early_is_unknown() -> None:
    rng = np.random.default_rng(10)
    assert amd_verdict(pcm(quiet(3000, rng))) == AmdResult("machine", "initial_silence", 2500)
    assert amd_verdict(pcm(quiet(1000, rng))) == AmdResult("unknown", "hangup", 1000)


def test_feed_takes_several_frames_and_refuses_partial_ones() -> None:
    detector = AnsweringMachineDetector()
    assert detector.feed(bytes(FRAME * 124)) is None
    assert detector.feed(bytes(FRAME * 2)) == AmdResult("machine", "initial_silence", 2500)
    assert detector.feed(bytes(FRAME)) is None
    with pytest.raises(ValueError, match="multiple of 320"):
        AnsweringMachineDetector().feed(bytes(100))


SCENARIOS = Path(__file__).resolve().parents[2] / "sipp_scenarios"


def pcap_frames(path: Path) -> list[bytes]:
    """The PCMU payloads of a make_pcap.py pcap, decoded to PCM16."""
    data, i, out = path.read_bytes(), 24, []
    while i < len(data):
        length = int.from_bytes(data[i + 8 : i + 12], "little")
        out.append(ulaw_decode(data[i + 16 + 14 + 20 + 8 + 12 : i + 16 + length]))
        i += 16 + length
    return out


@pytest.mark.parametrize(
    ("pcap", "verdict", "beep_end_ms"),
    [
        ("amd_human_pcmu.pcap", ("human", "human"), None),
        ("amd_machine_pcmu.pcap", ("machine", "max_words"), 6700),
    ],
)
def test_the_sipp_amd_pcaps_get_the_verdicts_their_scenarios_promise(
    pcap: str, verdict: tuple[str, str], beep_end_ms: int | None
) -> None:
    audio = pcap_frames(SCENARIOS / "pcap" / pcap)
    detector = AnsweringMachineDetector()
    k, result = 0, None
    while result is None:
        result = detector.feed(audio[k])
        k += 1
    assert (result.result, result.reason) == verdict
    waiter = BeepWaiter(timeout_ms=10000, detector=detector.beeps)
    outcome = next((o for f in audio[k:] if (o := waiter.feed(f)) is not None), None)
    found = outcome.beep.end_ms if outcome is not None and outcome.beep is not None else None
    if beep_end_ms is None:
        assert found is None
    else:
        assert found is not None and abs(found - beep_end_ms) <= 20
