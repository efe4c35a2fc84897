"""Policies: the oracle is a lower bound, greedy is the per-step argmin, PPO trains and loads."""

from __future__ import annotations

import itertools
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

import envs
from agents.evaluate import evaluate, run_episode
from agents.oracle import OraclePolicy, hindsight_oracle, step_costs
from agents.policies import HeuristicPolicy, Policy, make_heuristic

HEURISTICS = ["device-only", "offload", "static-mean", "static-hindsight", "greedy", "hysteresis"]


class RandomPolicy:
    name = "random"

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def predict(self, observation, state=None, episode_start=None, deterministic=True, action_masks=None):
        return int(self.rng.choice(np.flatnonzero(action_masks))), state


@pytest.mark.parametrize("seed", range(4))
def test_oracle_dp_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    T, P = 5, 3
    stay = rng.uniform(0, 1, (T, P))
    move = stay + rng.uniform(0, 0.5, (T, P))
    initial = int(rng.integers(P))
    best = np.inf
    for seq in itertools.product(range(P), repeat=T):
        prev, cost = initial, 0.0
        for t, a in enumerate(seq):
            cost += stay[t, a] if a == prev else move[t, a]
            prev = a
        best = min(best, cost)
    actions, total = hindsight_oracle(stay, move, initial)
    assert total == pytest.approx(best)
    prev, replay = initial, 0.0
    for t, a in enumerate(actions):
        replay += stay[t, a] if a == prev else move[t, a]
        prev = a
    assert replay == pytest.approx(total)


@pytest.mark.parametrize("seed", range(6))
def test_oracle_is_at_or_below_every_policy_on_random_small_traces(seed):
    rng = np.random.default_rng(seed)
    overrides = {"max_steps": 30, "synthetic_share": 1.0, "switch_cost_ms": float(rng.uniform(0, 50)),
                 "bw_noise": float(rng.uniform(0, 0.3)), "staleness_steps": int(rng.integers(0, 3)),
                 "scaling": {"target_median_mbps": [1, 60]}}

    def make():
        return gym.make("adaptive/SplitInference-v0", **overrides)

    policies = {n: (lambda env, n=n: make_heuristic(n, env)) for n in HEURISTICS}
    policies["random"] = lambda env: RandomPolicy(seed)
    policies["oracle"] = lambda env: OraclePolicy()
    summaries, _episodes = evaluate(make, policies, seeds=[seed, seed + 100])
    oracle = {s.policy: s for s in summaries}["oracle"]
    for s in summaries:
        assert oracle.mean_return >= s.mean_return - 1e-9, s.policy
        assert oracle.mean_latency_ms <= s.mean_latency_ms + 1e-9, s.policy
        assert s.ratio_to_oracle >= 1 - 1e-12


def test_greedy_is_the_per_step_argmin_without_switch_cost_and_matches_the_oracle():
    env = gym.make("adaptive/SplitInference-v0", switch_cost_ms=0.0, bw_noise=0.0, load_noise=0.0,
                   staleness_steps=0, synthetic_share=0.0, max_steps=60)
    greedy = make_heuristic("greedy", env)
    result = run_episode(env, greedy, seed=11)
    stay = step_costs(env, switch=False)
    np.testing.assert_array_equal(result.actions, np.argmin(stay, axis=1))
    oracle = run_episode(env, OraclePolicy(), seed=11)
    assert result.latency_ms.mean() == pytest.approx(oracle.latency_ms.mean())


def test_static_hindsight_is_the_best_fixed_plan_of_the_episode():
    env = gym.make("adaptive/SplitInference-v0", synthetic_share=0.0, max_steps=120,
                   memory_used={"mean": 0.0, "sd": 0.0})
    for seed in (3, 4):
        hindsight = run_episode(env, make_heuristic("static-hindsight", env), seed=seed)
        lat, _energy, feasible = env.unwrapped.episode_costs()
        assert feasible.all()
        assert len(set(hindsight.actions.tolist())) == 1
        assert hindsight.latency_ms.mean() == pytest.approx(lat.mean(axis=0).min())
        mean = run_episode(env, make_heuristic("static-mean", env), seed=seed)
        assert hindsight.latency_ms.mean() <= mean.latency_ms.mean() + 1e-9
    assert type(make_heuristic("static", env)).__name__ == "StaticMean"


def test_hysteresis_switches_less_than_greedy():
    summaries, _ = evaluate(lambda: gym.make("adaptive/SplitInference-v0", synthetic_share=0.0),
                            {n: (lambda env, n=n: make_heuristic(n, env)) for n in ("greedy", "hysteresis")},
                            seeds=[1, 2, 3])
    by = {s.policy: s for s in summaries}
    assert by["hysteresis"].switches_per_episode < by["greedy"].switches_per_episode


def test_every_policy_follows_one_protocol():
    env = gym.make("adaptive/SplitInference-v0")
    for name in HEURISTICS:
        p = make_heuristic(name, env)
        assert isinstance(p, HeuristicPolicy) and isinstance(p, Policy)
    assert isinstance(OraclePolicy(), Policy)
    with pytest.raises(ValueError, match="unknown heuristic"):
        make_heuristic("psychic", env)


def test_ppo_smoke_run_saves_loads_and_predicts(tmp_path):
    from agents.ppo import load_actor, load_policy, train
    from envs.config import EnvConfig

    hp = {"n_envs": 2, "n_steps": 32, "batch_size": 32, "n_epochs": 1, "eval_freq": 64,
          "eval_episodes": 1, "policy_kwargs": {"net_arch": [16]}}
    result = train(EnvConfig.from_dict({"max_steps": 20}), tmp_path, hyperparams=hp, timesteps=128,
                   progress=False)
    for name in ("policy.zip", "policy.json", "policy.mlp.json", "best_model.zip", "config.yaml"):
        assert (tmp_path / name).exists(), name
    assert list((tmp_path / "tb").iterdir())
    model, spec = load_policy(result.policy_path)
    env = gym.make("adaptive/SplitInference-v0", max_steps=20)
    obs, _ = env.reset(seed=0)
    assert spec.candidates().to_json() == env.unwrapped.candidates.to_json()
    action, _ = model.predict(obs, action_masks=env.unwrapped.action_masks(), deterministic=True)
    assert env.action_space.contains(int(action))
    # the numpy actor written beside it computes the torch model's logits, so it acts as it does
    import torch

    actor, _ = load_actor(result.policy_path)
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (200, spec.observation.size)).astype(np.float32)
    with torch.no_grad():
        features = model.policy.extract_features(torch.as_tensor(obs), model.policy.pi_features_extractor)
        logits = model.policy.action_net(model.policy.mlp_extractor.forward_actor(features)).numpy()
    np.testing.assert_allclose(actor.logits(obs), logits, rtol=1e-5, atol=1e-5)
    for x, z in zip(obs, logits, strict=True):
        mask = rng.random(spec.observation.num_plans) < 0.6
        mask[0] = True
        top = np.sort(np.where(mask, z, -np.inf))[-2:]
        if top[1] - top[0] > 1e-4:  # not a tie within float32 rounding
            want = model.predict(x, action_masks=mask, deterministic=True)[0]
            assert actor.predict(x, action_masks=mask)[0] == int(want)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "adaptive", *args], capture_output=True, text=True,
                          timeout=600)


def test_evaluate_cli_json_and_plot(tmp_path):
    import json

    proc = run_cli("evaluate", "--policies", "greedy,hysteresis,oracle", "--episodes", "2", "--json",
                   "--plot", str(tmp_path / "p.png"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [p["policy"] for p in out["policies"]] == ["greedy", "hysteresis", "oracle"]
    assert out["policies"][2]["ratio_to_oracle"] == pytest.approx(1.0)
    assert (tmp_path / "p.png").stat().st_size > 10_000


@pytest.mark.parametrize(("args", "message"), [
    (["evaluate", "--policies", "greedy,psychic"], "unknown policy 'psychic'"),
    (["evaluate", "--policies", "ppo:/nonexistent/p.zip"], "policy file not found"),
    (["evaluate", "--policies", "greedy", "--config", "/nonexistent.yaml"], "expected an env config"),
    (["train", "--timesteps", "0"], "--timesteps must be >= 1"),
])
def test_learning_cli_bad_input(args, message):
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_evaluate_with_layer_plans_only_from_a_config_file(tmp_path):
    """``parallel: false`` in a config: the shipped PPO (trained with sections) is left out, saying why."""
    from pathlib import Path

    import yaml

    doc = yaml.safe_load((Path(envs.__file__).parent / "data" / "default.yaml").read_text())
    assert doc["env"]["parallel"] is True  # the default: candidates with parallel sections
    doc["env"].update(parallel=False, max_steps=40)
    config = tmp_path / "layers.yaml"
    config.write_text(yaml.safe_dump(doc))
    proc = run_cli("evaluate", "--config", str(config), "--episodes", "1")
    assert proc.returncode == 0, proc.stderr
    assert "ppo left out: the PPO policy was trained on mobilenet_v2" in proc.stdout
    rows = {line.split()[0]: float(line.split()[1]) for line in proc.stdout.splitlines()[3:]}
    assert "ppo" not in rows and {"greedy", "oracle", "device-only"} <= set(rows)
    assert rows["oracle"] <= rows["greedy"] and rows["oracle"] < rows["device-only"]
    proc = run_cli("evaluate", "--config", str(config), "--episodes", "1", "--policies", "ppo,greedy")
    assert proc.returncode == 2 and "evaluate with the policy's own config" in proc.stderr
