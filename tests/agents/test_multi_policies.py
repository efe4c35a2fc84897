"""Multi-client heuristics: valid plans, the direction of seed 000 Fig. 13b, and what each promises."""

from __future__ import annotations

import numpy as np
import pytest

from agents.multi_policies import Coordinated, Greedy, make_multi_heuristic
from envs.multi_client import MultiClientEnv

NAMES = ["device-only", "full-offload", "greedy", "hysteresis", "coordinated", "static-hindsight",
         "clairvoyant"]
STILL = {"bw_noise": 0.0, "load_noise": 0.0, "cpu_load": {"mean": [0.0, 0.0], "sd": 0.0, "reversion": 0.1}}


def episode(env, policy, options=None, seed=0):
    obs, _ = env.reset(seed=seed, options=options)
    if hasattr(policy, "begin_episode"):
        policy.begin_episode(env)
    infos = []
    for _ in range(env.config.max_steps):
        mask = env.action_masks()
        action, _ = policy.predict(obs, action_masks=mask)
        assert action.shape == (env.core.num_clients,)
        assert mask.reshape(env.core.num_clients, -1)[np.arange(len(action)), action].all()
        obs, _, _, _, info = env.step(action)
        infos.append(info)
    return infos


@pytest.mark.parametrize("name", NAMES)
def test_every_heuristic_gives_a_valid_plan_per_client(name):
    env = MultiClientEnv(max_steps=40)
    infos = episode(env, make_multi_heuristic(name, env))  # asserts every plan is within the mask
    assert sum(info["frames"] for info in infos) > 0


@pytest.mark.parametrize("name", NAMES)
def test_every_heuristic_copes_with_nobody_present(name):
    """A live cluster whose clients are all idle: every slot empty for a while, then one client."""
    env = MultiClientEnv(max_steps=20)
    T, K = 20, env.core.num_clients
    active = np.zeros((T, K), bool)
    active[10:, 0] = True
    script = {"active": active, "rate": np.full((T, K), 3.0), "bw": np.full((T, K), 20.0),
              "edge_load": np.zeros((T, K)), "accel_load": np.zeros((T, env.core.num_accels))}
    infos = episode(env, make_multi_heuristic(name, env), options={"script": script})
    assert all(info["plan"] == [0] * K for info in infos[:10])  # nobody there: nothing to run
    assert sum(info["frames"] for info in infos[10:]) > 0


def test_an_unknown_policy_is_named():
    with pytest.raises(ValueError, match="unknown multi-client policy 'ppo2'"):
        make_multi_heuristic("ppo2", MultiClientEnv())


def edge_share(env, policy, clients, rate):
    """Mean share of the model's blocks run on the edge devices, over the present clients."""
    links = [20.0] * env.core.num_clients
    infos = episode(env, policy, {"clients": clients, "rate_rps": rate, "links": links})
    splits = env.candidates.plans.splits[:, 0] / env.chain.chains[0].num_blocks
    return float(np.mean([splits[p] for info in infos
                          for p, a in zip(info["plan"], info["active"], strict=True) if a]))


def test_splits_move_toward_the_edge_as_clients_saturate_the_accelerator():
    """Seed 000 Fig. 13b: more clients on one accelerator, more of the model on the edge."""
    env = MultiClientEnv(max_steps=40, max_clients=8, **STILL)
    policy = Coordinated(env)
    shares = [edge_share(env, policy, n, 3.0) for n in (1, 2, 4, 6, 8)]
    assert shares == sorted(shares), shares
    assert shares[0] == 0.0 and shares[-1] > 0.3, shares


def drop_rate(infos):
    return sum(i["dropped"] for i in infos) / sum(i["offered"] for i in infos)


def test_coordination_avoids_the_drops_of_clients_deciding_alone():
    env = MultiClientEnv(max_steps=80, max_clients=8, **STILL)
    options = {"clients": 8, "rate_rps": 6.0, "links": [20.0] * 8}
    alone = drop_rate(episode(env, Greedy(env), options))
    together = drop_rate(episode(env, Coordinated(env), options))
    assert alone > 0.1 and together < 0.01, (alone, together)


def test_best_responses_never_predict_worse_than_where_they_start():
    env = MultiClientEnv(max_steps=60)
    greedy, coordinated = Greedy(env), Coordinated(env)
    obs, _ = env.reset(seed=3)
    for _ in range(60):
        state, steps = coordinated.observed(obs)
        start = greedy.act(obs, env.action_masks().reshape(4, -1))
        chosen = coordinated.act(obs, env.action_masks().reshape(4, -1))
        costs = coordinated.rollout(np.stack([start, chosen]), state, steps)
        assert costs[1] <= costs[0] + 1e-12
        obs, *_ = env.step(chosen)


def test_static_hindsight_keeps_the_fixed_plan_of_least_true_cost():
    env = MultiClientEnv(max_steps=60)
    policy = make_multi_heuristic("static-hindsight", env)
    totals = []
    for p in range(env.core.num_plans):
        env.reset(seed=7)
        totals.append(-sum(env.step([p] * 4)[1] for _ in range(60)))
    env.reset(seed=7)
    policy.begin_episode(env)
    assert policy.choice == int(np.argmin(totals))


def test_evaluate_cli_on_the_multi_client_env(tmp_path):
    import json

    from tests.agents.test_policies import run_cli

    config = tmp_path / "multi.yaml"
    config.write_text("env:\n  max_steps: 40\n")
    proc = run_cli("evaluate", "--env", "adaptive/MultiClient-v0", "--config", str(config),
                   "--episodes", "2", "--policies", "greedy,coordinated,clairvoyant", "--json",
                   "--plot", str(tmp_path / "m.png"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["env"] == "adaptive/MultiClient-v0"
    rows = {p["policy"]: p for p in out["policies"]}
    assert list(rows) == ["greedy", "coordinated", "clairvoyant"]
    assert all(0.0 <= p["drop_rate"] <= 1.0 for p in rows.values())
    assert rows["clairvoyant"]["ratio_to_oracle"] == pytest.approx(1.0)
    assert (tmp_path / "m.png").stat().st_size > 10_000
    proc = run_cli("evaluate", "--env", "adaptive/MultiClient-v0", "--policies", "greedy,oracle")
    assert proc.returncode == 2 and "unknown policy 'oracle' for adaptive/MultiClient-v0" in proc.stderr


def test_train_then_evaluate_ppo_on_the_multi_client_env(tmp_path):
    import json

    from adaptive.model.observation import MULTI_ENV, PolicySpec
    from tests.agents.test_policies import run_cli

    hyper = tmp_path / "ppo.yml"
    hyper.write_text("adaptive/MultiClient-v0:\n  n_envs: 8\n  n_steps: 32\n  batch_size: 128\n"
                     "  n_epochs: 1\n  eval_freq: 1000000\n")
    config = tmp_path / "multi.yaml"
    config.write_text("env:\n  max_steps: 40\n")
    out = tmp_path / "run"
    proc = run_cli("train", "--env", MULTI_ENV, "--config", str(config), "--hyperparams", str(hyper),
                   "--timesteps", "512", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "best_model.zip" not in proc.stdout  # no evaluation ran, so none was written or named
    spec = PolicySpec.load(out / "policy.json")
    assert spec.env_id == MULTI_ENV and spec.num_outputs == 4 * spec.observation.num_plans
    proc = run_cli("evaluate", "--env", MULTI_ENV, "--config", str(config), "--episodes", "1",
                   "--policies", f"ppo:{out / 'policy.zip'},greedy", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["policies"]
    assert [r["policy"] for r in rows] == ["ppo", "greedy"]
    proc = run_cli("evaluate", "--env", MULTI_ENV, "--policies", "ppo:/nonexistent/policy.zip")
    assert proc.returncode == 2 and "policy file not found" in proc.stderr


def test_the_shipped_multi_client_policy_matches_the_default_env():
    from importlib import resources

    from adaptive.model.observation import MULTI_ENV
    from agents.multi_policies import MultiActor
    from agents.ppo import load_actor

    path = resources.files("agents.trained").joinpath("ppo_multi_client.zip")
    net, spec = load_actor(str(path))
    env = MultiClientEnv(max_steps=40)
    assert spec.env_id == MULTI_ENV and spec.plans == env.candidates.to_json()
    assert net.num_inputs == env.observation_space.shape[0]
    infos = episode(env, MultiActor(net, spec.observation.num_clients))
    assert sum(i["frames"] for i in infos) > 0
