"""Split inference under changing bandwidth, load, memory and clients, on the latency model."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from adaptive.model.latency import ConditionBatch, Conditions, SplitModel
from adaptive.model.observation import CandidatePlans, ObservationSpec, PolicySpec, env_candidate_plans
from adaptive.model.plans import PlanArray
from adaptive.model.profiles import resolve_device, resolve_model, scaled_profiles
from envs.config import EnvConfig
from envs.episodes import link_series, node_process, pinned_links
from envs.traces import load_traces, resample, shipped_traces

__all__ = ["SplitInferenceEnv", "make_split_inference"]


class SplitInferenceEnv(gym.Env):
    """Choose where to split a DNN across a chain of devices, step by step, as conditions change.

    ## Description

    A model (default MobileNetV2) runs across a chain of devices (default Raspberry Pi 4 → Jetson
    Nano → Jetson AGX Orin).
    Every step (``dt_s``, default 0.25 s: the live source decides per request, a few times a
    second) the agent picks a split plan from a candidate set. Link
    bandwidth follows real measured traces (or synthetic ones), each node's background CPU load and
    memory use follow mean-reverting random processes, and clients sharing the accelerator join and
    leave. The step's latency and energy come from the analytical model of seed 000
    (:mod:`adaptive.model.latency`) under the *true* state, where a transfer gets the bandwidth
    integrated over its own duration (one begun in an outage finishes when the link recovers);
    the agent observes what monitors report: noisy, ``staleness_steps`` old (default one step,
    about the age of the live source's uplink estimate), instantaneous.
    Switching plans costs ``switch_cost_ms`` of latency (default 0: live plans travel with each
    request, so a switch needs no handshake).

    ## Action Space

    ``Discrete(P)``: index of a candidate plan (``P`` ≤ ``max_plans``). Candidates are the plans
    that are latency-optimal somewhere on a grid of bandwidth × load × clients, plus device-only
    (action 0) and full offload (action 1). Plans that do not fit the reported memory are masked:
    :meth:`action_masks` (used by sb3-contrib's ``MaskablePPO``).

    ## Observation Space

    ``Box(low, high, (2D + M·H + 2P + 2,), float32)`` for ``D`` devices, ``M = D − 1`` links,
    ``H = history``:

    | Num | Observation | Unit | Min | Max |
    |-----|-------------|------|-----|-----|
    | 0..D−1 | reported background CPU load per device | fraction | 0 | 1 |
    | D..2D−1 | reported available memory / profile memory per device | fraction | 0 | 1 |
    | 2D..2D+MH−1 | reported bandwidth per link, oldest first, log-scaled 0.1..10⁴ Mbit/s | — | 0 | 1 |
    | 2D+MH | clients / ``max_clients`` | — | 0 | 1 |
    | next P | predicted latency per candidate, ``tanh(log(ms/ref))``, 1 if unfit | — | −1 | 1 |
    | next P | one-hot of the plan in force | — | 0 | 1 |
    | last | steps since the last switch / 10 (capped) | — | 0 | 1 |

    The same mapping (:class:`adaptive.model.observation.ObservationSpec`) drives the live controller.

    ## Rewards

    ``−latency/ref − energy_weight·energy/ref_energy − slo_penalty·[latency > slo_ms]
    − infeasible_penalty·[plan does not fit]``, where latency includes the switch cost and the
    references are the device-only latency and energy at no load.

    ## Starting State

    A trace per link at a random offset, scaled to a median drawn log-uniformly from
    ``scaling.target_median_mbps``; load, memory and clients drawn from their processes' stationary
    ranges; a random feasible plan in force.

    ``reset(options={"trace": name})`` puts that trace on every link (used by evaluation), at a
    random offset, or with step 0 at ``"start_s"`` seconds into it; ``{"links": [name, 1000.0]}``
    gives each link its own trace or a fixed rate (used to replay a live run).

    ## Episode End

    Never terminates; ``gymnasium.make`` wraps it in a ``TimeLimit`` of the config's ``max_steps``
    (default 800: 200 s).

    ## Arguments

    ``gymnasium.make("adaptive/SplitInference-v0", config=None, **overrides)``: ``config`` is an
    :class:`~envs.config.EnvConfig`, a dict, or a YAML path; keyword arguments override single keys.

    ## Info

    ``latency_ms``, ``energy_j``, ``switched``, ``feasible``, ``plan``, ``bandwidth_mbps`` (true).

    ## Version History

    * v0: initial version.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, config: EnvConfig | dict | str | None = None, render_mode: str | None = None,
                 **overrides: Any) -> None:
        self.render_mode = render_mode  # accepted for API compatibility; the env does not render
        cfg = self.config = EnvConfig.resolve(config, overrides)
        profile, devices = resolve_model(cfg.model_profile), [resolve_device(d) for d in cfg.devices]
        profiled = SplitModel(profile, devices)
        self.candidates: CandidatePlans = env_candidate_plans(cfg)
        self.model = profiled
        if cfg.device_scales:  # the devices as measured: costs change, the action set does not
            names = [f"d{i}" for i in range(len(devices))]
            self.model = SplitModel(*scaled_profiles(profile, devices, list(cfg.device_scales), names))
        self.model.check_plans(self.candidates.plans)  # once: every episode evaluates them unchecked
        D, M, P = self.model.num_devices, self.model.num_devices - 1, len(self.candidates)
        self.num_devices, self.num_links, self.num_plans = D, M, P
        nominal = profiled.evaluate(PlanArray.from_splits([[self.model.num_blocks] * M]),
                                      Conditions(bandwidth_mbps=1.0))
        self.ref_latency_ms = float(cfg.ref_latency_ms or nominal.latency_ms[0])
        self.ref_energy_j = max(float(nominal.energy_j[0]), 1e-9)
        self.obs_spec = ObservationSpec(D, P, self.ref_latency_ms, history=cfg.history,
                                        max_clients=cfg.max_clients)
        low, high = self.obs_spec.bounds()
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)
        self.action_space = gym.spaces.Discrete(P)
        traces = load_traces(cfg.traces) if cfg.traces else shipped_traces()
        self._traces = [resample(t, cfg.dt_s) for t in traces]
        self._trace_names = [t.name for t in traces]
        self._memory = np.array([d.memory_mb for d in self.model.devices])
        self._link_bits = self.model.link_bits(self.candidates.plans)
        self._horizon = max(round(120 / cfg.dt_s), 1)  # steps a transfer may take through an outage (120 s)
        self._t = 0
        self._current = 0
        self._dwell = 0

    # ------------------------------------------------------------------ episode generation

    def _clients(self, steps: int, rng: np.random.Generator) -> np.ndarray:
        cfg = self.config
        n = int(rng.integers(1, cfg.max_clients + 1))
        out = np.empty(steps)
        moves = rng.random(steps) < cfg.client_change_prob
        ups = rng.random(steps) < 0.5
        at = 0
        for t in np.flatnonzero(moves):  # the count holds between moves: fill each run at once
            out[at:t] = n
            n = min(cfg.max_clients, n + 1) if ups[t] else max(1, n - 1)
            at = t
        out[at:] = n
        return out

    def _effective_bandwidth(self, bw: np.ndarray, steps: int) -> np.ndarray:
        """``(T, P, M)``: the rate each candidate's transfers really get.

        Integrates the bandwidth series (a step function, ``dt_s`` per sample) forward from the
        transfer's start until its bits are through: a transfer begun in an outage finishes when the
        link recovers, not at the outage's rate. Capped at the horizon.
        """
        dt = self.config.dt_s
        cap = bw * 1e6 * dt  # bits each step can carry
        cum = np.vstack([np.zeros((1, bw.shape[1])), np.cumsum(cap, axis=0)])
        eff = np.broadcast_to(bw[:steps, None, :], (steps, len(self.candidates), bw.shape[1])).copy()
        t = np.arange(steps)[:, None]
        for m in range(bw.shape[1]):  # all the plans that use link m at once
            plans = np.flatnonzero(self._link_bits[:, m])
            if plans.size == 0:
                continue
            need = self._link_bits[plans, m][None, :]  # (1, P_m)
            target = cum[:steps, m][:, None] + need  # (T, P_m)
            k = np.searchsorted(cum[:, m], target, side="left")
            done = k < len(cum)
            k = np.minimum(k, len(cum) - 1)
            within = (target - cum[k - 1, m]) / np.maximum(cap[k - 1, m] / dt, 1e-9)
            seconds = np.where(done, (k - 1 - t) * dt + within, len(cap) * dt - t * dt)
            eff[:, plans, m] = need / np.maximum(seconds, 1e-9) / 1e6
        return eff

    def _generate(self, rng: np.random.Generator, pinned: list[int | float] | None = None,
                  start_s: float | None = None) -> None:
        """Precompute one episode: true and reported states, costs of every candidate, observations."""
        cfg = self.config
        lag = cfg.staleness_steps
        warm = cfg.history + lag  # steps before step 0 that the observation history needs
        n = cfg.max_steps + warm
        start = None if start_s is None else round(start_s / cfg.dt_s) - warm  # step 0 at start_s
        bw_ahead, self.episode_traces = link_series(self._traces, self._trace_names, cfg, self.num_links,
                                                    n + self._horizon, rng, pinned, start)
        bw = bw_ahead[:n]
        load = node_process(cfg.cpu_load, self.num_devices, n, rng)
        used = node_process(cfg.memory_used, self.num_devices, n, rng)
        avail = self._memory * (1 - used)
        clients = self._clients(n, rng)
        steps = slice(warm, n)
        T = cfg.max_steps
        truth = ConditionBatch(bw[steps], np.zeros((T, self.num_links)), load[steps], clients[steps],
                               avail[steps])
        # what the monitors report: lagged by `staleness_steps`, with noise
        rep_bw = bw * np.exp(rng.normal(0, cfg.bw_noise, bw.shape))
        rep_load = np.clip(load + rng.normal(0, cfg.load_noise, load.shape), 0, 1)
        idx = np.arange(warm, n) - lag
        hist = np.stack([rep_bw[idx - cfg.history + 1 + h] for h in range(cfg.history)], axis=1)
        reported = ConditionBatch(hist[:, -1], truth.propagation_ms, rep_load[idx], clients[idx], avail[idx])
        # ground truth: each candidate under the rate its own transfers really get (per-plan
        # bandwidth); one model call covers it and the reported state
        eff = self._effective_bandwidth(bw_ahead[warm:], T)
        seen_bw = np.broadcast_to(reported.bandwidth_mbps[:, None, :], eff.shape)
        pred = self.model.evaluate_unchecked(self.candidates.plans, ConditionBatch(  # checked at __init__
            np.concatenate([eff, seen_bw]),
            *(np.concatenate(parts) for parts in zip(truth[1:], reported[1:], strict=True))))
        self._lat, self._energy = pred.latency_ms[:T].copy(), pred.energy_j[:T].copy()
        self._feasible = pred.feasible[:T].copy()
        self._bw_true = bw[steps]
        seen = pred._replace(latency_ms=pred.latency_ms[T:], feasible=pred.feasible[T:])
        self._masks = seen.feasible.copy()
        self._masks[~self._masks.any(axis=1)] = True  # never leave an agent without an action
        static = self.obs_spec.static_part(rep_load[idx], avail[idx] / self._memory, hist,
                                           clients[idx], seen.latency_ms, seen.feasible)
        # observation rows without plan and dwell; step() copies one and sets two entries
        self._rows = np.zeros((cfg.max_steps, self.obs_spec.size), np.float32)
        self._rows[:, : static.shape[1]] = static
        self._plan_offset = static.shape[1]
        # every reward but the switch cost and the SLO term, so step() only looks it up
        self._reward = -self._lat / self.ref_latency_ms - cfg.infeasible_penalty * ~self._feasible
        if cfg.energy_weight:
            self._reward -= cfg.energy_weight * self._energy / self.ref_energy_j
        # kept for heuristics' tests and the oracle
        self.reported_conditions = reported
        self.true_conditions = truth

    # ------------------------------------------------------------------ Gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode (see *Starting State*)."""
        super().reset(seed=seed)
        pinned = pinned_links(options, self._trace_names, self.num_links)
        start_s = options.get("start_s") if options and pinned is not None else None
        self._generate(self.np_random, pinned, None if start_s is None else float(start_s))
        self._t = 0
        valid = np.flatnonzero(self._masks[0])
        self._current = int(valid[self.np_random.integers(len(valid))])
        self._dwell = 0
        return self._observe(0), {"traces": list(self.episode_traces), "plan": self._current}

    @property
    def current_plan(self) -> int:
        """The index of the plan in force (the previous step's action, or the episode's start)."""
        return self._current

    @property
    def trace_names(self) -> list[str]:
        """Names of the traces episodes draw from."""
        return list(self._trace_names)

    def _observe(self, t: int) -> np.ndarray:
        obs = self._rows[t].copy()
        obs[self._plan_offset + self._current] = 1.0
        obs[-1] = self._dwell / self.obs_spec.dwell_norm if self._dwell < self.obs_spec.dwell_norm else 1.0
        return obs

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply the plan for one step; see *Rewards*."""
        a = int(action)
        t = self._t
        cfg = self.config
        if t >= cfg.max_steps:  # used without TimeLimit: continue with a fresh stretch
            self._generate(self.np_random)
            t = self._t = 0
        switched = a != self._current
        latency = self._lat.item(t, a)
        reward = self._reward.item(t, a)
        if switched:
            latency += cfg.switch_cost_ms
            reward -= cfg.switch_cost_ms / self.ref_latency_ms
            self._dwell = 0
        else:
            self._dwell += 1
        if cfg.slo_ms is not None and latency > cfg.slo_ms:
            reward -= cfg.slo_penalty
        self._current = a
        self._t = t + 1
        obs = self._observe(t + 1 if t + 1 < cfg.max_steps else t)
        info = {"latency_ms": latency, "energy_j": self._energy.item(t, a), "switched": switched,
                "feasible": self._feasible.item(t, a), "plan": a, "bandwidth_mbps": self._bw_true[t].tolist()}
        return obs, reward, False, False, info

    def action_masks(self) -> np.ndarray:
        """Plans that fit the reported memory at the current step (``MaskablePPO`` calls this)."""
        return self._masks[min(self._t, self.config.max_steps - 1)]

    # ------------------------------------------------------------------ for evaluation

    def episode_costs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """True ``(latency_ms, energy_j, feasible)`` of every candidate at every step, ``(T, P)``."""
        return self._lat, self._energy, self._feasible

    def policy_spec(self, policy: str = "ppo", notes: str = "") -> PolicySpec:
        """The sidecar describing this env's observation and action mapping."""
        cfg = self.config.to_dict()
        return PolicySpec(model_profile=self.config.model_profile, devices=tuple(self.config.devices),
                          plans=self.candidates.to_json(), codec_names=self.candidates.codec_names,
                          observation=self.obs_spec, env=cfg, policy=policy, notes=notes)


def make_split_inference(config: EnvConfig | dict | str | None = None, render_mode: str | None = None,
                         **overrides: Any) -> gym.Env:
    """Entry point of ``adaptive/SplitInference-v0``: the env in a ``TimeLimit`` of ``max_steps``."""
    env = SplitInferenceEnv(config, render_mode, **overrides)
    return gym.wrappers.TimeLimit(env, max_episode_steps=env.config.max_steps)
