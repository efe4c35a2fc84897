"""Policies behind one protocol: observation (and action mask) in, plan index out.

The protocol is Stable-Baselines3's ``predict`` signature, so a trained ``MaskablePPO`` is a
:class:`Policy` as it is. Heuristics that need the episode (the static plans, the hindsight
oracle) also implement ``begin_episode(env)``, which :func:`agents.evaluate.run_episode` calls after
every reset. Heuristics read the observation through :class:`adaptive.model.observation.ObservationSpec`
and predict with the latency model, exactly as the live controller would.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from adaptive.model.latency import ConditionBatch, SplitModel
from adaptive.model.observation import CandidatePlans, ObservationSpec

__all__ = [
    "DeviceOnly",
    "FullOffload",
    "Greedy",
    "HeuristicPolicy",
    "Hysteresis",
    "Policy",
    "StaticHindsight",
    "StaticMean",
    "make_heuristic",
]


@runtime_checkable
class Policy(Protocol):
    """Anything with Stable-Baselines3's ``predict``."""

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: Any = None,
                deterministic: bool = True, action_masks: np.ndarray | None = None) -> tuple[Any, Any]:
        """Return ``(action, state)``."""
        ...


class HeuristicPolicy:
    """Base of the model-based heuristics.

    Args:
        model: The latency model of the chain.
        candidates: The action set.
        spec: The observation layout.
        energy_weight: Weight of energy relative to ``ref_energy_j`` (as in the env's reward).
        ref_energy_j: Energy normaliser, J.
    """

    name = "heuristic"

    def __init__(self, model: SplitModel, candidates: CandidatePlans, spec: ObservationSpec,
                 energy_weight: float = 0.0, ref_energy_j: float = 1.0) -> None:
        self.model = model
        self.candidates = candidates
        self.spec = spec
        self.energy_weight = energy_weight
        self.ref_energy_j = ref_energy_j

    def begin_episode(self, env: Any) -> None:
        """Called after each reset (default: nothing)."""

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: Any = None,
                deterministic: bool = True, action_masks: np.ndarray | None = None) -> tuple[int, Any]:
        """Return ``(action, state)``."""
        return self.act(np.asarray(observation, np.float32), action_masks), state

    def act(self, obs: np.ndarray, mask: np.ndarray | None) -> int:
        """Choose an action index."""
        raise NotImplementedError

    # shared helpers

    def observed_conditions(self, obs: np.ndarray) -> ConditionBatch:
        """The reported state an observation encodes, as model conditions."""
        D, M, H = self.spec.num_devices, self.spec.num_devices - 1, self.spec.history
        lo, hi = np.log10(self.spec.bw_min_mbps), np.log10(self.spec.bw_max_mbps)
        cpu = obs[:D]
        mem = obs[D : 2 * D] * np.array([d.memory_mb for d in self.model.devices])
        bw_hist = obs[2 * D : 2 * D + M * H].reshape(M, H)
        bw = 10 ** (lo + bw_hist[:, -1] * (hi - lo))
        clients = max(1, round(float(obs[2 * D + M * H]) * self.spec.max_clients))
        return ConditionBatch(bw[None].astype(float), np.zeros((1, M)), cpu[None].astype(float),
                              np.array([float(clients)]), mem[None].astype(float))

    def step_costs(self, obs: np.ndarray) -> np.ndarray:
        """Predicted per-step cost of each candidate: latency/ref + weighted energy; inf if unfit."""
        pred = self.model.evaluate(self.candidates.plans, self.observed_conditions(obs))
        cost = pred.latency_ms[0] / self.spec.ref_latency_ms
        if self.energy_weight:
            cost = cost + self.energy_weight * pred.energy_j[0] / self.ref_energy_j
        return np.where(pred.feasible[0], cost, np.inf)


def _masked_argmin(cost: np.ndarray, mask: np.ndarray | None) -> int:
    if mask is not None:
        cost = np.where(np.asarray(mask, bool), cost, np.inf)
    if not np.isfinite(cost).any():
        return int(np.flatnonzero(mask)[0]) if mask is not None and np.any(mask) else 0
    return int(np.argmin(cost))


class DeviceOnly(HeuristicPolicy):
    """Always run the whole model on the first device (action 0)."""

    name = "device-only"

    def act(self, obs: np.ndarray, mask: np.ndarray | None) -> int:
        """Action 0."""
        return 0


class FullOffload(HeuristicPolicy):
    """Always send the raw input onward: the first device runs nothing (action 1)."""

    name = "offload"

    def act(self, obs: np.ndarray, mask: np.ndarray | None) -> int:
        """Action 1 (device-only if offloading does not fit)."""
        return 1 if mask is None or mask[1] else 0


class Greedy(HeuristicPolicy):
    """The model's argmin on the observed state, every step (model-predictive, no memory)."""

    name = "greedy"

    def act(self, obs: np.ndarray, mask: np.ndarray | None) -> int:
        """Cheapest predicted plan."""
        return _masked_argmin(self.step_costs(obs), mask)


class Hysteresis(HeuristicPolicy):
    """Greedy, but switch only after ``min_dwell`` steps and for a predicted gain above a margin.

    Args:
        min_dwell: Steps a plan stays in force before it may change.
        margin: Required relative gain of the new plan's predicted cost, plus the switch cost.
        switch_cost_ms: The switch cost the gain must pay for, ms.
    """

    name = "hysteresis"

    def __init__(self, *args: Any, min_dwell: int = 3, margin: float = 0.05, switch_cost_ms: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.min_dwell = min_dwell
        self.margin = margin
        self.switch_cost_ms = switch_cost_ms

    def act(self, obs: np.ndarray, mask: np.ndarray | None) -> int:
        """Keep the current plan unless the best is clearly better and the dwell has passed."""
        cost = self.step_costs(obs)
        if mask is not None:
            cost = np.where(np.asarray(mask, bool), cost, np.inf)
        current = self.spec.decode_current(obs)
        best = _masked_argmin(cost, mask)
        if not np.isfinite(cost[current]):
            return best  # the plan in force no longer fits: move now
        dwell = self.spec.decode_dwell(obs)
        gain = cost[current] - cost[best]
        needed = self.margin * cost[current] + self.switch_cost_ms / self.spec.ref_latency_ms
        if best != current and dwell >= self.min_dwell and gain > needed:
            return best
        return current


class StaticMean(HeuristicPolicy):
    """Neurosurgeon-style static: the best plan for the episode's *mean* conditions, then fixed.

    What a planner that profiles once and never re-plans would pick. On variable links it can be
    far worse than any single plan chosen with hindsight (:class:`StaticHindsight`).
    """

    name = "static-mean"
    choice = 0  # the plan kept this episode (set by begin_episode)

    def begin_episode(self, env: Any) -> None:
        """Choose the plan for the mean of the episode's true conditions."""
        truth = env.unwrapped.true_conditions
        mean = ConditionBatch(*(np.asarray(x, float).mean(axis=0, keepdims=True) for x in truth))
        mean = mean._replace(clients=np.round(mean.clients))
        pred = self.model.evaluate(self.candidates.plans, mean)
        cost = pred.latency_ms[0] / self.spec.ref_latency_ms
        if self.energy_weight:
            cost = cost + self.energy_weight * pred.energy_j[0] / self.ref_energy_j
        self.choice = _masked_argmin(np.where(pred.feasible[0], cost, np.inf), None)

    def act(self, obs: np.ndarray, mask: np.ndarray | None) -> int:
        """The fixed plan (greedy while it does not fit)."""
        choice = self.choice
        return choice if mask is None or mask[choice] else _masked_argmin(self.step_costs(obs), mask)


class StaticHindsight(StaticMean):
    """The honest static baseline: the single plan with the least true cost over the episode.

    Chosen in hindsight from the episode's true per-step costs (the env's negative reward: latency,
    weighted energy, SLO and infeasibility penalties), then kept for every step. No fixed plan does
    better on that episode, so an adaptive policy's gain over it is the value of adapting.
    """

    name = "static-hindsight"

    def begin_episode(self, env: Any) -> None:
        """Choose the plan whose summed true cost over the episode is least."""
        from agents.oracle import step_costs

        self.choice = int(np.argmin(step_costs(env, False).sum(axis=0)))


def make_heuristic(name: str, env: Any, **kwargs: Any) -> HeuristicPolicy:
    """Build a heuristic for ``env`` (an unwrapped :class:`~envs.split_inference.SplitInferenceEnv`)."""
    classes = {c.name: c for c in (DeviceOnly, FullOffload, Greedy, Hysteresis, StaticMean, StaticHindsight)}
    classes["static"] = StaticMean  # the name it had before static-hindsight existed
    if name not in classes:
        raise ValueError(f"unknown heuristic '{name}' (expected one of {', '.join(classes)})")
    u = env.unwrapped
    base = dict(energy_weight=u.config.energy_weight, ref_energy_j=u.ref_energy_j)
    if name == "hysteresis":
        kwargs.setdefault("switch_cost_ms", u.config.switch_cost_ms)
    return classes[name](u.model, u.candidates, u.obs_spec, **base, **kwargs)
