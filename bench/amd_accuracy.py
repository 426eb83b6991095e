#!/usr/bin/env python3
"""AMD accuracy on the labelled corpus (bench/amd_corpus.py): verdicts, beeps, cost per frame.

Each WAV is cut into 20 ms frames and fed to `media.amd.AnsweringMachineDetector` until it
gives a verdict (a file that ends first is finish()ed: unknown, "hangup"). The rest of the
file then goes to a `BeepWaiter` on the AMD's own beep detector, as wait_for_beep would run.

  * accuracy and a confusion table (true label x verdict), verdicts by reason, the cases
    it got wrong;
  * analysis_ms: mean and p95 over all cases, and per true label;
  * beeps: recall over the machine files that end in one (a beep found during the analysis
    or by the wait that follows it, overlapping the true beep), false positives (a beep
    reported where none was played: every file is run to its end), end-time error;
  * µs per 20 ms frame: AMD feed over the corpus (quiet frames skip webrtcvad and the beep
    DFT), AMD feed on sustained speech (every stage runs), beep wait feed.

    python bench/amd_accuracy.py                       # builds the corpus in /tmp if missing
    python bench/amd_accuracy.py --json
    python bench/amd_accuracy.py --initial-silence-result unknown

Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import wave
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import amd_corpus
from media.amd import AmdSettings, AnsweringMachineDetector, Beep, BeepWaiter

LABELS = ("human", "machine", "unknown")
FRAME_BYTES = 320  # 20 ms at 8 kHz


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] if ordered else 0.0


def run_case(pcm: bytes, settings: AmdSettings, beep_timeout_ms: int) -> dict[str, Any]:
    frames = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]
    amd = AnsweringMachineDetector(settings)
    amd_ns = 0
    k = 0
    result = None
    while result is None and k < len(frames):
        t0 = time.perf_counter_ns()
        result = amd.feed(frames[k])
        amd_ns += time.perf_counter_ns() - t0
        k += 1
    amd_frames = k
    if result is None:
        result = amd.finish()
    assert result is not None
    beeps: list[Beep] = [amd.beep] if amd.beep else []
    wait_ns = 0
    wait_frames = 0
    waiter = BeepWaiter(beep_timeout_ms, detector=amd.beeps)
    for frame in frames[k:]:
        t0 = time.perf_counter_ns()
        outcome = waiter.feed(frame)
        wait_ns += time.perf_counter_ns() - t0
        wait_frames += 1
        if outcome is not None and outcome.beep is not None:
            beeps.append(outcome.beep)
            waiter = BeepWaiter(beep_timeout_ms, detector=amd.beeps)  # count every beep
    last = amd.beeps.flush()
    if last is not None:
        beeps.append(last)
    return {
        "result": result.result,
        "reason": result.reason,
        "analysis_ms": result.analysis_ms,
        "beeps": beeps,
        "amd_ns": amd_ns,
        "amd_frames": amd_frames,
        "wait_ns": wait_ns,
        "wait_frames": wait_frames,
    }


def evaluate(corpus: Path, settings: AmdSettings, beep_timeout_ms: int) -> dict[str, Any]:
    manifest = json.loads((corpus / "manifest.json").read_text())
    confusion = {t: dict.fromkeys(LABELS, 0) for t in LABELS}
    reasons: Counter[str] = Counter()
    analysis: dict[str, list[float]] = {t: [] for t in LABELS}
    wrong = []
    beep_files = beep_found = false_beeps = 0
    end_errors: list[float] = []
    amd_ns = amd_frames = wait_ns = wait_frames = 0
    for case in manifest["cases"]:
        with wave.open(str(corpus / f"{case['name']}.wav")) as w:
            pcm = w.readframes(w.getnframes())
        got = run_case(pcm, settings, beep_timeout_ms)
        label = case["label"]
        confusion[label][got["result"]] += 1
        reasons[f"{got['result']}/{got['reason']}"] += 1
        analysis[label].append(got["analysis_ms"])
        if got["result"] != label:
            wrong.append(
                f"{case['name']}: {label} -> {got['result']} ({got['reason']}, "
                f"{got['analysis_ms']} ms) {case['voice']} {case['text'][:50]!r}"
            )
        hit = None
        for beep in got["beeps"]:
            start, end = case["beep_start_ms"], case["beep_end_ms"]
            if start is not None and beep.start_ms < end and beep.end_ms > start and hit is None:
                hit = beep
            else:
                false_beeps += 1
        if case["beep_start_ms"] is not None:
            beep_files += 1
            if hit is not None:
                beep_found += 1
                end_errors.append(hit.end_ms - case["beep_end_ms"])
        amd_ns += got["amd_ns"]
        amd_frames += got["amd_frames"]
        wait_ns += got["wait_ns"]
        wait_frames += got["wait_frames"]
    total = sum(sum(row.values()) for row in confusion.values())
    correct = sum(confusion[t][t] for t in LABELS)
    every = [ms for values in analysis.values() for ms in values]
    return {
        "corpus": str(corpus),
        "seed": manifest["seed"],
        "cases": total,
        "accuracy": round(correct / total, 3),
        "confusion": confusion,
        "reasons": dict(sorted(reasons.items())),
        "analysis_ms": {
            "mean": round(statistics.fmean(every)),
            "p95": round(p95(every)),
            **{
                t: {"mean": round(statistics.fmean(v)), "p95": round(p95(v))}
                for t, v in analysis.items()
                if v
            },
        },
        "beep": {
            "files_with_beep": beep_files,
            "found": beep_found,
            "recall": round(beep_found / beep_files, 3) if beep_files else None,
            "false_positives": false_beeps,
            "end_error_ms_mean": round(statistics.fmean(end_errors), 1) if end_errors else None,
            "end_error_ms_max": max(end_errors, key=abs) if end_errors else None,
        },
        "us_per_frame": {
            "amd_feed": round(amd_ns / amd_frames / 1000, 2),
            "beep_wait_feed": round(wait_ns / wait_frames / 1000, 2) if wait_frames else None,
            "amd_feed_sustained": round(sustained_us_per_frame(corpus), 2),
        },
        "wrong": wrong,
        "settings": {k: v for k, v in vars_of(settings).items() if k != "beep"},
    }


def sustained_us_per_frame(corpus: Path, frames: int = 5000) -> float:
    """µs per frame with every stage busy: a beepless greeting fed in a loop to a detector whose
    rules never decide (level, webrtcvad and the beep DFT run on each loud frame)."""
    with wave.open(str(corpus / "machine_02.wav")) as w:
        pcm = w.readframes(w.getnframes())
    chunks = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]
    never = 10**9
    amd = AnsweringMachineDetector(
        AmdSettings(
            greeting_ms=never,
            maximum_word_length_ms=never,
            total_analysis_time_ms=never,
            maximum_number_of_words=never,
            initial_silence_ms=never,
            after_greeting_silence_ms=never,
            detect_beep=True,
        )
    )
    t0 = time.perf_counter_ns()
    for k in range(frames):
        amd.feed(chunks[k % len(chunks)])
    elapsed_ns = time.perf_counter_ns() - t0
    assert amd.result is None, amd.result  # a verdict would skip the stages
    return elapsed_ns / frames / 1000


def vars_of(settings: AmdSettings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}


def print_report(r: dict[str, Any]) -> None:
    print(f"corpus {r['corpus']} (seed {r['seed']}): {r['cases']} cases")
    print(f"accuracy {r['accuracy']:.1%}")
    print("confusion (rows: true label, columns: verdict)")
    print(f"  {'':>9} " + " ".join(f"{t:>8}" for t in LABELS))
    for t in LABELS:
        print(f"  {t:>9} " + " ".join(f"{r['confusion'][t][v]:>8}" for v in LABELS))
    print("verdicts by reason: " + ", ".join(f"{k} {v}" for k, v in r["reasons"].items()))
    a = r["analysis_ms"]
    print(
        f"analysis_ms: mean {a['mean']}, p95 {a['p95']}; "
        + "; ".join(f"{t} mean {a[t]['mean']} p95 {a[t]['p95']}" for t in LABELS if t in a)
    )
    b = r["beep"]
    print(
        f"beep: found {b['found']}/{b['files_with_beep']} (recall {b['recall']}), "
        f"false positives {b['false_positives']}, end error mean {b['end_error_ms_mean']} ms, "
        f"worst {b['end_error_ms_max']} ms"
    )
    u = r["us_per_frame"]
    print(
        f"µs per 20 ms frame: amd feed {u['amd_feed']} (corpus mix), "
        f"{u['amd_feed_sustained']} (sustained speech, every stage), "
        f"beep wait feed {u['beep_wait_feed']}"
    )
    if r["wrong"]:
        print("wrong:")
        for line in r["wrong"]:
            print("  " + line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=amd_corpus.DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=14, help="for building a missing corpus")
    ap.add_argument("--beep-timeout-ms", type=int, default=30000)
    ap.add_argument("--initial-silence-result", choices=("machine", "unknown"), default="machine")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = ap.parse_args()
    if not (args.corpus / "manifest.json").exists():
        amd_corpus.build(args.corpus, args.seed)
    settings = AmdSettings(initial_silence_result=args.initial_silence_result)
    report = evaluate(args.corpus, settings, args.beep_timeout_ms)
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
