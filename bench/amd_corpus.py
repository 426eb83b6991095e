#!/usr/bin/env python3
"""A labelled AMD corpus: espeak-ng humans and answering machines as 8 kHz PCMU-decoded WAVs.

Each case is what an outbound call hears after the answer, through G.711 mu-law:
  * human: a pick-up pause, a short answer ("Hello?", "Yes?", "Hello, who is this?"), then
    silence, sometimes a second short "Hello?" after it;
  * machine: a greeting of one to four sentences with pauses between them, with or without a
    trailing beep (one tone, 440-2000 Hz, 200-700 ms), some after a long leading silence;
  * unknown: silence, line noise, hum, crackle: nothing anyone said;
  * and a few more humans and machines on a noisy line (noise around the silence threshold).
Voices (espeak-ng's English voices and variants), speeds, pitches, levels and a noise floor
are drawn from a seeded RNG, so the same seed and espeak-ng build give the same files.

    python bench/amd_corpus.py                    # -> /tmp/sipedge-amd-corpus
    python bench/amd_corpus.py --out DIR --seed 7
    python bench/amd_corpus.py --sipp --out DIR   # the WAVs behind sipp_scenarios/pcap/amd_*.pcap

Writes DIR/<case>.wav (8000 Hz mono PCM16) and DIR/manifest.json (label, beep position, the
text and voice of each case). Needs espeak-ng (Debian `espeak-ng`; scripts/setup installs it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from media.codecs import ulaw_decode, ulaw_encode

RATE = 8000
DEFAULT_OUT = Path(tempfile.gettempdir()) / "sipedge-amd-corpus"
Audio = npt.NDArray[np.float64]

VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-rp"]
VARIANTS = ["", "+f2", "+f3", "+f4", "+m2", "+m3", "+m5"]
HUMAN_ANSWERS = [
    "Hello?",
    "Yes?",
    "Hello, who is this?",
    "Hi.",
    "Yeah?",
    "Hello.",
    "Hi, who's calling?",
    "Speaking.",
    "Hello, this is Maria.",
    "Good morning.",
    "Yes, hello?",
    "Hey.",
]
HUMAN_FOLLOW_UPS = ["Hello?", "Anyone there?", "Hello? Can you hear me?", "Yes?"]
NAMES = ["Sarah", "David Miller", "Priya", "Tom and Anna", "Doctor Okafor", "Lucas"]
COMPANIES = ["Acme Plumbing", "Northside Dental", "the Riverside Library", "Blue Sky Travel"]
MACHINE_GREETINGS = [
    [
        "Hi, you've reached the voicemail of {name}.",
        "I can't take your call right now.",
        "Please leave your name and number after the tone, and I'll call you back.",
    ],
    [
        "The person you are trying to reach is not available.",
        "At the tone, please record your message.",
        "When you have finished recording, you may hang up.",
    ],
    [
        "Thank you for calling {company}.",
        "Our office is currently closed.",
        "Our business hours are Monday to Friday, nine to five.",
        "Please leave a message.",
    ],
    ["Hey, it's {name}. Leave a message."],
    ["You have reached five five five, zero one nine two.", "Please leave a message."],
    [
        "Hello, this is {name}, sorry I missed your call.",
        "Leave me a message and I will get back to you as soon as I can.",
        "Thanks, bye.",
    ],
    [
        "Welcome to the {company} voice messaging system.",
        "The subscriber you have dialled is not available.",
        "Please leave a message after the tone.",
    ],
]
BEEP_HZ = [1000.0, 1400.0, 850.0, 440.0, 2000.0, 700.0]


@dataclass
class Case:
    name: str
    label: str  # human | machine | unknown
    seconds: float
    beep_start_ms: int | None = None
    beep_end_ms: int | None = None
    beep_hz: float | None = None
    text: str = ""
    voice: str = ""


def speak(text: str, voice: str, speed: int, pitch: int, pause_ms: int = 0) -> Audio:
    """espeak-ng's audio for `text` (SSML; sentences split by `pause_ms` breaks), at 8 kHz."""
    pause = f'<break time="{pause_ms}ms"/>'
    ssml = f"<speak>{text.replace('|', pause)}</speak>"
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(
            ["espeak-ng", "-m", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", tmp.name],
            input=ssml.encode(),
            check=True,
        )
        with wave.open(tmp.name) as w:
            rate = w.getframerate()
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    return _to_8k(raw, rate)


def _to_8k(x: Audio, rate: int) -> Audio:
    """Low-pass at 3.6 kHz (windowed sinc), then interpolate at 8 kHz: good enough for a corpus."""
    if rate == RATE:
        return x
    taps = 101
    n = np.arange(taps) - (taps - 1) / 2
    h = np.sinc(2 * 3600 / rate * n) * np.hamming(taps)
    y = np.convolve(x, h / h.sum(), mode="same")
    t = np.arange(0, len(y) / rate, 1 / RATE)
    return np.interp(t, np.arange(len(y)) / rate, y)


def silence(ms: float) -> Audio:
    return np.zeros(round(ms * RATE / 1000))


def tone(hz: float, ms: float, amplitude: float) -> Audio:
    t = np.arange(round(ms * RATE / 1000)) / RATE
    ramp = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.005)  # 5 ms fades, no clicks
    return amplitude * ramp * np.sin(2 * np.pi * hz * t)


def at_level(x: Audio, peak: float) -> Audio:
    m = float(np.abs(x).max())
    return x * (peak / m) if m else x


def _voice(rng: np.random.Generator) -> tuple[str, int, int]:
    voice = str(rng.choice(VOICES)) + str(rng.choice(VARIANTS))
    return voice, int(rng.integers(130, 200)), int(rng.integers(25, 75))


def human(rng: np.random.Generator, i: int) -> tuple[Case, list[Audio]]:
    voice, speed, pitch = _voice(rng)
    answer = str(rng.choice(HUMAN_ANSWERS))
    peak = float(rng.uniform(6000, 20000))
    parts = [silence(rng.uniform(200, 1500)), at_level(speak(answer, voice, speed, pitch), peak)]
    text = answer
    if rng.random() < 0.4:  # they say something again when the caller stays silent
        follow = str(rng.choice(HUMAN_FOLLOW_UPS))
        parts += [
            silence(rng.uniform(1200, 2500)),
            at_level(speak(follow, voice, speed, pitch), peak),
        ]
        text += " ... " + follow
    parts.append(silence(rng.uniform(2000, 3500)))
    return Case(f"human_{i:02d}", "human", 0.0, text=text, voice=voice), parts


def machine(rng: np.random.Generator, i: int) -> tuple[Case, list[Audio]]:
    voice, speed, pitch = _voice(rng)
    sentences = MACHINE_GREETINGS[i % len(MACHINE_GREETINGS)]
    text = "|".join(sentences).format(
        name=str(rng.choice(NAMES)), company=str(rng.choice(COMPANIES))
    )
    lead_ms = rng.uniform(2800, 3500) if i % 6 == 5 else rng.uniform(100, 900)
    peak = float(rng.uniform(6000, 20000))
    greeting = at_level(speak(text, voice, speed, pitch, int(rng.integers(250, 700))), peak)
    parts = [silence(lead_ms), greeting]
    case = Case(f"machine_{i:02d}", "machine", 0.0, text=text.replace("|", " "), voice=voice)
    if i % 3 != 2:  # two in three end with a beep
        gap_ms = float(rng.uniform(300, 900))
        beep_ms = int(rng.integers(200, 700))
        hz = float(BEEP_HZ[i % len(BEEP_HZ)])
        start = sum(len(p) for p in parts) * 1000 // RATE + round(gap_ms)
        parts += [silence(gap_ms), tone(hz, beep_ms, float(rng.uniform(4000, 12000)))]
        case.beep_start_ms, case.beep_end_ms, case.beep_hz = start, start + beep_ms, hz
    parts.append(silence(rng.uniform(2000, 4000)))
    return case, parts


def unknown(rng: np.random.Generator, i: int) -> tuple[Case, list[Audio]]:
    n = round(6.0 * RATE)
    t = np.arange(n) / RATE
    kind = ["silence", "line_noise", "loud_noise", "hum", "crackle", "pink_noise"][i % 6]
    if kind == "silence":
        x = np.zeros(n)
    elif kind == "line_noise":
        x = rng.normal(0, 150, n)
    elif kind == "loud_noise":
        x = rng.normal(0, 2500, n)
    elif kind == "hum":
        x = sum(1500 / h * np.sin(2 * np.pi * 60 * h * t) for h in (1, 2, 3, 5)) + rng.normal(
            0, 30, n
        )
    elif kind == "crackle":
        x = rng.normal(0, 20, n)
        for start in rng.integers(0, n - 400, 25):
            x[start : start + int(rng.integers(20, 400))] += rng.normal(0, 4000)
    else:  # pink-ish: integrated white noise, high-passed
        w = np.cumsum(rng.normal(0, 1, n))
        x = w - np.convolve(w, np.ones(64) / 64, mode="same")
        x = at_level(x, 6000)
    return Case(f"unknown_{i:02d}_{kind}", "unknown", 0.0, text=kind), [np.asarray(x)]


def render(parts: list[Audio], rng: np.random.Generator, noise_rms: float) -> bytes:
    """Concatenate, add a noise floor, clip and pass through G.711 mu-law, as a call would."""
    x = np.concatenate(parts)
    x = x + rng.normal(0, noise_rms, len(x))
    x = x[: len(x) // 160 * 160]
    pcm = np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()
    return ulaw_decode(ulaw_encode(pcm))


def build(
    out: Path,
    seed: int = 14,
    humans: int = 24,
    machines: int = 24,
    unknowns: int = 6,
    noisy: int = 6,
) -> list[Case]:
    """The corpus; `noisy` more humans and machines each sit on a loud line (noise RMS 250-900,
    a mean |sample| around and above Asterisk's silence_threshold of 256)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    quiet_line, loud_line = (3.0, 25.0), (250.0, 900.0)
    makers = [
        (human, humans, quiet_line, ""),
        (machine, machines, quiet_line, ""),
        (unknown, unknowns, quiet_line, ""),
        (human, noisy, loud_line, "noisy_"),
        (machine, noisy, loud_line, "noisy_"),
    ]
    cases: list[Case] = []
    for make, count, (lo, hi), prefix in makers:
        for i in range(count):
            case, parts = make(rng, i)
            case.name = case.name.replace("_", f"_{prefix}", 1)
            pcm = render(parts, rng, float(rng.uniform(lo, hi)))
            case.seconds = len(pcm) / 2 / RATE
            write_wav(out / f"{case.name}.wav", pcm)
            cases.append(case)
    manifest = {"seed": seed, "rate": RATE, "cases": [asdict(c) for c in cases]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return cases


def write_wav(path: Path, pcm: bytes) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm)


def build_sipp(out: Path) -> list[Case]:
    """The two callees of sipp_scenarios/uas_amd_*.xml: a short "Hello?", and a greeting + beep."""
    rng = np.random.default_rng(1414)
    out.mkdir(parents=True, exist_ok=True)
    hello = at_level(speak("Hello?", "en-us", 160, 50), 12000)
    human_case = Case("amd_human", "human", 0.0, text="Hello?", voice="en-us")
    human_parts = [silence(400), hello, silence(3000)]
    text = "Hi, you've reached Sam.|I can't take your call right now.|Please leave a message."
    greeting = at_level(speak(text, "en-gb+f3", 170, 55, 350), 12000)
    machine_case = Case(
        "amd_machine", "machine", 0.0, text=text.replace("|", " "), voice="en-gb+f3"
    )
    machine_parts = [silence(300), greeting, silence(600)]
    start = sum(len(p) for p in machine_parts) * 1000 // RATE
    machine_parts += [tone(1000.0, 400, 8000.0), silence(2000)]
    machine_case.beep_start_ms, machine_case.beep_end_ms = start, start + 400
    machine_case.beep_hz = 1000.0
    for case, parts in ((human_case, human_parts), (machine_case, machine_parts)):
        pcm = render(parts, rng, 8.0)
        case.seconds = len(pcm) / 2 / RATE
        write_wav(out / f"{case.name}.wav", pcm)
    return [human_case, machine_case]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument(
        "--sipp", action="store_true", help="write only the two WAVs of uas_amd_*.xml to --out"
    )
    args = ap.parse_args()
    if args.sipp:
        for case in build_sipp(args.out):
            beep = f", beep {case.beep_start_ms}-{case.beep_end_ms} ms" if case.beep_hz else ""
            print(f"wrote {args.out / case.name}.wav ({case.seconds:.2f} s{beep}): {case.text}")
        return
    cases = build(args.out, args.seed)
    by_label = {
        label: sum(c.label == label for c in cases) for label in ("human", "machine", "unknown")
    }
    beeps = sum(c.beep_start_ms is not None for c in cases)
    print(f"wrote {len(cases)} cases to {args.out}: {by_label}, {beeps} with a beep")


if __name__ == "__main__":
    main()
