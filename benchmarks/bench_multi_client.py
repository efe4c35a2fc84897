"""Multi-client speed: env steps/s against CartPole-v1, coordinated-greedy time, training time.

Side by side in one process, alternating in chunks so machine noise hits all alike:
- CartPole-v1 with random actions (the usual reference);
- adaptive/MultiClient-v0 (one episode per env object), a random valid plan per client, with resets;
- MultiClientVecEnv with E episodes stepped in one numpy call (E = 64, 256, 1024), same actions, whole
  rounds of episodes (each includes one reset of them all); steps/s counts episode steps (E per call).
Then the coordinated best-response heuristic's decision time for 8 clients on a 3-accelerator chain, and, with
--train-steps, the wall time of `adaptive train --env adaptive/MultiClient-v0` with the shipped
hyperparameters (evaluations included), beside the env's own rate from the same run.

Usage: python benchmarks/bench_multi_client.py [--seconds 3] [--repeats 3] [--train-steps 0] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: the target is per core
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import gymnasium as gym
import numpy as np

import envs  # noqa: F401
from envs.multi_client_vec import MultiClientVecEnv

MULTI = "adaptive/MultiClient-v0"


def cartpole(env: gym.Env, seconds: float, rng: np.random.Generator) -> tuple[int, float]:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(500):
            _, _, term, trunc, _ = env.step(int(rng.integers(2)))
            if term or trunc:
                env.reset()
        n += 500
    return n, time.perf_counter() - t0


def single(env: gym.Env, seconds: float, rng: np.random.Generator) -> tuple[int, float]:
    u = env.unwrapped
    K = u.num_clients
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(100):
            mask = u.action_masks().reshape(K, -1)
            action = [int(rng.choice(np.flatnonzero(m))) for m in mask]
            _, _, _, trunc, _ = env.step(action)
            if trunc:
                env.reset()
        n += 100
    return n, time.perf_counter() - t0


def batched(venv: MultiClientVecEnv, seconds: float, rng: np.random.Generator) -> tuple[int, float]:
    """One whole round of episodes, whatever ``seconds``.

    ``max_steps`` calls include exactly one reset of them all; timing a slice instead would count
    that reset, or not, by chance.
    """
    E, K, P = venv.num_envs, venv.core.num_clients, venv.core.num_plans
    calls = venv.config.max_steps
    t0 = time.perf_counter()
    for _ in range(calls):
        mask = venv.action_masks().reshape(E, K, P)
        scores = np.where(mask, rng.random((E, K, P)), -1.0)  # a random valid plan per client
        venv.step_async(scores.argmax(axis=2))
        venv.step_wait()
    return calls * E, time.perf_counter() - t0


def coordinated_ms(steps: int = 200) -> tuple[float, float, int]:
    from agents.multi_policies import Coordinated

    env = gym.make("adaptive/MultiClient-v0",
                   devices=["raspberry-pi-4", "jetson-nano", "jetson-orin-nano", "jetson-agx-orin"],
                   max_clients=8, min_clients=8,
                   cpu_load={"mean": [0.2, 0.2, 0.2, 0.2], "sd": 0.15, "reversion": 0.026})
    policy = Coordinated(env)
    obs, _ = env.reset(seed=0)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        action, _ = policy.predict(obs, action_masks=env.unwrapped.action_masks())
        times.append(time.perf_counter() - t0)
        obs, *_ = env.step(action)
    return 1e3 * float(np.median(times)), 1e3 * float(np.percentile(times, 90)), env.unwrapped.num_plans


def train(steps: int) -> dict[str, float]:
    """`adaptive train --env adaptive/MultiClient-v0` for `steps` steps, shipped hyperparameters."""
    import tempfile

    from agents.ppo import load_hyperparams
    from agents.ppo import train as train_ppo
    from envs.config import MultiClientConfig

    with tempfile.TemporaryDirectory() as out:
        result = train_ppo(MultiClientConfig.load(), out, hyperparams=load_hyperparams(env_id=MULTI),
                           timesteps=steps, progress=False)
    return {"train_steps": steps, "train_wall_s": result.wall_s, "train_steps_per_s": steps / result.wall_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per contender per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=0,
                        help="also time MaskablePPO for this many steps")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cp = gym.make("CartPole-v1")
    cp.reset(seed=0)
    one = gym.make("adaptive/MultiClient-v0")
    one.reset(seed=0)
    contenders = {"CartPole-v1": lambda s: cartpole(cp, s, rng),
                  "MultiClient-v0, one env": lambda s: single(one, s, rng)}
    for E in (64, 256, 1024):
        venv = MultiClientVecEnv(E, seed=E)
        venv.reset()
        contenders[f"MultiClientVecEnv, {E} episodes"] = lambda s, v=venv: batched(v, s, rng)
    rates: dict[str, list[float]] = {k: [] for k in contenders}
    ratios: dict[str, list[float]] = {k: [] for k in contenders}
    chunk = args.seconds / 3
    for _ in range(args.repeats):
        spent = {k: [0, 0.0] for k in contenders}
        for _ in range(3):
            for name, fn in contenders.items():
                n, s = fn(chunk)
                spent[name][0] += n
                spent[name][1] += s
        ref = spent["CartPole-v1"][0] / spent["CartPole-v1"][1]
        for name, (n, s) in spent.items():
            rates[name].append(n / s)
            ratios[name].append(n / s / ref)
    out: dict[str, float] = {}
    for name in contenders:
        out[f"{name} steps/s"] = statistics.median(rates[name])
        out[f"{name} / CartPole"] = statistics.median(ratios[name])
    median, p90, plans = coordinated_ms()
    out.update({"coordinated 8 clients x 3 accelerators median ms": median, "p90 ms": p90, "plans": plans})
    if args.train_steps:
        out.update(train(args.train_steps))
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"median of {args.repeats} repeats, {args.seconds:g} s each, one process, one thread")
    for name in contenders:
        rate, ratio = out[f"{name} steps/s"], out[f"{name} / CartPole"]
        print(f"  {name:<34}{rate:>12,.0f} steps/s  {ratio:>6.2f}x CartPole")
    print(f"  coordinated, 8 clients x 3 accelerators ({plans} plans): median {median:.1f} ms, "
          f"p90 {p90:.1f} ms (target <= 10 ms)")
    if args.train_steps:
        print(f"  adaptive train (shipped hyperparameters): {args.train_steps:,} steps in "
              f"{out['train_wall_s']:.0f} s ({out['train_steps_per_s']:,.0f} steps/s)")


if __name__ == "__main__":
    main()
