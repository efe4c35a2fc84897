"""Validation report: seed 000's corrected segment model vs naive summation, against measurements.

Part 1 measures models on this machine (torch, 1 thread): every block and the N + 1 segments the
profiler picks, with blocks and segments each timed in context (inside forward passes) and in
isolation (seed 000's method), and fits the correction for every combination.

Part 2 fits the same correction on PORTEND's published all-segments data (shared/profiles/raw/portend,
read only when present): fitted on the N + 1 segments our profiler would choose (the 2N + 1
protocol), tested on every other measured segment.

Usage: python benchmarks/validate_correction.py [--shared ../shared/profiles] [--out docs/validation.md]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

MODELS = ["vgg16_cifar", "resnet50_cifar", "resnet18", "mobilenet_v2"]


def mape(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - true) / true) * 100)


def measure_here(lines: list[str]) -> None:
    from adaptive.nn.partition import partition
    from adaptive.nn.profiler import TimingConfig, machine_description, profile_partition
    from adaptive.nn.zoo import build_model, default_input_shape

    lines += [f"Machine: {machine_description()}; 1 torch thread; batch 1; 21 timed passes per block",
              "and 11 per segment after warm-up; medians. `held-out` fits on half of the segments and",
              "tests on the other half (2-fold).", "",
              "| model | blocks | blocks timed | segments timed | naive MAPE | corrected MAPE | "
              "held-out MAPE | c0 ms | c1 ms |",
              "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for name in MODELS:
        part = partition(build_model(name), default_input_shape(name), name=name)
        for blocks in ("context", "isolated"):
            for segments in ("context", "isolated"):
                cfg = TimingConfig(block_timing=blocks, segment_timing=segments)
                *_, fit = profile_partition(part, cfg, progress=False)
                lines.append(f"| {name} | {part.num_blocks} | {blocks} | {segments} | "
                             f"{fit.mape_naive_pct:.1f}% | {fit.mape_corrected_pct:.1f}% | "
                             f"{fit.mape_holdout_pct:.1f}% | {fit.c0_ms:.4f} | {fit.c1_ms:.4f} |")
                print(lines[-1], file=sys.stderr)


def portend(shared: Path, lines: list[str]) -> None:
    from adaptive.nn.profiler import choose_segments, fit_correction

    path = shared / "raw" / "portend" / "portend_segments_long.csv"
    if not path.exists():
        lines.append(f"*{path} not found: PORTEND part skipped.*")
        return
    samples: dict[tuple[str, str, str], dict[tuple[int, int], list[float]]] = defaultdict(
        lambda: defaultdict(list))
    with path.open(newline="") as fh:
        for r in csv.DictReader(fh):
            key = (r["instance"], r["cpu_cores_used"], r["model"])
            segment = (int(r["partition_start"]) - 1, int(r["partition_end"]))
            samples[key][segment].append(float(r["latency_ms"]))
    lines += ["| instance | cores | model | units | segments | naive MAPE | corrected (fit on all) | "
              "fit on N+1, test on the rest | c0 ms | c1 ms |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (inst, cores, model), seg in sorted(samples.items()):
        mean = {k: statistics.fmean(v) for k, v in seg.items()}
        n = max(j for _, j in mean)
        units = np.array([mean.get((i, i + 1), np.nan) for i in range(n)])
        if np.isnan(units).any():
            continue
        multi = [(i, j) for (i, j) in mean if j - i >= 2]
        if len(multi) < 3:
            continue
        measured = [mean[s] for s in multi]
        fit = fit_correction(units, multi, measured)
        chosen = [s for s in choose_segments(n) if s in mean]
        rest = [s for s in multi if s not in chosen]
        small = fit_correction(units, chosen, [mean[s] for s in chosen])
        sums = np.array([units[i:j].sum() for i, j in rest])
        pred = sums - (small.c0_ms * np.array([j - i for i, j in rest]) + small.c1_ms)
        true = np.array([mean[s] for s in rest])
        test = f"{mape(pred, true):.1f}% (naive {mape(sums, true):.1f}%)" if rest else "-"
        lines.append(f"| {inst} | {cores} | {model} | {n} | {len(multi)} | {fit.mape_naive_pct:.1f}% | "
                     f"{fit.mape_corrected_pct:.1f}% | {test} | {fit.c0_ms:.4f} | {fit.c1_ms:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description="seed 000 correction vs naive sums")
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "profiles"))
    parser.add_argument("--out", help="write the markdown report here (default: stdout)")
    parser.add_argument("--skip-local", action="store_true", help="only the PORTEND part")
    args = parser.parse_args()
    lines = ["## Part 1: this machine", ""]
    start = time.time()
    if not args.skip_local:
        measure_here(lines)
    lines += ["", "## Part 2: PORTEND's published all-segments data", ""]
    portend(Path(args.shared), lines)
    lines += ["", f"_Generated by `python benchmarks/validate_correction.py` in {time.time() - start:.0f} s "
              f"on {time.strftime('%Y-%m-%d')}._"]
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
