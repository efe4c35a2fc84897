"""``E`` episodes of ``adaptive/MultiClient-v0`` behind Stable-Baselines3's ``VecEnv`` API."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from envs.config import MultiClientConfig
from envs.multi_client import MultiClientCore

__all__ = ["MultiClientVecEnv"]


class MultiClientVecEnv(VecEnv):
    """``num_envs`` episodes of :class:`MultiClientEnv` stepped in one numpy call.

    Implements Stable-Baselines3's ``VecEnv``: finished episodes reset themselves, with the last
    observation in ``info["terminal_observation"]`` and ``TimeLimit.truncated`` set, as
    ``DummyVecEnv`` over ``TimeLimit``-wrapped envs does. ``env_method("action_masks")`` gives the
    per-episode masks ``MaskablePPO`` needs.

    Args:
        num_envs: Episodes.
        config: As for :class:`MultiClientEnv`.
        seed: Seed of the episode generator.
    """

    def __init__(self, num_envs: int = 16, config: MultiClientConfig | dict | str | None = None,
                 seed: int | None = None, **overrides: Any) -> None:
        self.config = MultiClientConfig.resolve(config, overrides)
        self.core = MultiClientCore(self.config, num_envs)
        low, high = self.core.obs_spec.bounds()
        super().__init__(num_envs, gym.spaces.Box(low, high, dtype=np.float32),
                         gym.spaces.MultiDiscrete([self.core.num_plans] * self.core.num_clients))
        self._rng = np.random.default_rng(seed)
        self._actions = np.zeros((num_envs, self.core.num_clients), np.int64)
        self._returns = np.zeros(num_envs)
        self._lengths = np.zeros(num_envs, np.int64)

    def seed(self, seed: int | None = None) -> Sequence[int | None]:  # type: ignore[override]
        """Reseed the episode generator (applies at the next reset)."""
        self._rng = np.random.default_rng(seed)
        return [seed] * self.num_envs

    def reset(self) -> VecEnvObs:
        """Start every episode afresh."""
        if self._seeds[0] is not None:
            self._rng = np.random.default_rng(self._seeds[0])
        self._reset_seeds()
        self.core.generate(np.arange(self.num_envs), self._rng, self._options[0] or None)
        self._reset_options()
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return self.core.observe()

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions for :meth:`step_wait`."""
        self._actions = np.asarray(actions, np.int64).reshape(self.num_envs, self.core.num_clients)

    def step_wait(self) -> VecEnvStepReturn:
        """Step every episode; reset those that reached ``max_steps``."""
        reward, _ = self.core.step(self._actions)
        self._returns += reward
        self._lengths += 1
        done = self.core.t >= self.config.max_steps
        obs = self.core.observe()
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        finished = np.flatnonzero(done)
        for e in finished:
            infos[e] = {"terminal_observation": obs[e].copy(), "TimeLimit.truncated": True,
                        "episode": {"r": float(self._returns[e]), "l": int(self._lengths[e])}}
        if finished.size:
            self.core.generate(finished, self._rng)
            self._returns[finished], self._lengths[finished] = 0.0, 0
            obs = self.core.observe()
        return obs, reward.astype(np.float32), done, infos

    def close(self) -> None:
        """Nothing to release."""

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        """An attribute of the shared core (or of this env: ``action_masks``), once per selected episode."""
        n = len(self._get_indices(indices))
        if attr_name == "render_mode":
            return [None] * n
        owner = self.core if hasattr(self.core, attr_name) else self
        return [getattr(owner, attr_name)] * n

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        """Set an attribute of the shared core."""
        setattr(self.core, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any
                   ) -> list[Any]:
        """``action_masks`` per episode; other methods of the core once per selected episode."""
        idx = self._get_indices(indices)
        if method_name == "action_masks":
            masks = self.core.masks()
            return [masks[i] for i in idx]
        result = getattr(self.core, method_name)(*method_args, **method_kwargs)
        return [result] * len(idx)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: Any = None) -> list[bool]:
        """Only ``Monitor``: finished episodes report ``info["episode"]`` as it does."""
        from stable_baselines3.common.monitor import Monitor

        return [wrapper_class is Monitor] * len(self._get_indices(indices))

    def action_masks(self) -> np.ndarray:
        """``(num_envs, K·P)`` masks."""
        return self.core.masks()
