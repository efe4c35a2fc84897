"""Multi-client report: PPO and the heuristics on held-out real traces, and the Fig. 13b direction.

adaptive/MultiClient-v0 with its default configuration (four Raspberry Pi 4 client slots sharing a
Jetson Nano), each client's uplink on a held-out test trace (envs/data/trace_split.json, from the
team's shared trace folder) at its own offset. Every policy runs the same seeded episodes. Two
diagnostics separate information from optimisation: coordinated best responses on the exact current
state (no telemetry age, no noise), and with a longer horizon. Then seed 000 Fig. 13b: the share of
the model run on the edge devices as clients are added at a fixed rate and bandwidth.

Usage: python benchmarks/report_multi_client.py [--policy RUN/policy.zip] [--shared ../shared/traces]
           [--episodes-per-trace 1] [--out FILE]
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
from adaptive.model.shared_chain import ClusterState
from agents.evaluate import evaluate
from agents.multi_policies import Coordinated, MultiActor, make_multi_heuristic
from agents.ppo import load_actor
from envs.config import MultiClientConfig

HEURISTICS = ("greedy", "hysteresis", "coordinated", "static-hindsight", "device-only", "clairvoyant")


class ExactCoordinated(Coordinated):
    """Diagnostic: ``coordinated`` on the true current state instead of the observed one."""

    def act(self, obs: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """Best responses from the true state, held for the horizon."""
        t = int(self.env.core.t[0])
        state = ClusterState(*(x[0] for x in self.env.core.state))
        return self.best_response(self.choose(self.seen(obs), mask), state,
                                  self.true_steps(t, t + 1) * self.horizon, mask)


def held_out(config: MultiClientConfig, shared: Path, per_trace: int, ppo: Any,
             seed: int) -> tuple[list, int]:
    split = json.loads(resources.files("envs.data").joinpath("trace_split.json").read_text())
    files = [str(shared / f) for f in split["test"]]
    missing = [f for f in files if not Path(f).exists()]
    if missing:
        raise SystemExit(f"test traces not found under {shared} (first: {missing[0]})")
    cfg = MultiClientConfig.from_dict({**config.to_dict(), "synthetic_share": 0.0, "traces": tuple(files)})

    def make() -> Any:
        return gym.make("adaptive/MultiClient-v0", config=cfg)

    names = make().unwrapped.trace_names
    seeds = [seed + i for i in range(len(names) * per_trace)]
    options = [{"trace": names[i // per_trace]} for i in range(len(seeds))]
    policies: dict[str, Any] = {}
    if ppo is not None:
        net, spec = ppo
        policies["ppo"] = lambda env: MultiActor(net, spec.observation.num_clients)
    policies.update({n: (lambda env, n=n: make_multi_heuristic(n, env)) for n in HEURISTICS})
    policies["coordinated, exact state"] = lambda env: ExactCoordinated(env)
    policies["coordinated, horizon 4"] = lambda env: Coordinated(env, horizon=4)
    summaries, _ = evaluate(make, policies, seeds, options)
    return summaries, len(seeds)


def direction(rate: float = 3.0, bandwidth: float = 20.0,
              steps: int = 80) -> list[tuple[int, float, float, float]]:
    """Per client count: mean edge share of the model, mean latency and drop rate under ``coordinated``."""
    env = gym.make("adaptive/MultiClient-v0", max_steps=steps, max_clients=8, bw_noise=0.0, load_noise=0.0,
                   cpu_load={"mean": [0.0, 0.0], "sd": 0.0, "reversion": 0.1}).unwrapped
    policy = Coordinated(env)
    blocks = env.chain.chains[0].num_blocks
    share_of = env.candidates.plans.splits[:, 0] / blocks
    rows = []
    for clients in (1, 2, 3, 4, 6, 8):
        obs, _ = env.reset(seed=0, options={"clients": clients, "rate_rps": rate, "links": [bandwidth] * 8})
        shares, served, latency, dropped, offered = [], 0.0, 0.0, 0.0, 0.0
        for _ in range(steps):
            action, _ = policy.predict(obs, action_masks=env.action_masks())
            obs, _, _, _, info = env.step(action)
            shares += [share_of[p] for p, a in zip(info["plan"], info["active"], strict=True) if a]
            if info["frames"]:
                served += info["frames"]
                latency += info["latency_ms"] * info["frames"]
            dropped += info["dropped"]
            offered += info["offered"]
        rows.append((clients, float(np.mean(shares)), latency / served, dropped / offered))
    return rows


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", help="a PPO run's policy.zip trained on adaptive/MultiClient-v0")
    parser.add_argument("--shared", default=str(here.parent / "shared" / "traces"))
    parser.add_argument("--episodes-per-trace", type=int, default=1)
    parser.add_argument("--seed", type=int, default=30_000)
    parser.add_argument("--out")
    args = parser.parse_args()
    start = time.time()
    ppo = load_actor(args.policy) if args.policy else None
    config = MultiClientConfig.from_dict(ppo[1].env, "policy sidecar") if ppo else MultiClientConfig.load()
    summaries, episodes = held_out(config, Path(args.shared), args.episodes_per_trace, ppo, args.seed)
    lines = [f"### Held-out test traces, {config.max_clients} client slots on "
             f"{' -> '.join(config.devices)} ({episodes} episodes of {config.max_steps * config.dt_s:g} s)",
             "",
             "| policy | mean latency, ms | p95, ms | drop rate | mean return | vs clairvoyant |",
             "|---|---:|---:|---:|---:|---:|"]
    for s in summaries:
        lines.append(f"| {s.policy} | {s.mean_latency_ms:.1f} | {s.p95_latency_ms:.1f} | "
                     f"{100 * s.drop_rate:.2f}% | {s.mean_return:.1f} | {s.ratio_to_oracle:.3f} |")
    lines += ["", "### Seed 000 Fig. 13b: clients added on one Jetson Nano (coordinated; 3 frames/s each, "
              "20 Mbit/s uplinks)", "",
              "| clients | share of the model on the edge | mean latency, ms | drop rate |",
              "|---:|---:|---:|---:|"]
    for clients, share, latency, drops in direction():
        lines.append(f"| {clients} | {share:.2f} | {latency:.1f} | {100 * drops:.1f}% |")
    notes = ppo[1].notes if ppo else "no PPO policy given"
    lines += ["", f"_`python benchmarks/report_multi_client.py` on {time.strftime('%Y-%m-%d')}, "
              f"{time.time() - start:.0f} s; {notes}._"]
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
