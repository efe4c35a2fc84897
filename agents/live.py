"""Policies wired for the live controller: ``build_policy("greedy", config)`` and friends.

The controller (:mod:`adaptive.controller`) takes any object with Stable-Baselines3's ``predict``;
this module builds the concrete ones from a ``--policy`` spec, so neither ``adaptive`` core nor its
demo imports ``agents`` (the CLI passes :func:`build_policy` in).
"""

from __future__ import annotations

from typing import Any

__all__ = ["FirstChoice", "build_policy"]


def build_policy(spec: str, config: Any) -> tuple[Any, Any, Any, str, Any]:
    """Wire a policy for the controller: ``(policy, candidates, obs_spec, name, on_model)``."""
    from adaptive.errors import AdaptiveError
    from adaptive.latency import Conditions, SplitModel
    from adaptive.observation import ObservationSpec, candidate_plans
    from adaptive.plans import PlanArray
    from adaptive.profiles import resolve_device, resolve_model

    name, _, path = spec.partition(":")
    if name == "ppo":
        from importlib import resources
        from pathlib import Path

        from agents.ppo import load_actor

        # the actor as numpy (adaptive.mlp): the controller needs no torch, and it can ship the same
        # network to the source node in a decision rule
        model, sidecar = load_actor(path or Path(str(resources.files("agents.trained").joinpath(
            "ppo_default.zip"))))
        chain_devices = [c.device for c in config.chain]
        if list(sidecar.devices) != chain_devices or sidecar.model_profile != config.model_profile:
            raise AdaptiveError(f"the PPO policy was trained for {sidecar.model_profile} on "
                                f"{list(sidecar.devices)}; the controller runs {config.model_profile} "
                                f"on {chain_devices}")
        return model, sidecar.candidates(), sidecar.observation, "ppo", None
    if name not in ("greedy", "hysteresis", "static"):
        raise AdaptiveError(f"--policy: unknown policy '{spec}' "
                            "(expected ppo[:PATH], greedy, hysteresis, static)")
    from agents.policies import Greedy, Hysteresis

    split_model = SplitModel(resolve_model(config.model_profile),
                             [resolve_device(c.device) for c in config.chain])
    candidates = candidate_plans(split_model, max_plans=config.max_plans)
    M = split_model.num_devices - 1
    nominal = split_model.evaluate(PlanArray.from_splits([[split_model.num_blocks] * M]), Conditions(1.0))
    obs_spec = ObservationSpec(split_model.num_devices, len(candidates), float(nominal.latency_ms[0]),
                               history=config.history)
    if name == "hysteresis":
        policy: Any = Hysteresis(split_model, candidates, obs_spec, min_dwell=0, margin=0.05)
    else:
        policy = Greedy(split_model, candidates, obs_spec)
    if name == "static":
        policy = FirstChoice(policy)

    def on_model(model: SplitModel) -> None:
        base = policy.inner if isinstance(policy, FirstChoice) else policy
        base.model = model

    return policy, candidates, obs_spec, name, on_model


class FirstChoice:
    """Static: the inner policy's first choice, kept for the whole run (unless it becomes invalid)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.choice: int | None = None

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None,
                deterministic: bool = True, action_masks: Any = None) -> tuple[int, Any]:
        """The first choice, again."""
        if self.choice is None or (action_masks is not None and not action_masks[self.choice]):
            self.choice = int(self.inner.predict(observation, action_masks=action_masks)[0])
        return self.choice, state
