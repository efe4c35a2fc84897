"""Parallel sections against layer plans only, on held-out real traces (issue 21).

The default environment (MobileNetV2, Raspberry Pi 4 -> Jetson Nano -> Jetson AGX Orin) twice, on
the same seeded episodes of the test files of envs/data/trace_split.json (files never used in
training, read from the team's shared trace folder): once with layer plans only (``parallel:
false``), once with candidates that may carry a parallel section (``parallel: true``, Intra-DP's
local operation parallelism). Each policy's mean latency per request in both, and the ratio.

Usage: python benchmarks/report_lop.py [--shared ../shared/traces] [--episodes-per-trace 3]
           [--policies greedy,oracle,static-hindsight,device-only,offload] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

import gymnasium as gym

import envs  # noqa: F401
from agents.evaluate import evaluate
from agents.oracle import OraclePolicy
from agents.policies import make_heuristic
from envs.config import EnvConfig


def run(parallel: bool, traces: list[str], per_trace: int, seed: int, names: list[str]) -> dict[str, float]:
    """Mean latency per request of each policy, ms."""
    cfg = EnvConfig.from_dict({**EnvConfig.load().to_dict(), "synthetic_share": 0.0, "traces": traces,
                               "parallel": parallel}, "report_lop")

    def make() -> Any:
        return gym.make("adaptive/SplitInference-v0", config=cfg)

    trace_names = make().unwrapped.trace_names
    seeds = [seed + i for i in range(len(trace_names) * per_trace)]
    options = [{"trace": trace_names[i // per_trace]} for i in range(len(seeds))]
    policies: dict[str, Any] = {n: (lambda env, n=n: make_heuristic(n, env)) for n in names if n != "oracle"}
    if "oracle" in names:
        policies["oracle"] = lambda env: OraclePolicy()
    summaries, _ = evaluate(make, policies, seeds, options)
    return {s.policy: s.mean_latency_ms for s in summaries}


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(here.parent / "shared" / "traces"))
    parser.add_argument("--episodes-per-trace", type=int, default=3)
    parser.add_argument("--seed", type=int, default=20_000)
    parser.add_argument("--policies", default="greedy,oracle,static-hindsight,device-only,offload")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    start = time.time()
    split = json.loads(resources.files("envs.data").joinpath("trace_split.json").read_text())
    files = [str(Path(args.shared) / f) for f in split["test"]]
    missing = [f for f in files if not Path(f).exists()]
    if missing:
        raise SystemExit(f"test traces not found under {args.shared} (first: {missing[0]})")
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    layer = run(False, files, args.episodes_per_trace, args.seed, names)
    lop = run(True, files, args.episodes_per_trace, args.seed, names)
    episodes = len(files) * args.episodes_per_trace
    if args.json:
        print(json.dumps({"episodes": episodes, "layer_ms": layer, "sections_ms": lop}, indent=1))
        return
    print(f"Held-out test traces: {len(files)} files, {episodes} episodes, default env; mean latency per "
          "request, ms")
    print(f"{'policy':<20}{'layer plans':>13}{'with sections':>15}{'ratio':>8}")
    for name in layer:
        print(f"{name:<20}{layer[name]:>13.1f}{lop[name]:>15.1f}{lop[name] / layer[name]:>8.3f}")
    print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
