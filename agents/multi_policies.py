"""Heuristic plans for several clients sharing the accelerators (``adaptive/MultiClient-v0``).

Every policy has Stable-Baselines3's ``predict`` signature and returns one plan index per client
slot. They read the observation through :class:`adaptive.model.shared_chain.ClusterObservation` and
predict with :class:`adaptive.model.shared_chain.SharedChain`, as a live controller would, except the
clairvoyant reference, which reads the episode's true future.

* ``device-only``: every client runs the whole model on its edge device.
* ``full-offload``: every client offloads all it may (its input as it is, where plans allow).
* ``greedy``: each client alone (LoADPart without the load): its plan of least predicted latency
  on an idle cluster among those its own edge and uplink can sustain at its frame rate. It
  ignores the other clients and the accelerators' queues.
* ``hysteresis``: ``greedy``, but a client changes plan only after ``min_dwell`` steps and for a
  predicted gain above ``margin``.
* ``coordinated``: best-response iterations over the shared queues. Starting from ``greedy``, it
  scores every client's every alternative plan by the cluster's cost (the env's reward) over a
  short horizon, simulated with the model from the observed backlogs and the others' plans, and
  moves the client that gains most; again, until nobody gains. A search, not an enumeration of
  the ``P^K`` joint plans.
* ``static-hindsight``: the one plan every client keeps all episode that has the least true cost
  over the episode, chosen in hindsight by simulating each candidate.
* ``clairvoyant``: ``coordinated``'s choice, then best responses on the *true* state and the
  true future of the next ``horizon`` steps (bandwidth, load, arrivals and departures),
  receding-horizon. It is a reference, not a bound: best responses find a local optimum of the
  joint plan, and plans are held fixed over the horizon.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from adaptive.model.shared_chain import ClusterState

__all__ = ["Clairvoyant", "Coordinated", "DeviceOnly", "FixedPlan", "FullOffload", "Greedy",
           "Hysteresis", "MultiActor", "MultiClientHeuristic", "StaticHindsight", "make_multi_heuristic"]


class MultiClientHeuristic:
    """Base: reads the env's model, observation layout and configuration.

    Args:
        env: A :class:`~envs.multi_client.MultiClientEnv` (wrapped or not).
    """

    name = "heuristic"

    def __init__(self, env: Any) -> None:
        u = env.unwrapped
        self.env = u
        self.chain = u.chain
        self.spec = u.obs_spec
        self.config = u.config
        self.ref_latency_ms = u.ref_latency_ms
        self.ref_energy_j = u.ref_energy_j
        self.num_clients, self.num_plans = self.spec.num_clients, self.spec.num_plans

    def begin_episode(self, env: Any) -> None:
        """Called after each reset (default: nothing)."""

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: Any = None,
                deterministic: bool = True, action_masks: np.ndarray | None = None) -> tuple[np.ndarray, Any]:
        """Return ``(plan per client slot, state)``."""
        obs = np.asarray(observation, np.float32)
        mask = None if action_masks is None else np.asarray(action_masks, bool).reshape(self.num_clients, -1)
        return self.act(obs, mask), state

    def act(self, obs: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """``(K,)`` plan indices."""
        raise NotImplementedError

    # shared helpers

    def seen(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        """The observation's parts in their units (see :meth:`ClusterObservation.decode`)."""
        return self.spec.decode(obs)

    def sustainable(self, seen: dict[str, np.ndarray]) -> np.ndarray:
        """``(K, P)``: the client's own edge and uplink keep up with its frame rate on this plan."""
        chain, K = self.chain, self.num_clients
        slow = chain.slowdown(seen["edge_load"][None], seen["accel_load"][None])[0]  # (K, D)
        kind = chain.edge_kind
        edge_ms = chain.exec_ms[kind, :, 0] * slow[:, :1] + chain.proc_ms[kind, :, 0]  # (K, P)
        bw = seen["bandwidth_mbps"][:, -1:]
        wire_ms = chain.uplink_bits[None, :] / (bw * 1e3)
        rate = seen["rate_rps"].reshape(K, 1)
        return (rate * edge_ms < 1e3) & (rate * wire_ms < 1e3)

    def cost(self, out: Any) -> np.ndarray:
        """``(E,)`` the env's per-frame cost (minus its reward) of step outcomes."""
        served = out.offered - out.dropped
        lat = np.where(served > 0, out.latency_ms, 0.0)
        total = (served * lat).sum(-1) / self.ref_latency_ms + self.config.drop_penalty * out.dropped.sum(-1)
        if self.config.energy_weight:
            total = total + self.config.energy_weight * (served * out.energy_j).sum(-1) / self.ref_energy_j
        return total / np.maximum(out.offered.sum(-1), 1e-9)

    def rollout(self, trial: np.ndarray, state: ClusterState,
                steps: list[dict[str, np.ndarray]]) -> np.ndarray:
        """``(E,)`` summed cost of joint plans ``trial`` ``(E, K)`` over the simulated steps.

        ``steps``: per step the conditions ``active``, ``rate``, ``bw``, ``edge_load`` ``(K,)`` and
        ``accel_load`` ``(M,)``, shared by every trial.
        """
        E = len(trial)
        st = ClusterState(*(np.broadcast_to(x, (E, *x.shape)).copy() for x in state))
        total = np.zeros(E)
        tile = lambda x: np.broadcast_to(x, (E, *np.shape(x)))  # noqa: E731
        for s in steps:
            st, out = self.chain.step(st, trial, tile(s["active"]), tile(s["rate"]), tile(s["bw"]),
                                      tile(s["edge_load"]), tile(s["accel_load"]), self.config.dt_s,
                                      self.env.core.deadline_ms[0])
            total += self.cost(out)
        return total

    def true_steps(self, start: int, stop: int) -> list[dict[str, np.ndarray]]:
        """The episode's true conditions at steps ``start..stop-1``, as :meth:`rollout` takes them."""
        truth = self.env.core.truth(start, stop)
        return [{key: x[u] for key, x in truth.items()} for u in range(len(truth["bw"]))]


def _allowed(mask: np.ndarray | None, k: int, P: int) -> np.ndarray:
    return np.ones(P, bool) if mask is None else mask[k]


class DeviceOnly(MultiClientHeuristic):
    """Every client runs the whole model on its own edge device (plan 0)."""

    name = "device-only"

    def act(self, obs: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """Zeros."""
        return np.zeros(self.num_clients, np.int64)


class FullOffload(MultiClientHeuristic):
    """Every client offloads all it may, the best way for it alone.

    Among the candidates with the fewest blocks on the edge (and no parallel section, which keeps
    rows on the edge), the one predicted fastest for the client alone (its codec and where the rest
    runs).
    """

    name = "full-offload"

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        plans = self.env.candidates.plans
        splits = np.asarray(plans.splits)
        self.offload = splits[:, 0] == splits[:, 0].min()
        if plans.stop is not None:  # a parallel section keeps a band of rows on the edge
            self.offload &= np.asarray(plans.stop) == 0

    def act(self, obs: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """The best offloading plan for every present client."""
        seen = self.seen(obs)
        pred = np.where(self.offload[None], seen["predicted_ms"], np.inf)
        return np.where(seen["active"], np.argmin(pred, axis=1), 0)


class Greedy(MultiClientHeuristic):
    """Each client alone: least predicted latency on an idle cluster, among plans it can sustain."""

    name = "greedy"

    def choose(self, seen: dict[str, np.ndarray], mask: np.ndarray | None) -> np.ndarray:
        """``(K,)`` each client's own best plan, and the predicted latency of every plan."""
        pred = seen["predicted_ms"].copy()
        ok = self.sustainable(seen)
        ok[~ok.any(axis=1)] = True  # nothing keeps up: least latency regardless
        pred[~ok] = np.inf
        if mask is not None:
            pred[~mask] = np.inf
        choice = np.argmin(pred, axis=1)
        return np.where(seen["active"], choice, 0)

    def act(self, obs: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """Per-client argmin."""
        return self.choose(self.seen(obs), mask)


class Hysteresis(Greedy):
    """``greedy``, switching a client only after ``min_dwell`` steps and for a gain above ``margin``.

    Args:
        env: The env.
        min_dwell: Steps a client's plan stays before it may change.
        margin: Relative predicted gain a change needs.
    """

    name = "hysteresis"

    def __init__(self, env: Any, min_dwell: int = 3, margin: float = 0.05) -> None:
        super().__init__(env)
        self.min_dwell, self.margin = min_dwell, margin
        self.begin_episode(env)

    def begin_episode(self, env: Any) -> None:
        """Forget the plans in force."""
        self._plans = np.zeros(self.num_clients, np.int64)
        self._dwell = np.zeros(self.num_clients, np.int64)

    def act(self, obs: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """Keep each client's plan unless the best is clearly better and its dwell has passed."""
        seen = self.seen(obs)
        best = self.choose(seen, mask)
        pred = seen["predicted_ms"]
        rows = np.arange(self.num_clients)
        gain = pred[rows, self._plans] - pred[rows, best]
        allowed = np.ones_like(best, bool) if mask is None else mask[rows, self._plans]
        move = ~seen["active"] | ~allowed | ((self._dwell >= self.min_dwell)
                                              & (gain > self.margin * pred[rows, self._plans]))
        plans = np.where(move, best, self._plans)
        self._dwell = np.where(plans == self._plans, self._dwell + 1, 0)
        self._plans = plans
        return plans


class Coordinated(Greedy):
    """Best-response iterations over the shared queues, from the observation.

    Args:
        env: The env.
        horizon: Steps simulated for each candidate joint plan (the state held as observed).
        rounds: Moves per present client at most.
    """

    name = "coordinated"

    def __init__(self, env: Any, horizon: int = 2, rounds: int = 3) -> None:
        super().__init__(env)
        self.horizon, self.rounds = horizon, rounds

    def act(self, obs: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """Start from ``greedy``, then let each client best-respond to the others."""
        state, steps = self.observed(obs)
        return self.best_response(self.choose(self.seen(obs), mask), state, steps, mask)

    def observed(self, obs: np.ndarray) -> tuple[ClusterState, list[dict[str, np.ndarray]]]:
        """The backlogs an observation shows, and its conditions held for ``horizon`` steps."""
        seen = self.seen(obs)
        bw = seen["bandwidth_mbps"][:, -1]
        now = dict(active=seen["active"], rate=seen["rate_rps"], bw=bw, edge_load=seen["edge_load"],
                   accel_load=seen["accel_load"])
        state = ClusterState(seen["edge_wait_ms"], seen["uplink_wait_ms"] * bw * 1e3, seen["accel_wait_ms"],
                             seen["link_wait_ms"])
        return state, [now] * self.horizon

    def best_response(self, plans: np.ndarray, state: ClusterState, steps: list[dict[str, np.ndarray]],
                      mask: np.ndarray | None) -> np.ndarray:
        """Improve ``plans`` one client at a time; ``steps``: the conditions of each simulated step.

        Each iteration scores every client's every alternative in one batched rollout and moves the
        client whose best alternative gains most; it stops when nobody gains or after ``rounds``
        moves per present client.
        """
        K, P = self.num_clients, self.num_plans
        plans = plans.copy()
        active = steps[0]["active"]
        movers = np.flatnonzero(active)
        if not len(movers):  # nobody present (a live cluster whose clients are all idle)
            return np.zeros(K, np.int64)
        allowed = np.ones((K, P), bool) if mask is None else mask
        for _ in range(self.rounds * max(len(movers), 1)):
            trial = np.repeat(plans[None], len(movers) * P, axis=0)  # (k, p) → row k·P + p
            trial[np.arange(len(trial)), np.repeat(movers, P)] = np.tile(np.arange(P), len(movers))
            cost = self.rollout(trial, state, steps).reshape(len(movers), P)
            cost[~allowed[movers]] = np.inf
            now = cost[np.arange(len(movers)), plans[movers]]
            best = np.argmin(cost, axis=1)
            gain = now - cost[np.arange(len(movers)), best]
            j = int(np.argmax(gain))
            if not gain[j] > 1e-12:
                break
            plans[movers[j]] = best[j]
        return np.where(active, plans, 0)

class Clairvoyant(Coordinated):
    """``coordinated``, then improved on the true state and the true next ``horizon`` steps (a reference)."""

    name = "clairvoyant"

    def __init__(self, env: Any, horizon: int = 4, rounds: int = 3) -> None:
        super().__init__(env, horizon, rounds)
        self._observed = Coordinated(env)

    def act(self, obs: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """Best responses on the truth."""
        core = self.env.core
        t = int(core.t[0])
        state = ClusterState(*(x[0] for x in core.state))
        start = self._observed.act(obs, mask)  # the observed optimum, then improved on the truth
        return self.best_response(start, state, self.true_steps(t, t + self.horizon), mask)


class StaticHindsight(MultiClientHeuristic):
    """The one plan for every client, all episode, with the least true cost (chosen in hindsight)."""

    name = "static-hindsight"
    choice = 0  # the plan every client keeps this episode (set by begin_episode)

    def begin_episode(self, env: Any) -> None:
        """Simulate the episode once per candidate, all candidates at once, and keep the best."""
        self.env = env.unwrapped
        plans = np.repeat(np.arange(self.num_plans)[:, None], self.num_clients, axis=1)
        empty = ClusterState(*(x[0] for x in self.chain.initial_state(1)))
        total = self.rollout(plans, empty, self.true_steps(0, self.config.max_steps))
        self.choice = int(np.argmin(total))

    def act(self, obs: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """The fixed plan for every present client."""
        return np.where(self.seen(obs)["active"], self.choice, 0)


class FixedPlan(MultiClientHeuristic):
    """Plan ``choice`` for every present client, always (a static baseline chosen elsewhere).

    Args:
        env: The env.
        choice: The plan index.
    """

    name = "static"

    def __init__(self, env: Any, choice: int = 0) -> None:
        super().__init__(env)
        if not 0 <= choice < self.num_plans:
            raise ValueError(f"plan {choice} is not among the {self.num_plans} candidates")
        self.choice = int(choice)

    def act(self, obs: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """The fixed plan for every present client."""
        return np.where(self.seen(obs)["active"], self.choice, 0)


class MultiActor:
    """A trained policy's numpy actor on ``adaptive/MultiClient-v0``: a plan per client slot.

    The network gives ``K·P`` logits (MaskablePPO's ``MultiDiscrete`` head); each slot takes its
    best allowed plan.

    Args:
        net: The actor (:class:`adaptive.model.mlp.MlpPolicyNet`).
        num_clients: ``K``.
    """

    name = "ppo"

    def __init__(self, net: Any, num_clients: int) -> None:
        if net.num_actions % num_clients:
            raise ValueError(f"the actor gives {net.num_actions} logits, not one set per each of "
                             f"{num_clients} clients")
        self.net, self.num_clients = net, num_clients

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: Any = None,
                deterministic: bool = True, action_masks: np.ndarray | None = None) -> tuple[np.ndarray, Any]:
        """Return ``(plan per client slot, state)``."""
        z = self.net.logits(observation).reshape(self.num_clients, -1)
        if action_masks is not None:
            mask = np.asarray(action_masks, bool).reshape(z.shape)
            z = np.where(mask | ~mask.any(axis=1, keepdims=True), z, -np.inf)
        return z.argmax(axis=1), state


def make_multi_heuristic(name: str, env: Any, **kwargs: Any) -> MultiClientHeuristic:
    """Build a heuristic for a :class:`~envs.multi_client.MultiClientEnv`."""
    classes = {c.name: c for c in (DeviceOnly, FullOffload, Greedy, Hysteresis, Coordinated, StaticHindsight,
                                   Clairvoyant)}
    if name not in classes:
        raise ValueError(f"unknown multi-client policy '{name}' (expected one of {', '.join(classes)})")
    return classes[name](env, **kwargs)
