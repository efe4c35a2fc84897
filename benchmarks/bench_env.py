"""Environment speed: steps per second with action masks, single process, against CartPole-v1.

Side by side, alternating every 4,000 steps, median of --repeats: adaptive/SplitInference-v0 with
a uniformly random *valid* action from action_masks() every step, including the resets (TimeLimit
of 800 steps); the same without masks; and CartPole-v1 with random actions (the usual reference).
Then SubprocVecEnv with 2 workers for the multi-core path. The env is the default one, whose
candidates may carry parallel sections; ``--layers`` adds the same env with layer plans only
(``parallel: false``), masked, to the alternation.

Usage: python benchmarks/bench_env.py [--steps 100000] [--repeats 5] [--layers] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import gymnasium as gym
import numpy as np

import envs  # noqa: F401


def run(env: gym.Env, steps: int, masked: bool, seed: int = 0) -> float:
    """Seconds for ``steps`` steps (resets included), continuing the env's current episode."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, 1 << 30, steps)
    n = env.action_space.n
    unwrapped = env.unwrapped
    t0 = time.perf_counter()
    for i in range(steps):
        if masked:
            valid = np.flatnonzero(unwrapped.action_masks())
            action = int(valid[draws[i] % len(valid)])
        else:
            action = int(draws[i] % n)
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return time.perf_counter() - t0


def vec_rate(steps: int) -> float:
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    venv = make_vec_env("envs:adaptive/SplitInference-v0", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv)
    try:
        venv.reset()
        t0 = time.perf_counter()
        for _ in range(steps // 2):
            masks = np.stack(venv.env_method("action_masks"))
            actions = np.array([int(np.flatnonzero(m)[0]) for m in masks])
            venv.step(actions)
        return steps / (time.perf_counter() - t0)
    finally:
        venv.close()


def reset_ms(env: gym.Env, n: int = 10) -> float:
    """Median time of ``n`` resets (each precomputes a whole episode), ms."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        env.reset(seed=10_000 + i)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", action="store_true", help="also the env with layer plans only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    split = gym.make("adaptive/SplitInference-v0")
    cartpole = gym.make("CartPole-v1")
    runs = {"split, masked": (split, True), "split, unmasked": (split, False),
            "CartPole-v1": (cartpole, False)}
    if args.layers:
        runs["split, layer plans, masked"] = (gym.make("adaptive/SplitInference-v0", parallel=False), True)
    for env, _ in runs.values():
        env.reset(seed=0)
    chunk = 4_000  # the three alternate every few thousand steps, so machine noise hits all alike
    rows: dict[str, list[float]] = {k: [] for k in runs}
    ratios, layer_ratios = [], []
    for r in range(args.repeats):
        spent = dict.fromkeys(runs, 0.0)
        for c in range(max(args.steps // chunk, 1)):
            for name, (env, masked) in runs.items():
                spent[name] += run(env, chunk, masked, r * 1000 + c)
        done = max(args.steps // chunk, 1) * chunk
        for name in runs:
            rows[name].append(done / spent[name])
        ratios.append(spent["CartPole-v1"] / spent["split, masked"])
        if args.layers:
            layer_ratios.append(spent["CartPole-v1"] / spent["split, layer plans, masked"])
    out = {k: statistics.median(v) for k, v in rows.items()}
    ratio = statistics.median(ratios)
    out["split, SubprocVecEnv x2 (masks via env_method)"] = vec_rate(args.steps // 5)
    if args.json:
        extra = {"layers_masked_vs_cartpole": statistics.median(layer_ratios)} if layer_ratios else {}
        print(json.dumps({**out, "masked_vs_cartpole": ratio, **extra}, indent=1))
        return
    u = split.unwrapped
    print(f"{u.config.model_profile} on {' -> '.join(u.config.devices)}, {u.num_plans} plans, "
          f"{u.obs_spec.size}-dim observation; median of {args.repeats} x {args.steps} steps")
    for name, (env, _) in runs.items():
        if name.endswith("masked") and "unmasked" not in name:
            print(f"  {name}: {env.unwrapped.num_plans} plans, reset {reset_ms(env):.1f} ms (median of 10)")
    for k, v in out.items():
        print(f"  {k:<48}{v:>12,.0f} steps/s")
    print(f"  split, masked / CartPole-v1, median of the repeats' ratios  {ratio:.2f}x (target >= 0.75x)")
    if layer_ratios:
        print(f"  split, layer plans, masked / CartPole-v1, median             "
              f"{statistics.median(layer_ratios):.2f}x")


if __name__ == "__main__":
    main()
