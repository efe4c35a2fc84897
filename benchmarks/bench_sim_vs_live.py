"""Simulator vs live system on the demo's trace window: does the env rank policies as reality does?

Live: ``adaptive demo`` as a user runs it (``--no-view``), ``--runs`` times with the shipped PPO
policy and once per other adaptive policy (``--also``, default greedy). Every run measures the
policy with parallel sections (``ppo``), the same kind of policy on layer plans only (``ppo-layers``:
the demo's ``adaptive-layers`` phase), the static baselines (``static-hindsight``, ``static-mean``)
and device-only on the same window. The adaptive phases are two-level control: the ``pi`` decides
every request from the controller's rule (the PPO actor itself, or a table for greedy).

Sim: ``adaptive/SplitInference-v0`` replaying the same uplink series (``uplink.csv`` the demo
wrote: the trace scaled as the ``pi`` replays it; a 1 Gbit/s LAN behind; no background load, one
client), with its default decision period and telemetry age, with parallel-section candidates
(``parallel: true``) for the policies with sections and without for the ``-layers`` ones and the
static phases, which run the very plans the demo ran; ``oracle`` and ``oracle-layers`` are the
hindsight bounds of the two. Each device's compute is scaled as
the controller calibrated it during the runs (median): one machine cannot emulate a device faster
than itself, so the emulated AGX Orin runs at this host's speed, about 10x slower than its
profile. The demo's client is closed-loop (one request at a time), so a phase's mean over requests
weights fast moments more than a mean over time; the sim's per-step costs are therefore replayed
as that client meets them: a request at time ``t`` runs the plan the policy chose for step
``t // dt_s`` and takes that step's true latency, and the next is sent after it returns (plus the
client's measured gap). Both means are
printed; the comparison uses the request mean.

Prints one table: per policy, the sim mean (requests and time), the live mean (median over runs,
with the range), their ratio, and whether the two rank the policies the same way; and the demo's
own figures: adaptive (PPO) / the better static baseline and / adaptive with layer plans only,
median over the PPO runs.

Usage: python benchmarks/bench_sim_vs_live.py [--runs 3] [--also greedy] [--duration 120]
           [--out runs/sim-vs-live] [--json]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from adaptive.model.plans import Plan

DEVICES = ["raspberry-pi-4", "jetson-nano", "jetson-agx-orin"]
STATICS = ("static-hindsight", "static-mean", "device-only")


def run_demo(policy: str, duration: float, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "adaptive", "demo", "--policy", policy, "--duration", f"{duration:g}",
           "--no-view", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration * 3 + 300)
    if proc.returncode != 0:
        raise SystemExit(f"demo failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    with (out / "requests.csv").open() as f:
        rows = list(csv.DictReader(f))
    summary["gaps_s"] = client_gaps(rows)
    return summary


def client_gaps(rows: list[dict[str, str]]) -> list[float]:
    """Time between one answer and the next send, s (the closed-loop client's own overhead)."""
    ok = sorted((float(r["sent_at"]), float(r["latency_ms"]) / 1e3) for r in rows if r["outcome"] == "ok")
    gaps = [b[0] - (a[0] + a[1]) for a, b in itertools.pairwise(ok)]
    return [g for g in gaps if 0 <= g < 0.5]


def closed_loop(latency_ms: np.ndarray, dt_s: float, gap_s: float) -> float:
    """Mean latency of a one-at-a-time client meeting the per-step latencies ``latency_ms``."""
    t, seen, end = 0.0, [], len(latency_ms) * dt_s
    while t < end:
        ms = float(latency_ms[int(t / dt_s)])
        seen.append(ms)
        t += ms / 1e3 + gap_s
    return float(np.mean(seen))


class Fixed:
    """A fixed plan (what a static phase of the demo ran), as a policy."""

    def __init__(self, action: int) -> None:
        self.action = action

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None,
                deterministic: bool = True, action_masks: Any = None) -> tuple[int, Any]:
        """The plan."""
        return self.action, state


def simulate(uplink_csv: str, window_s: float, gap_s: float, policies: list[str], fixed: dict[str, Any],
             scales: list[float]) -> dict[str, dict[str, float]]:
    """Per policy (and per static phase's plan), the sim's request and time means on the window."""
    from importlib import resources

    from agents.evaluate import run_episode
    from agents.oracle import OraclePolicy
    from agents.policies import make_heuristic
    from agents.ppo import load_actor
    from agents.wiring import replay_env

    envs = {parallel: replay_env("mobilenet_v2", DEVICES, uplink_csv, window_s, device_scales=scales,
                                 parallel=parallel) for parallel in (True, False)}
    out = {}
    for name in [*policies, *(f"{p}-layers" for p in policies), *fixed, "oracle", "oracle-layers"]:
        base, layers = name.removesuffix("-layers"), name.endswith("-layers") or name in fixed
        env, options = envs[not layers]
        dt, cands = env.unwrapped.config.dt_s, env.unwrapped.candidates
        if base == "ppo":
            zip_name = "ppo_layers.zip" if layers else "ppo_default.zip"
            policy, _ = load_actor(Path(str(resources.files("agents.trained").joinpath(zip_name))))
        elif base == "oracle":
            policy = OraclePolicy()
        elif name in fixed:
            plan = fixed[name]
            policy = Fixed(cands.index(Plan(tuple(plan["splits"]), tuple(c for c in plan["codecs"]))))
        else:
            policy = make_heuristic(base, env)
        result = run_episode(env, policy, 0, name, options)
        out[name] = {"requests": closed_loop(result.latency_ms, dt, gap_s),
                     "time": float(result.latency_ms.mean())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="demo runs with the shipped PPO (default 3)")
    parser.add_argument("--also", default="greedy", help="other adaptive policies, one run each")
    parser.add_argument("--duration", type=float, default=120.0, help="demo --duration (default 120)")
    parser.add_argument("--out", default="runs/sim-vs-live")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    start = time.time()
    others = [p for p in args.also.split(",") if p]
    live: dict[str, list[float]] = {}
    ratios, layer_ratios, gaps, uplink, scales = [], [], [], None, []
    plans: dict[str, Any] = {}  # the plan each static phase ran
    for policy, runs in [("ppo", args.runs), *((p, 1) for p in others)]:
        for k in range(runs):
            summary = run_demo(policy, args.duration, out / f"{policy}-{k + 1}")
            uplink = str(out / f"{policy}-{k + 1}" / "uplink.csv")
            gaps += summary["gaps_s"]
            scales.append(summary["device_scales"])
            for phase in summary["phases"]:
                name = {"adaptive": policy, "adaptive-layers": f"{policy}-layers"}.get(phase["phase"],
                                                                                      phase["phase"])
                if "plan" in phase:
                    plans.setdefault(name, phase["plan"])
                    if plans[name] != phase["plan"]:
                        raise SystemExit(f"{name} ran {plans[name]} in one run, {phase['plan']} in another")
                live.setdefault(name, []).append(phase["mean_ms"])
            if policy == "ppo":
                ratios.append(summary["adaptive_vs_better_static"])
                layer_ratios.append(summary["adaptive_vs_layers"])
            print(f"{policy} run {k + 1}: " + ", ".join(f"{p['phase']} {p['mean_ms']:.1f} ms"
                                                        for p in summary["phases"]), flush=True)
    gap = statistics.median(gaps) if gaps else 0.0
    measured = [round(statistics.median(s[i] for s in scales), 3) for i in range(len(DEVICES))]
    sim = simulate(uplink, args.duration / 3, gap, ["ppo", *others], plans, measured)
    names = [n for p in ["ppo", *others] for n in (p, f"{p}-layers") if n in live]
    names += [n for n in STATICS if n in live]
    live_mean = {n: statistics.median(live[n]) for n in names}
    rank_sim = sorted(names, key=lambda n: sim[n]["requests"])
    rank_live = sorted(names, key=lambda n: live_mean[n])
    result = {"machine": "see docs/benchmarks.md", "duration_s": args.duration, "client_gap_s": gap,
              "device_scales": measured,
              "sim": sim, "live": live, "live_median": live_mean, "rank_sim": rank_sim,
              "rank_live": rank_live,
              "same_ranking": rank_sim == rank_live, "ppo_vs_better_static": ratios,
              "ppo_vs_better_static_median": statistics.median(ratios) if ratios else None,
              "ppo_vs_layers": layer_ratios,
              "ppo_vs_layers_median": statistics.median(layer_ratios) if layer_ratios else None,
              "wall_s": round(time.time() - start, 1)}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"\nthe demo's window ({args.duration / 3:.0f} s of its trace), closed-loop client "
          f"(gap {1e3 * gap:.1f} ms), device speeds as calibrated live {measured}; "
          f"sim oracle {sim['oracle']['requests']:.1f} ms per request "
          f"({sim['oracle-layers']['requests']:.1f} with layer plans only)")
    print(f"{'policy':<18}{'sim, requests':>14}{'sim, time':>11}{'live, median':>13}{'live range':>16}"
          f"{'sim/live':>10}")
    for n in names:
        lo, hi = min(live[n]), max(live[n])
        print(f"{n:<18}{sim[n]['requests']:>14.1f}{sim[n]['time']:>11.1f}{live_mean[n]:>13.1f}"
              f"{f'{lo:.0f}-{hi:.0f}':>16}{sim[n]['requests'] / live_mean[n]:>10.3f}")
    print(f"ranking, sim:  {' < '.join(rank_sim)}\nranking, live: {' < '.join(rank_live)}  "
          f"({'same' if result['same_ranking'] else 'DIFFERENT'})")
    if ratios:
        print(f"demo: adaptive (ppo) / better static baseline = {', '.join(f'{r:.3f}' for r in ratios)}; "
              f"median {result['ppo_vs_better_static_median']:.3f}")
        print(f"demo: adaptive (ppo) / adaptive with layer plans only = "
              f"{', '.join(f'{r:.3f}' for r in layer_ratios)}; median {result['ppo_vs_layers_median']:.3f}")
    print(f"{result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
