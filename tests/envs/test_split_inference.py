"""The environment: API conformance, determinism, masks, configuration, speed-critical paths."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs  # noqa: F401
from adaptive.errors import AdaptiveError
from envs.config import EnvConfig
from envs.split_inference import SplitInferenceEnv

THREE = {"model_profile": "resnet110_cifar", "devices": ["raspberry-pi-4", "jetson-nano", "jetson-agx-orin"],
         "max_steps": 30, "max_plans": 12}


@pytest.mark.parametrize("overrides", [{}, THREE, {"staleness_steps": 0, "history": 1, "slo_ms": 250.0,
                                                   "energy_weight": 0.5}])
def test_env_checkers(overrides):
    env = gym.make("adaptive/SplitInference-v0", **overrides)
    gym_check_env(env.unwrapped)
    sb3_check_env(gym.make("adaptive/SplitInference-v0", **overrides))


def test_make_with_no_arguments_and_spaces():
    env = gym.make("adaptive/SplitInference-v0")
    obs, _info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert isinstance(env.action_space, gym.spaces.Discrete) and env.action_space.n >= 2
    for _ in range(800):
        *_, truncated, _ = env.step(0)
    assert truncated  # the default episode is 800 steps of 0.25 s
    u = env.unwrapped
    M = u.num_links
    assert u.candidates.plan(0).splits == (u.model.num_blocks,) * M  # action 0: device-only
    assert u.candidates.plan(1).splits == (0,) * M  # action 1: full offload


def rollout(seed, steps=60, **overrides):
    env = gym.make("adaptive/SplitInference-v0", **overrides)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(123)
    out = [obs]
    for _ in range(steps):
        mask = env.unwrapped.action_masks()
        a = int(rng.choice(np.flatnonzero(mask)))
        obs, r, _term, _trunc, info = env.step(a)
        out += [obs, r, info["latency_ms"], info["energy_j"], info["switched"], info["feasible"]]
    return out


def test_reproducible_under_a_seed():
    a, b, c = rollout(7), rollout(7), rollout(8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_info_reward_and_switch_cost():
    env = gym.make("adaptive/SplitInference-v0", switch_cost_ms=25.0, synthetic_share=0.0)
    env.reset(seed=3)
    u = env.unwrapped
    lat, _energy, feasible = u.episode_costs()
    current = u._current
    other = (current + 1) % u.num_plans
    _, r, term, trunc, info = env.step(other)
    assert set(info) >= {"latency_ms", "energy_j", "switched", "feasible"}
    assert info["switched"] and info["latency_ms"] == pytest.approx(lat[0, other] + 25.0)
    penalty = 2.0 if not feasible[0, other] else 0.0
    assert r == pytest.approx(-(lat[0, other] + 25.0) / u.ref_latency_ms - penalty)
    _, _r2, *_ , info2 = env.step(other)
    assert not info2["switched"] and info2["latency_ms"] == pytest.approx(lat[1, other])
    assert not term and not trunc


def test_time_limit_and_masks():
    env = gym.make("adaptive/SplitInference-v0", max_steps=20)
    env.reset(seed=1)
    for _i in range(20):
        mask = env.unwrapped.action_masks()
        assert mask.dtype == bool and mask.shape == (env.action_space.n,) and mask.any()
        *_, trunc, _ = env.step(int(np.flatnonzero(mask)[0]))
    assert trunc


def test_low_memory_masks_plans_and_penalises_them():
    nearly_full = {"mean": [0.99, 0.9995], "sd": 0.0, "high": 0.9999}
    env = gym.make("adaptive/SplitInference-v0", memory_used=nearly_full, synthetic_share=0.0)
    env.reset(seed=0)
    mask = env.unwrapped.action_masks()
    assert mask.any()
    _lat, _energy, feasible = env.unwrapped.episode_costs()
    assert not feasible.all()
    bad = int(np.flatnonzero(~feasible[0])[0])
    _, r, *_, info = env.step(bad)
    assert not info["feasible"] and r < -2.0


def test_pinned_trace_and_unknown_trace():
    env = gym.make("adaptive/SplitInference-v0", synthetic_share=0.0)
    name = env.unwrapped.trace_names[2]
    _, info = env.reset(seed=0, options={"trace": name})
    assert info["traces"] == [name] * env.unwrapped.num_links
    with pytest.raises(ValueError, match="unknown trace"):
        env.reset(seed=0, options={"trace": "nope"})


@pytest.mark.parametrize(("doc", "message"), [
    ({"colour": 1}, "unknown env config key 'colour'"),
    ({"dt_s": 0}, "dt_s must be > 0"),
    ({"max_steps": 2.5}, "expected an integer"),
    ({"use_codecs": "yes"}, "expected true or false"),
    ({"traces": ["/nonexistent/trace.csv"]}, "no such file .expected a trace"),
    ({"devices": ["raspberry-pi-4", "tpu-9"]}, "unknown device"),
])
def test_bad_config_is_a_clear_error(doc, message):
    with pytest.raises(AdaptiveError, match=message):
        SplitInferenceEnv(doc)


def test_config_from_yaml_file(tmp_path):
    path = tmp_path / "env.yaml"
    path.write_text("env:\n  max_steps: 50\n  switch_cost_ms: 3\n  scaling: {target_median_mbps: 10}\n")
    cfg = EnvConfig.load(path)
    assert cfg.max_steps == 50 and cfg.switch_cost_ms == 3.0
    assert cfg.scaling.target_median_mbps == (10.0, 10.0)
    env = gym.make("adaptive/SplitInference-v0", config=str(path))
    assert env.unwrapped.config.max_steps == 50


def test_vecenv_path_for_multiple_cores():
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    # worker processes import `envs` through gymnasium's module:id form
    venv = make_vec_env("envs:adaptive/SplitInference-v0", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv,
                        env_kwargs={"max_steps": 20})
    try:
        obs = venv.reset()
        masks = np.stack(venv.env_method("action_masks"))
        assert obs.shape[0] == 2 and masks.shape == (2, venv.action_space.n)
        actions = [int(np.flatnonzero(m)[0]) for m in masks]
        obs, rewards, _dones, infos = venv.step(np.array(actions))
        assert rewards.shape == (2,) and "latency_ms" in infos[0]
    finally:
        venv.close()


def test_observation_decodes_to_the_reported_state():
    env = gym.make("adaptive/SplitInference-v0", synthetic_share=0.0)
    obs, _ = env.reset(seed=5)
    u = env.unwrapped
    spec = u.obs_spec
    assert spec.decode_current(obs) == u._current
    rep = u.reported_conditions
    pred = u.model.evaluate(u.candidates.plans, rep)
    got = spec.decode_predicted(obs)
    want = np.where(pred.feasible[0], pred.latency_ms[0], np.inf)
    np.testing.assert_allclose(got, want, rtol=2e-4)
    obs, *_ = env.step(u._current)
    assert spec.decode_dwell(obs) == pytest.approx(1.0)


def test_parallel_candidates_compete_with_layer_plans_on_the_same_episodes():
    """``parallel: true`` (the default) adds sectioned plans; on one episode the best candidate is faster."""
    from adaptive.model.lop import first_stage
    from adaptive.model.observation import CandidatePlans
    from agents.oracle import step_costs

    layer = gym.make("adaptive/SplitInference-v0", max_steps=120, parallel=False).unwrapped
    lop = gym.make("adaptive/SplitInference-v0", max_steps=120).unwrapped
    sections = [lop.candidates.plan(i).section for i in range(lop.num_plans)]
    assert not any(layer.candidates.plan(i).section for i in range(layer.num_plans))
    assert sum(s is not None for s in sections) >= 5
    assert lop.candidates.plan(0).splits == (23, 23) and lop.candidates.plan(1).splits == (0, 0)
    # a sectioned candidate's uplink carries its chunks and the edge's band, not a whole activation
    p = next(i for i, s in enumerate(sections) if s is not None)
    plan = lop.candidates.plan(p)
    cfg = lop.model.section_costs.config(plan.splits[0], plan.section.stop, plan.section.share,
                                         plan.section.parts)
    j = first_stage(plan.splits, lop.model.num_blocks)  # the device the section shares with
    ratio = {"none": 1.0, **{c.name: c.bytes_ratio for c in lop.model.profile.codecs}}[
        plan.codecs[j - 1] if plan.codecs else "none"]
    assert lop.model.link_bits(lop.candidates.plans)[p, 0] == pytest.approx(
        (cfg.chunk_bytes.sum() + cfg.join_bytes) * ratio * 8)
    # the action set's JSON form (the policy sidecar) keeps the sections, and index() finds them
    again = CandidatePlans.from_json(lop.candidates.to_json(), lop.candidates.codec_names)
    assert [again.plan(i) for i in range(len(again))] == [lop.candidates.plan(i) for i in range(len(again))]
    assert len(again) == lop.num_plans
    assert again.index(plan) == p
    for env in (layer, lop):
        env.reset(seed=3)
    best_layer = step_costs(layer, False).min(axis=1)  # per step, the best candidate's cost
    best_lop = step_costs(lop, False).min(axis=1)  # (latency over the same reference)
    assert best_lop.mean() < 0.95 * best_layer.mean()
    for a in (p, 0, p):
        *_, info = lop.step(a)
        assert info["latency_ms"] > 0
