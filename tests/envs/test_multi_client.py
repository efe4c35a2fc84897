"""adaptive/MultiClient-v0 and its batched twin: API, determinism, masks, rewards, bad input."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs  # noqa: F401  (registers the envs)
from adaptive.errors import AdaptiveError
from envs.config import MultiClientConfig
from envs.multi_client import MultiClientEnv
from envs.multi_client_vec import MultiClientVecEnv


def test_works_with_no_arguments_and_passes_both_checkers():
    env = gym.make("adaptive/MultiClient-v0")
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped)
    assert isinstance(env.action_space, gym.spaces.MultiDiscrete)
    assert env.spec.max_episode_steps == env.unwrapped.config.max_steps == 800


def test_the_same_seed_gives_the_same_episode():
    def run(seed):
        env = MultiClientEnv(max_steps=50)
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for t in range(50):
            obs, reward, *_ = env.step([t % 5, 1, 3, 0])
            out.append(obs)
            out.append(np.array([reward]))
        return np.concatenate(out)

    assert np.array_equal(run(4), run(4))
    assert not np.array_equal(run(4), run(5))


def test_reward_is_minus_the_mean_cost_of_the_step_frames():
    env = MultiClientEnv(max_steps=100)
    env.reset(seed=2)
    ref, penalty = env.ref_latency_ms, env.config.drop_penalty
    seen_drop = False
    for _ in range(100):
        _, reward, _, _, info = env.step([1] * 4)  # full offload everywhere: drops on slow links
        served = info["frames"]
        cost = (served * info["latency_ms"] / ref if served else 0.0) + penalty * info["dropped"]
        assert reward == pytest.approx(-cost / info["offered"])
        assert info["frames"] + info["dropped"] == pytest.approx(info["offered"])
        seen_drop |= info["dropped"] > 0
    assert seen_drop  # the case was exercised


def test_masks_leave_an_empty_slot_only_plan_zero():
    env = MultiClientEnv()
    env.reset(seed=0, options={"clients": 2})
    mask = env.action_masks().reshape(4, -1)
    assert mask[:2].all()
    assert mask[2:, 0].all() and not mask[2:, 1:].any()


def test_options_pin_the_clients_rates_and_links():
    env = MultiClientEnv(max_steps=40)
    env.reset(seed=0, options={"clients": 3, "rate_rps": 2.0, "links": [5.0, 5.0, 5.0, 5.0]})
    for _ in range(40):
        _, _, _, _, info = env.step([0, 0, 0, 0])
        assert info["active"] == [True, True, True, False]
        assert info["offered"] == pytest.approx(3 * 2.0 * env.config.dt_s)
        assert info["bandwidth_mbps"] == [5.0] * 4
    with pytest.raises(ValueError, match="clients"):
        env.reset(seed=0, options={"clients": 9})


def test_a_plan_for_an_empty_slot_is_ignored_and_reported():
    env = MultiClientEnv()
    env.reset(seed=0, options={"clients": 2})
    _, _, _, _, info = env.step([1, 1, 3, 0])
    assert info["plan"] == [1, 1, 0, 0] and info["ignored"] == [2]


def test_a_bad_action_is_refused_with_what_was_wrong():
    env = MultiClientEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="plan indices"):
        env.step([0, 0, 0])
    with pytest.raises(ValueError, match="plan indices"):
        env.step([0, 0, 0, 99])


def test_bad_config_names_the_key():
    with pytest.raises(AdaptiveError, match="min_clients"):
        MultiClientConfig.from_dict({"min_clients": 5, "max_clients": 4})
    with pytest.raises(AdaptiveError, match="unknown env config key 'clients'"):
        MultiClientConfig.from_dict({"clients": 3})
    with pytest.raises(AdaptiveError, match="client_rate_rps"):
        MultiClientConfig.from_dict({"client_rate_rps": [5, 1]})
    with pytest.raises(AdaptiveError, match="accelerator"):
        MultiClientConfig.from_dict({"devices": ["raspberry-pi-4"]})


def test_batched_episodes_step_exactly_like_single_ones():
    vec = MultiClientVecEnv(3, max_steps=30, seed=0)
    vec.reset()
    single = MultiClientEnv(max_steps=30)
    single.reset(seed=0)
    core, one = vec.core, single.core
    episode_arrays = [k for k, v in vars(core).items() if k.startswith("_") and isinstance(v, np.ndarray)
                      and v.ndim >= 2 and v.shape[0] == 3]
    assert "_bw" in episode_arrays and "_slots" in episode_arrays
    for name in episode_arrays:
        getattr(one, name)[0] = getattr(core, name)[1]  # the single env replays batched episode 1
    rng = np.random.default_rng(0)
    for _ in range(29):
        actions = rng.integers(0, core.num_plans, (3, 4))
        vec.step_async(actions)
        obs, rewards, dones, _ = vec.step_wait()
        one_obs, one_reward, *_ = single.step(actions[1])
        assert one_reward == pytest.approx(float(rewards[1]), rel=1e-6)
        np.testing.assert_allclose(one_obs, obs[1], rtol=1e-6)
        assert not dones.any()


def test_batched_episodes_reset_themselves_with_the_last_observation():
    vec = MultiClientVecEnv(2, max_steps=5, seed=1)
    first = vec.reset()
    for _ in range(5):
        vec.step_async(np.zeros((2, 4), np.int64))
        _, _, dones, infos = vec.step_wait()
    assert dones.all()
    for e in range(2):
        assert infos[e]["TimeLimit.truncated"] and infos[e]["episode"]["l"] == 5
        assert infos[e]["terminal_observation"].shape == first[e].shape
    assert vec.core.t.tolist() == [0, 0]
    masks = vec.env_method("action_masks")
    assert len(masks) == 2 and masks[0].shape == (4 * vec.core.num_plans,)


def test_maskable_ppo_trains_on_the_batched_env():
    from sb3_contrib import MaskablePPO

    vec = MultiClientVecEnv(8, max_steps=64, seed=0)
    model = MaskablePPO("MlpPolicy", vec, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(512)
    obs = vec.reset()
    masks = vec.action_masks()
    actions, _ = model.predict(obs, action_masks=masks, deterministic=True)
    assert actions.shape == (8, 4)
    allowed = masks.reshape(8, 4, -1)
    assert all(allowed[e, k, actions[e, k]] for e in range(8) for k in range(4))


def test_environments_on_one_model_and_chain_share_their_candidate_plans(tmp_path):
    """The grid search behind the action set runs once per profile, chain and limits."""
    from adaptive.model.latency import SplitModel
    from adaptive.model.observation import candidate_plans, env_candidate_plans
    from adaptive.model.profiles import resolve_device, resolve_model

    a = MultiClientEnv()
    cfg = a.unwrapped.config
    b = MultiClientEnv(dataclasses.replace(cfg, max_clients=cfg.max_clients + 1))  # same model and chain
    assert a.unwrapped.core.candidates is b.unwrapped.core.candidates
    model = SplitModel(resolve_model(cfg.model_profile), [resolve_device(d) for d in cfg.devices])
    fresh = candidate_plans(model, max_plans=cfg.max_plans)
    assert fresh.to_json() == a.unwrapped.core.candidates.to_json()  # the same plans as computed anew
    fewer = MultiClientEnv(dataclasses.replace(cfg, max_plans=4))
    assert len(fewer.unwrapped.core.candidates) == 4 < len(a.unwrapped.core.candidates)
    with pytest.raises(ValueError):  # shared: nobody may change them in place
        a.unwrapped.core.candidates.plans.splits[0, 0] = 0
    # a profile given as a file is read again when the file changes
    from importlib import resources

    path = tmp_path / "m.yaml"
    path.write_text(resources.files("adaptive.data").joinpath(f"models/{cfg.model_profile}.yaml").read_text())
    on_file = dataclasses.replace(cfg, model_profile=str(path))
    first = env_candidate_plans(on_file)
    assert env_candidate_plans(on_file) is first
    path.write_text(path.read_text() + "# another version of the file\n")
    assert env_candidate_plans(on_file) is not first
