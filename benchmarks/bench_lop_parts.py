"""The model of parallel-section parts against their real execution on this CPU (issue 21).

Profiles MobileNetV2 on this machine as ``adaptive profile model --row-fractions`` does (per-block
times in forward passes; the row-efficiency curve fitted on parts of single blocks and of runs of
three at fractions 0.125-0.75),
then times real parts of longer runs of blocks, which the fit never saw: the accelerator's top
band (with its halo) and the edge's bottom band, each as ``adaptive.nn.spatial.run_rows`` computes
it, at fractions 0.25, 0.5 and 0.75 of the section's output rows. The model's prediction of a part
is ``SectionCosts.config`` on the fitted profile: ``Σ f_i + (t_i − f_i)·h(ρ_i)`` over its blocks
(``f_i``: the fixed cost of block ``i``'s operators, ``ρ_i``: the share of its rows the part computes).

Prints each part's measured and predicted time and the MAPE (target ≤ 10%), beside the MAPE of
``h(ρ) = ρ`` (time proportional to rows, no fixed cost) to show what the profiled costs buy, and
the MAPE of the whole sections against the profile's block sums: the layer model's own error in
the same run, a floor for the parts'. One torch thread.

Usage: python benchmarks/bench_lop_parts.py [--repeats 21] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time

import numpy as np
import torch

from adaptive.model.lop import SectionCosts, section_bands
from adaptive.model.profiles import model_from_dict, resolve_device
from adaptive.nn.partition import partition
from adaptive.nn.profiler import (
    TimingConfig,
    machine_description,
    model_profile_doc,
    profile_partition,
    profile_row_efficiency,
    time_parts,
)
from adaptive.nn.spatial import run_rows
from adaptive.nn.zoo import build_model, default_input_shape

SECTIONS = [(0, 4), (0, 7), (4, 11), (7, 14), (11, 19), (14, 19), (0, 19)]
FRACTIONS = (0.25, 0.5, 0.75)


def _row_overhead(part, repeats: int) -> float:
    """Median over SECTIONS of a whole section run by ``run_rows`` / by its traced blocks (interleaved)."""
    torch.manual_seed(2)
    acts = [a.clone() for a in part.activations(torch.randn(part.input_shape))]
    ratios = []
    with torch.inference_mode():
        for start, stop in SECTIONS:
            x, height_out = acts[start], int(acts[stop].shape[2])
            calls = (functools.partial(part.segment(start, stop), x),
                     functools.partial(run_rows, part, start, stop, x, (0, int(x.shape[2])), (0, height_out)))
            ms = np.empty((repeats, 2))
            for r in range(3 + repeats):
                for k, fn in enumerate(calls):
                    t0 = time.perf_counter_ns()
                    fn()
                    if r >= 3:
                        ms[r - 3, k] = time.perf_counter_ns() - t0
            ratios.append(float(np.median(ms[:, 1]) / np.median(ms[:, 0])))
    return float(np.median(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    name = "mobilenet_v2"
    part = partition(build_model(name), default_input_shape(name), name=name, granularity="block")
    cfg = TimingConfig(repeats=args.repeats)
    block_ms, iqr, _segs, _seg_ms, fit = profile_partition(part, cfg, progress=False)
    rows_fit = profile_row_efficiency(part, cfg)
    doc = model_profile_doc(part, "host", block_ms, iqr, fit, cfg)
    doc["row_efficiency"] = {"host": [list(p) for p in rows_fit.points]}
    doc["row_op_ms"] = {"host": rows_fit.op_ms}
    profile = model_from_dict(doc, "bench")
    host = dataclasses.replace(resolve_device("raspberry-pi-4"), name="host", accelerator="cpu")
    costs = SectionCosts(profile, [host])
    linear = SectionCosts(dataclasses.replace(profile, row_efficiency={"host": ((1.0, 1.0),)},
                                              row_op_ms={"host": 0.0}), [host])

    jobs, predicted, proportional = [], [], []
    for start, stop in SECTIONS:
        for f in FRACTIONS:  # the accelerator's top band and the edge's rest, as the model cuts them
            for rows, side in zip(section_bands(costs.heights[stop], f, 1), ("acc", "edge"), strict=True):
                c, lin = costs.config(start, stop, f, 1), linear.config(start, stop, f, 1)
                jobs.append((start, stop, rows))
                pick = (lambda x: x.part_ms[0, 0]) if side == "acc" else (lambda x: x.edge_ms[0])
                predicted.append(float(pick(c)))
                proportional.append(float(pick(lin)))
    whole = [(start, stop, (0, costs.heights[stop])) for start, stop in SECTIONS]
    torch.manual_seed(1)
    timed, _ = time_parts(part, jobs + whole, torch.randn(part.input_shape), cfg)
    measured, whole_ms = timed[: len(jobs)], timed[len(jobs) :]
    whole_pred = np.array([block_ms[s:e].sum() for s, e in SECTIONS])
    mape_whole = float(np.mean(np.abs(whole_pred - whole_ms) / whole_ms) * 100)
    overhead = _row_overhead(part, args.repeats)
    predicted_a, proportional_a = np.array(predicted), np.array(proportional)
    mape = float(np.mean(np.abs(predicted_a - measured) / measured) * 100)
    mape_lin = float(np.mean(np.abs(proportional_a - measured) / measured) * 100)
    result = {"machine": machine_description(), "curve": rows_fit.points, "op_ms": rows_fit.op_ms,
              "curve_fit_mape_pct": rows_fit.mape_fitted_pct, "mape_pct": mape,
              "mape_proportional_pct": mape_lin, "mape_whole_sections_pct": mape_whole,
              "row_interpreter_over_traced": overhead,
              "parts": [{"blocks": [s, e], "rows": list(rows), "measured_ms": float(m), "predicted_ms": p}
                        for (s, e, rows), m, p in zip(jobs, measured, predicted, strict=True)]}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"{name} parts on {result['machine']}, 1 thread, median of {args.repeats}")
    print(f"part cost: {rows_fit.op_ms:.4f} ms per operator + curve "
          + ", ".join(f"{a:g}->{b:.3f}" for a, b in rows_fit.points)
          + f" (fitted on {len(rows_fit.parts)} other parts: MAPE {rows_fit.mape_fitted_pct:.1f}%)")
    print(f"{'blocks':>9}{'rows':>11}{'measured ms':>13}{'model ms':>10}{'error':>8}")
    for (s, e, rows), m, p in zip(jobs, measured, predicted, strict=True):
        print(f"{f'{s}-{e}':>9}{f'{rows[0]}-{rows[1]}':>11}{m:>13.2f}{p:>10.2f}{(p - m) / m:>8.1%}")
    print(f"MAPE {mape:.1f}% over {len(jobs)} parts (target <= 10%); time proportional to rows: "
          f"{mape_lin:.1f}%")
    print(f"the same sections whole (all rows) against the profile's block sums: MAPE {mape_whole:.1f}% "
          "(the layer model's own error in this run)")
    print(f"a whole section run by run_rows takes {overhead:.2f}x its traced blocks "
          "(median over the sections)")


if __name__ == "__main__":
    main()
