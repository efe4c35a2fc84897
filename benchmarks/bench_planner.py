"""Planner and model speed on PORTEND's ResNet-110 case (seed 002 Table II: 30 min exhaustive).

Pinned to one core. For each chain it times, side by side in one run (median of --repeats):

* enumeration: every plan evaluated by the full model, best plan + Pareto front;
* dynamic program: the exact optimum for latency;
* model throughput: plans evaluated per second;
* bandwidth tables (97 points, 1-100 Mbit/s) for MobileNetV2 on the 3-device chain, layer plans
  only and with parallel sections (Intra-DP LOP), built from scratch (a new model and planner, as a
  controller round would), with the largest gain of the sectioned plans.

Usage: python benchmarks/bench_planner.py [--repeats 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

from adaptive.model.latency import Conditions, SplitModel
from adaptive.model.planner import Planner
from adaptive.model.profiles import resolve_device, resolve_model

CHAINS = {
    "3 devices": ["raspberry-pi-4", "jetson-nano", "jetson-agx-orin"],
    "4 devices": ["raspberry-pi-4", "jetson-nano", "jetson-orin-nano", "jetson-agx-orin"],
}


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _tables(repeats: int) -> dict[str, object]:
    import numpy as np

    model = resolve_model("mobilenet_v2")
    devices = [resolve_device(n) for n in CHAINS["3 devices"]]
    grid, cond = np.geomspace(1, 100, 97), Conditions(bandwidth_mbps=1.0)

    def build(parallel: bool) -> list:
        return Planner(SplitModel(model, devices), parallel=parallel).table(grid, cond)

    layer_ms = median_ms(lambda: build(False), repeats)
    sections_ms = median_ms(lambda: build(True), repeats)
    layer = np.array([r.latency_ms for r in build(False)])
    sections = np.array([r.latency_ms for r in build(True)])
    return {"layer_ms": layer_ms, "sections_ms": sections_ms, "max_gain": float(np.max(1 - sections / layer)),
            "never_worse": bool(np.all(sections <= layer + 1e-9))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    model = resolve_model("resnet110_cifar")
    rows = []
    for label, names in CHAINS.items():
        devices = [resolve_device(n) for n in names]
        cond = Conditions(bandwidth_mbps=[20.0] + [200.0] * (len(names) - 2))
        for codecs in (False, True):
            planner = Planner(SplitModel(model, devices), use_codecs=codecs)
            plans = planner.all_plans()
            enum_ms = median_ms(lambda p=planner, c=cond: (p.best(c, method="enumeration"),
                                                           p.pareto(c)), args.repeats)
            dp_ms = median_ms(lambda p=planner, c=cond: p.best(c, method="dp"), args.repeats)
            eval_ms = median_ms(lambda p=planner, x=plans, c=cond: p.model.evaluate(x, c), args.repeats)
            a, b = planner.best(cond, method="enumeration"), planner.best(cond, method="dp")
            rows.append({"chain": label, "codecs": codecs, "blocks": model.num_blocks,
                         "plans": len(plans), "enumerate_best_and_pareto_ms": enum_ms,
                         "dp_ms": dp_ms, "model_plans_per_s": len(plans) / eval_ms * 1e3,
                         "same_optimum": abs(a.latency_ms - b.latency_ms) < 1e-9})
    tables = _tables(args.repeats)
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, pinned to 1 core, Python {platform.python_version()}"
    if args.json:
        print(json.dumps({"machine": machine, "rows": rows, "tables": tables}, indent=1))
        return
    print(f"resnet110_cifar ({model.num_blocks} blocks: PORTEND's 55 units + the classifier head); {machine}")
    print(f"{'chain':<10}{'codecs':>7}{'plans':>10}{'enum+pareto ms':>16}{'DP ms':>9}"
          f"{'model plans/s':>15}{'same opt':>10}")
    for r in rows:
        print(f"{r['chain']:<10}{r['codecs']!s:>7}{r['plans']:>10}"
              f"{r['enumerate_best_and_pareto_ms']:>16.1f}{r['dp_ms']:>9.2f}"
              f"{r['model_plans_per_s']:>15,.0f}{r['same_optimum']!s:>10}")
    print(f"mobilenet_v2 on {' -> '.join(CHAINS['3 devices'])}, table of 97 bandwidths (1-100 Mbit/s):")
    print(f"  layer plans only   {tables['layer_ms']:8.1f} ms")
    ratio = tables["sections_ms"] / tables["layer_ms"]
    print(f"  with sections      {tables['sections_ms']:8.1f} ms   ({ratio:.1f}x; best gain "
          f"{tables['max_gain']:.1%}, never worse: {tables['never_worse']})")


if __name__ == "__main__":
    main()
