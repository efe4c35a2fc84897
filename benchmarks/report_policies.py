"""Policy report: every policy vs the hindsight oracle on held-out real traces.

The trace split is by file (envs/data/trace_split.json: every 4th file of each source, sorted, is a
test file). The shipped PPO policy was trained on training files only; this script evaluates on the
test files from the team's shared trace folder (one trace pinned per episode, several offsets), and
on the shipped training traces for comparison. Two diagnostics bound what the observation allows:
greedy on the fresh, exact state, and greedy on the exact state one step late.

Usage: python benchmarks/report_policies.py [--shared ../shared/traces]
           [--policy agents/trained/ppo_default.zip] [--episodes-per-trace 5] [--out docs/policies.md]
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import envs  # noqa: F401
from agents.evaluate import evaluate
from agents.oracle import OraclePolicy, step_costs
from agents.policies import make_heuristic
from agents.ppo import load_actor
from envs.config import EnvConfig

HEURISTICS = ("greedy", "hysteresis", "static-hindsight", "static-mean", "device-only", "offload")


class ClairvoyantGreedy:
    """Diagnostic: per-step argmin of the true cost, ``lag`` steps late (0: fresh)."""

    def __init__(self, lag: int) -> None:
        self.lag = lag
        self.name = "greedy, exact state" + ("" if lag == 0 else f", {lag} step late")

    def begin_episode(self, env: Any) -> None:
        """Read the episode's true costs."""
        self.cost = step_costs(env, False)
        self.t = 0

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None,
                deterministic: bool = True, action_masks: Any = None) -> tuple[int, Any]:
        """Per-step argmin of the (possibly late) true cost."""
        row = self.cost[max(self.t - self.lag, 0)]
        if action_masks is not None:
            row = np.where(action_masks, row, np.inf)
        self.t += 1
        return int(np.argmin(row)), state


def run(config: EnvConfig, ppo: Any, traces: list[str] | None, per_trace: int, seed: int) -> tuple[list, int]:
    overrides: dict[str, Any] = {"synthetic_share": 0.0}
    if traces:
        overrides["traces"] = tuple(traces)
    cfg = EnvConfig.from_dict({**config.to_dict(), **overrides}, "report")

    def make() -> Any:
        return gym.make("adaptive/SplitInference-v0", config=cfg)

    names = make().unwrapped.trace_names
    seeds = [seed + i for i in range(len(names) * per_trace)]
    options = [{"trace": names[i // per_trace]} for i in range(len(seeds))]
    policies: dict[str, Any] = {"ppo": lambda env: ppo}
    policies.update({n: (lambda env, n=n: make_heuristic(n, env)) for n in HEURISTICS})
    policies["greedy, exact state"] = lambda env: ClairvoyantGreedy(0)
    policies["greedy, exact state, 1 step late"] = lambda env: ClairvoyantGreedy(1)
    policies["oracle"] = lambda env: OraclePolicy()
    summaries, _ = evaluate(make, policies, seeds, options)
    return summaries, len(seeds)


def table(summaries: list, episodes: int, title: str, seconds: float) -> list[str]:
    lines = [f"### {title} ({episodes} episodes of {seconds:g} s)", "",
             "| policy | mean latency, ms | p95, ms | energy, J/request | switches/episode | vs oracle |",
             "|---|---:|---:|---:|---:|---:|"]
    for s in summaries:
        lines.append(f"| {s.policy} | {s.mean_latency_ms:.1f} | {s.p95_latency_ms:.1f} "
                     f"| {s.mean_energy_j:.3f} | {s.switches_per_episode:.1f} | {s.ratio_to_oracle:.3f} |")
    return [*lines, ""]


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(here.parent / "shared" / "traces"))
    parser.add_argument("--policy", default=str(here / "agents" / "trained" / "ppo_default.zip"))
    parser.add_argument("--episodes-per-trace", type=int, default=5)
    parser.add_argument("--seed", type=int, default=20_000)
    parser.add_argument("--out")
    args = parser.parse_args()
    start = time.time()
    model, spec = load_actor(args.policy)
    config = EnvConfig.from_dict(spec.env, "policy sidecar")
    split = json.loads(resources.files("envs.data").joinpath("trace_split.json").read_text())
    test_files = [str(Path(args.shared) / f) for f in split["test"]]
    missing = [f for f in test_files if not Path(f).exists()]
    if missing:
        raise SystemExit(f"test traces not found under {args.shared} (first: {missing[0]})")
    test, n_test = run(config, model, test_files, args.episodes_per_trace, args.seed)
    train, n_train = run(config, model, None, 2, args.seed + 50_000)
    seconds = config.max_steps * config.dt_s
    title = f"Held-out test traces: {len(test_files)} files never used in training"
    lines = table(test, n_test, title, seconds)
    lines += table(train, n_train, "Training traces (shipped), other offsets and seeds", seconds)
    lines.append(f"_`python benchmarks/report_policies.py` on {time.strftime('%Y-%m-%d')}, "
                 f"{time.time() - start:.0f} s; policy {Path(args.policy).name}: {spec.notes}._")
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
