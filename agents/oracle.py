"""The hindsight oracle: the best plan sequence for a whole episode, knowing the true future.

Dynamic programming over steps with plan switches: ``V_t(a)`` is the least total cost of steps
``0..t`` ending in plan ``a``. Staying costs the step's cost; switching costs the step's cost with
the switch latency added (so an SLO can be broken by a switch). ``O(T·P)``: the best predecessor
for a switch is the best or, for that same plan, the second best. The cost is the env's negative
reward, so the oracle's return is an upper bound on every policy's, and with no energy or SLO
terms its mean latency is a lower bound.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["OraclePolicy", "hindsight_oracle"]


def step_costs(env: Any, switch: bool) -> np.ndarray:
    """``(T, P)`` negative reward of each plan at each step, staying (False) or switching (True)."""
    u = env.unwrapped
    cfg = u.config
    lat, energy, feasible = u.episode_costs()
    latency = lat + (cfg.switch_cost_ms if switch else 0.0)
    cost = latency / u.ref_latency_ms + cfg.energy_weight * energy / u.ref_energy_j
    if cfg.slo_ms is not None:
        cost = cost + cfg.slo_penalty * (latency > cfg.slo_ms)
    return cost + cfg.infeasible_penalty * ~feasible


def hindsight_oracle(stay: np.ndarray, move: np.ndarray, initial: int) -> tuple[np.ndarray, float]:
    """Minimum-cost action sequence.

    Args:
        stay: ``(T, P)`` cost of plan ``a`` at step ``t`` when it was already in force.
        move: ``(T, P)`` cost when switching to it.
        initial: Plan in force before step 0.

    Returns:
        ``(actions (T,), total cost)``.
    """
    T, P = stay.shape
    value = np.full(P, np.inf)
    value[initial] = 0.0
    back = np.empty((T, P), np.int64)
    plans = np.arange(P)
    for t in range(T):
        order = np.argsort(value)
        best, second = order[0], order[1] if P > 1 else order[0]
        prev = np.where(plans == best, second, best)  # best predecessor other than a itself
        via_switch = value[prev] + move[t]
        via_stay = value + stay[t]
        take_stay = via_stay <= via_switch
        back[t] = np.where(take_stay, plans, prev)
        value = np.where(take_stay, via_stay, via_switch)
    actions = np.empty(T, np.int64)
    a = int(np.argmin(value))
    total = float(value[a])
    for t in range(T - 1, -1, -1):
        actions[t] = a
        a = int(back[t, a])
    return actions, total


class OraclePolicy:
    """Replays the hindsight-optimal sequence of the current episode (through the policy protocol)."""

    name = "oracle"

    def begin_episode(self, env: Any) -> None:
        """Solve the episode (the env must have just been reset)."""
        u = env.unwrapped
        self.actions, self.total_cost = hindsight_oracle(step_costs(env, False), step_costs(env, True),
                                                         u.current_plan)
        self._t = 0

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: Any = None,
                deterministic: bool = True, action_masks: np.ndarray | None = None) -> tuple[int, Any]:
        """The next action of the solved sequence."""
        a = int(self.actions[min(self._t, len(self.actions) - 1)])
        self._t += 1
        return a, state
