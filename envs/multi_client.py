"""Several clients, each on its own edge device, share the accelerators: a plan per client per step.

:class:`MultiClientCore` holds ``E`` episodes as arrays and steps them all in one numpy call.
:class:`MultiClientEnv` is one of them behind the Gymnasium API (``adaptive/MultiClient-v0``);
:class:`envs.multi_client_vec.MultiClientVecEnv` is ``E`` of them behind Stable-Baselines3's
``VecEnv`` API, for training without one Python env object per episode (it lives apart so that this
module, and ``gymnasium.make``, do not import Stable-Baselines3 and torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from adaptive.model.latency import Conditions, SplitModel
from adaptive.model.observation import MULTI_ENV, CandidatePlans, PolicySpec, env_candidate_plans
from adaptive.model.plans import PlanArray
from adaptive.model.profiles import resolve_device, resolve_model, scaled_profiles
from adaptive.model.shared_chain import ClusterObservation, SharedChain
from envs.config import MultiClientConfig, NodeProcess
from envs.episodes import link_series, node_process, pinned_links
from envs.traces import load_traces, resample, shipped_traces

__all__ = ["MultiClientCore", "MultiClientEnv", "make_multi_client"]


class MultiClientCore:
    """``E`` multi-client episodes as arrays; see :class:`MultiClientEnv` for the dynamics.

    Args:
        config: The configuration (see :class:`~envs.config.MultiClientConfig`).
        num_envs: Episodes stepped together.
    """

    def __init__(self, config: MultiClientConfig, num_envs: int = 1) -> None:
        cfg = self.config = config
        profile = resolve_model(cfg.model_profile)
        devices = [resolve_device(d) for d in cfg.devices]
        single = SplitModel(profile, devices)
        self.candidates: CandidatePlans = env_candidate_plans(cfg)
        if cfg.device_scales:
            names = [f"d{i}" for i in range(len(devices))]
            profile, devices = scaled_profiles(profile, devices, list(cfg.device_scales), names)
        K, M = cfg.max_clients, len(devices) - 1
        self.chain = SharedChain(profile, [devices[0]] * K, devices[1:], self.candidates.plans,
                                 accel_link_mbps=cfg.accel_link_mbps, link_delay_ms=cfg.link_delay_ms or 0.0)
        self.num_envs, self.num_clients, self.num_accels = num_envs, K, M
        self.num_plans = len(self.candidates)
        device_only = PlanArray.from_splits([[single.num_blocks] * M])
        nominal = single.evaluate(device_only, Conditions(bandwidth_mbps=1.0))
        self.ref_latency_ms = float(cfg.ref_latency_ms or nominal.latency_ms[0])
        self.ref_energy_j = max(float(nominal.energy_j[0]), 1e-9)
        self.obs_spec = ClusterObservation(K, self.num_plans, M, self.ref_latency_ms, cfg.history,
                                           cfg.client_rate_rps[1])
        traces = load_traces(cfg.traces) if cfg.traces else shipped_traces()
        self._traces = [resample(t, cfg.dt_s) for t in traces]
        self.trace_names = [t.name for t in traces]
        T, E, S = cfg.max_steps, num_envs, 5 + cfg.history
        self._active = np.zeros((E, T + 1, K), bool)
        self._rate = np.zeros((E, T + 1, K))
        self._bw = np.ones((E, T, K))
        self._bw_seen = np.ones((E, T + 1, K))
        self._edge_load = np.zeros((E, T, K))
        self._accel_load = np.zeros((E, T, M))
        self._accel_seen = np.zeros((E, T + 1, M))
        self._edge_seen = np.zeros((E, T + 1, K))
        self._seen_i = np.ones((E, T + 1, K), np.int64)  # where the seen uplink falls on the comm table
        self._seen_w = np.zeros((E, T + 1, K))
        self._grid_i = np.ones((E, T, K), np.int64)  # where the true uplink falls on the comm table
        self._grid_w = np.zeros((E, T, K))
        self._slow = np.ones((E, T, K, M + 1))  # true computation slowdown by background load
        self._slots = np.zeros((E, T + 1, K, S), np.float32)
        self.state = self.chain.initial_state(E)
        self.batch = np.zeros((E, M))
        self.plans = np.zeros((E, K), np.int64)
        self.deadline_ms = np.full((E, K), cfg.deadline_ms)  # per slot: a script may set its own
        self.t = np.zeros(E, np.int64)
        self.episode_traces: list[list[str]] = [[] for _ in range(E)]
        self._rows = np.arange(E)

    # ------------------------------------------------------------------ episodes

    def generate(self, envs: Sequence[int] | int, rng: np.random.Generator,
                 options: dict[str, Any] | None = None) -> None:
        """Draw new episodes for ``envs``: who is present, their rates, uplinks and loads.

        Everything the observation needs but the backlogs is precomputed, for all the episodes
        at once (the batched env resets them together).
        """
        idx = np.atleast_1d(np.asarray(envs, np.int64))
        cfg, K, M, N = self.config, self.num_clients, self.num_accels, len(idx)
        options = options or {}
        lag, H, T = cfg.staleness_steps, cfg.history, cfg.max_steps
        warm = H + lag
        n = T + 1 + warm
        pinned = pinned_links(options, self.trace_names, self.num_clients, "client slot")
        start = options.get("start_s")
        start = None if start is None or pinned is None else round(float(start) / cfg.dt_s) - warm
        active, rate, bw = np.empty((N, n, K), bool), np.empty((N, n, K)), np.empty((N, n, K))
        script = options.get("script")
        if script is not None:  # given conditions (a scenario): the warm-up repeats the first step,
            # and the observation after the last step sees the last step again
            given = _scripted(script, T, K, M, cfg.deadline_ms)
            pad = lambda x: np.concatenate([np.repeat(x[:1], warm, axis=0), x, x[-1:]], axis=0)  # noqa: E731
            active[:], rate[:], bw[:] = pad(given["active"]), pad(given["rate"]), pad(given["bw"])
            load = np.broadcast_to(pad(np.concatenate([given["edge_load"], given["accel_load"]], axis=1)),
                                   (N, n, K + M)).copy()
            for e in idx:
                self.episode_traces[e] = [f"script:{k}" for k in range(K)]
            self.deadline_ms[idx] = given["deadline_ms"]
        else:
            self.deadline_ms[idx] = cfg.deadline_ms
        for j, e in enumerate(idx if script is None else ()):
            active[j], rate[j] = self._presence(n, rng, options)
            bw[j], self.episode_traces[e] = link_series(self._traces, self.trace_names, cfg, K, n, rng,
                                                        pinned, start)
        if script is None:
            mean = np.resize(np.asarray(cfg.cpu_load.mean, float), M + 1)
            proc = NodeProcess(((mean[0],) * K + tuple(mean[1:])) * N, cfg.cpu_load.sd,
                               cfg.cpu_load.reversion, cfg.cpu_load.low, cfg.cpu_load.high)
            load = node_process(proc, N * (K + M), n, rng).reshape(n, N, K + M).transpose(1, 0, 2)
        rep_bw = bw * np.exp(rng.normal(0, cfg.bw_noise, bw.shape))
        rep_load = np.clip(load + rng.normal(0, cfg.load_noise, load.shape), 0, 1)
        steps = slice(warm, n)
        seen = np.arange(warm, n) - lag  # what is seen at each step: `lag` steps old
        hist = np.stack([rep_bw[:, seen - H + 1 + h] for h in range(H)], axis=-1)  # (N, T+1, K, H)
        seen_load = rep_load[:, seen]
        self._active[idx], self._rate[idx] = active[:, steps], rate[:, steps]
        self._bw[idx], self._bw_seen[idx] = bw[:, warm : warm + T], hist[..., -1]
        true = load[:, warm : warm + T]
        self._edge_load[idx], self._accel_load[idx] = true[..., :K], true[..., K:]
        self._accel_seen[idx], self._edge_seen[idx] = seen_load[..., K:], seen_load[..., :K]
        self._grid_i[idx], self._grid_w[idx] = self.chain.grid_position(self._bw[idx])
        self._seen_i[idx], self._seen_w[idx] = self.chain.grid_position(hist[..., -1])
        self._slow[idx] = self.chain.slowdown(true[..., :K].reshape(-1, K),
                                              true[..., K:].reshape(-1, M)).reshape(N, T, K, M + 1)
        self._slots[idx] = self.obs_spec.slots(active[:, steps], rate[:, steps], seen_load[..., :K], hist)
        for queue in self.state:
            queue[idx] = 0.0
        self.batch[idx] = 0.0
        self.plans[idx] = 0
        self.t[idx] = 0

    def _presence(self, n: int, rng: np.random.Generator, options: dict[str, Any]
                  ) -> tuple[np.ndarray, np.ndarray]:
        """``(n, K)`` who is present and at what frame rate; clients join and leave at random."""
        cfg, K = self.config, self.num_clients
        lo, hi = cfg.client_rate_rps
        draw = lambda size: np.exp(rng.uniform(np.log(lo), np.log(hi), size))  # noqa: E731
        fixed_rate = options.get("rate_rps")
        if fixed_rate is not None:
            draw = lambda size: np.full(size, float(fixed_rate))  # noqa: E731
        rates = draw(K)
        fixed = options.get("clients")
        if fixed is not None:
            count = int(fixed)
            if not 1 <= count <= K:
                raise ValueError(f"clients: expected 1..{K}, found {fixed!r}")
            present = np.zeros(K, bool)
            present[:count] = True
            return np.broadcast_to(present, (n, K)).copy(), np.broadcast_to(rates, (n, K)).copy()
        present = np.zeros(K, bool)
        present[rng.permutation(K)[: int(rng.integers(cfg.min_clients, K + 1))]] = True
        active, rate = np.empty((n, K), bool), np.empty((n, K))
        moves = np.flatnonzero(rng.random(n) < cfg.client_change_prob)
        coin, pick = rng.random((2, len(moves)))
        fresh = draw(len(moves))
        at = 0
        for j, t in enumerate(moves):
            active[at:t], rate[at:t] = present, rates
            count = int(present.sum())
            if count < K and (count <= cfg.min_clients or coin[j] < 0.5):  # a client joins
                free = np.flatnonzero(~present)
                k = free[int(pick[j] * len(free))]
                present[k], rates[k] = True, fresh[j]
            elif count > cfg.min_clients:  # a client leaves
                here = np.flatnonzero(present)
                present[here[int(pick[j] * len(here))]] = False
            at = t
        active[at:], rate[at:] = present, rates
        return active, rate

    def truth(self, start: int, stop: int, e: int = 0) -> dict[str, np.ndarray]:
        """Episode ``e``'s true conditions at steps ``start..stop-1`` (for references in hindsight).

        Keys ``active``, ``rate``, ``bw``, ``edge_load`` (each ``(n, K)``) and ``accel_load`` ``(n, M)``.
        """
        steps = slice(start, min(stop, self.config.max_steps))
        return {"active": self._active[e, steps], "rate": self._rate[e, steps], "bw": self._bw[e, steps],
                "edge_load": self._edge_load[e, steps], "accel_load": self._accel_load[e, steps]}

    # ------------------------------------------------------------------ stepping

    def _at(self, t: np.ndarray) -> Any:
        """An index of each episode's step ``t``: a plain column while the episodes run in step."""
        return (slice(None), int(t[0])) if (t == t[0]).all() else (self._rows, t)

    def masks(self) -> np.ndarray:
        """``(E, K·P)``: every plan for a present client, only plan 0 for an empty slot."""
        E, K, P = self.num_envs, self.num_clients, self.num_plans
        active = self._active[self._at(np.minimum(self.t, self.config.max_steps))]  # (E, K)
        out = np.empty((E, K, P), bool)
        out[...] = active[:, :, None]
        out[:, :, 0] = True
        return out.reshape(E, K * P)

    def observe(self) -> np.ndarray:
        """``(E, size)`` observations at each episode's current step."""
        at = self._at(np.minimum(self.t, self.config.max_steps))
        bw, accel = self._bw_seen[at], self._accel_seen[at]
        predicted = self.chain.alone_ms(bw, self._edge_seen[at], accel,  # every plan alone, as seen
                                        grid_at=(self._seen_i[at], self._seen_w[at]))
        return self.obs_spec.assemble(self._slots[at], predicted, bw, accel, self.state, self.batch)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Apply ``(E, K)`` plans for one step; returns the rewards and the step's arrays."""
        cfg, t = self.config, self.t
        at = self._at(t)
        active = self._active[at]
        actions = np.where(active, actions, 0)
        self.state, out = self.chain.step(self.state, actions, active, self._rate[at], self._bw[at],
                                          self._edge_load[at], self._accel_load[at], cfg.dt_s,
                                          self.deadline_ms, slow=self._slow[at],
                                          grid_at=(self._grid_i[at], self._grid_w[at]))
        admitted = out.offered - out.dropped
        offered = out.offered.sum(axis=1)
        lat = np.where(admitted > 0, out.latency_ms, 0.0)
        cost = (admitted * lat).sum(axis=1) / self.ref_latency_ms + cfg.drop_penalty * out.dropped.sum(axis=1)
        if cfg.energy_weight:
            cost = cost + cfg.energy_weight * (admitted * out.energy_j).sum(axis=1) / self.ref_energy_j
        reward = -cost / np.maximum(offered, 1e-9)
        self.batch = out.batch
        self.plans = actions
        self.t = t + 1
        return reward, {"latency_ms": out.latency_ms, "admitted": admitted, "offered": out.offered,
                        "dropped": out.dropped, "energy_j": out.energy_j, "batch": out.batch,
                        "plans": actions, "active": active, "bandwidth_mbps": self._bw[at]}


def _scripted(script: Any, T: int, K: int, M: int, deadline_ms: float) -> dict[str, np.ndarray]:
    """Validate the ``script`` reset option: every step's true conditions, one array per key."""
    shapes = {"active": (T, K), "rate": (T, K), "bw": (T, K), "edge_load": (T, K), "accel_load": (T, M),
              "deadline_ms": (K,)}
    if not isinstance(script, dict) or not set(shapes) - {"deadline_ms"} <= set(script) <= set(shapes):
        raise ValueError(f"script: expected the keys {sorted(shapes)} (deadline_ms optional)")
    script = {"deadline_ms": np.full(K, deadline_ms), **script}
    out = {}
    for key, shape in shapes.items():
        x = np.asarray(script[key], bool if key == "active" else float)
        if x.shape != shape:
            raise ValueError(f"script: '{key}' must have shape {shape} (steps, slots), found {x.shape}")
        if key not in ("active", "deadline_ms") and not (np.isfinite(x).all() and (x >= 0).all()):
            raise ValueError(f"script: '{key}' must be finite and >= 0")
        out[key] = x
    if (out["bw"] <= 0).any() or (out["edge_load"] > 1).any() or (out["accel_load"] > 1).any():
        raise ValueError("script: bandwidths must be > 0 and loads in [0, 1]")
    if not (out["deadline_ms"] > 0).all():
        raise ValueError("script: deadlines must be > 0")
    return out


class MultiClientEnv(gym.Env):
    """Several clients, each on its own edge device, share a chain of accelerators.

    ## Description

    ``max_clients`` client slots (default 4), each an edge device (default Raspberry Pi 4) with
    its own uplink, following its own real trace, its own background load, and a camera-like
    stream of frames at its own rate (default 1–8 frames/s, drawn when it joins). They share the
    accelerators (default one Jetson Nano). Clients join and leave. Every step (``dt_s``, 0.25 s)
    the agent picks a plan for every client. The accelerators batch the clients that use them,
    work queues up where a resource cannot keep up, and a frame that could not meet the deadline
    (default 1 s) is dropped at its source (:mod:`adaptive.model.shared_chain`).

    ## Action Space

    ``MultiDiscrete([P] * K)``: a candidate plan per client slot. :meth:`action_masks` allows
    every plan for a present client and only plan 0 for an empty slot (the flattened ``K·P``
    mask ``MaskablePPO`` expects).

    ## Observation Space

    ``Box`` of :class:`adaptive.model.shared_chain.ClusterObservation`: per slot presence, rate, edge
    load, its backlogs (edge and uplink), its uplink history and each candidate's latency alone on
    the cluster; then the accelerators' load, backlog and batch, and the client count. Bandwidth and load are
    reported, noisy and ``staleness_steps`` old; backlogs are current.

    ## Rewards

    Minus the mean cost of the step's frames: ``latency / ref`` for a frame served,
    ``drop_penalty`` for a frame dropped, plus ``energy_weight · energy / ref_energy`` if set.

    ## Starting State

    Between ``min_clients`` and ``max_clients`` clients present, each uplink a trace at a random
    offset scaled as in ``adaptive/SplitInference-v0``, empty queues. ``reset(options=...)``
    accepts ``{"trace": name}`` (every uplink), ``{"links": [...]}`` (one trace or fixed rate per
    slot), ``"start_s"``, ``{"clients": n}`` (exactly ``n`` clients, none joining or leaving) and
    ``{"rate_rps": r}`` (every client at ``r`` frames/s). ``{"script": {...}}`` gives every step's
    true conditions instead (a scenario, :mod:`adaptive.experiments.scenario`): ``active``, ``rate``, ``bw``
    and ``edge_load`` as ``(max_steps, K)`` arrays, ``accel_load`` as ``(max_steps, M)`` and
    optionally ``deadline_ms`` per slot ``(K,)`` (default: the config's); telemetry noise and age
    still apply to what is observed.

    ## Episode End

    ``max_steps`` (default 800: 200 s), by the ``TimeLimit`` of :func:`make_multi_client`.

    ## Info

    ``latency_ms`` (mean over the frames served in the step, NaN if none), ``frames`` (served),
    ``offered``, ``dropped``, ``energy_j`` (per served frame), ``plan`` (per slot), ``active``,
    ``client_latency_ms``, ``client_frames`` and ``client_dropped`` (per slot), ``batch`` (per
    accelerator), ``bandwidth_mbps`` (true, per slot), ``switched``, ``feasible``,
    ``ignored`` (the slots whose plan was outside the mask: empty slots, which run nothing).

    ## Version History

    * v0: initial version.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, config: MultiClientConfig | dict | str | None = None, render_mode: str | None = None,
                 **overrides: Any) -> None:
        self.render_mode = render_mode
        self.config = MultiClientConfig.resolve(config, overrides)
        self.core = MultiClientCore(self.config, 1)
        low, high = self.core.obs_spec.bounds()
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)
        self.action_space = gym.spaces.MultiDiscrete([self.core.num_plans] * self.core.num_clients)
        self.candidates = self.core.candidates
        self.num_plans, self.num_clients = self.core.num_plans, self.core.num_clients
        self.obs_spec = self.core.obs_spec
        self.chain = self.core.chain
        self.ref_latency_ms = self.core.ref_latency_ms
        self.ref_energy_j = self.core.ref_energy_j

    @property
    def episode_traces(self) -> list[str]:
        """The trace each client slot's uplink follows this episode."""
        return self.core.episode_traces[0]

    @property
    def trace_names(self) -> list[str]:
        """Names of the traces episodes draw from."""
        return list(self.core.trace_names)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode (see *Starting State*)."""
        super().reset(seed=seed)
        self.core.generate(0, self.np_random, options)
        return self.core.observe()[0], {"traces": list(self.episode_traces)}

    def step(self, action: Sequence[int] | np.ndarray
             ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply one plan per client slot for one step; see *Rewards*."""
        a = np.asarray(action, np.int64).reshape(1, -1)
        if a.shape[1] != self.core.num_clients or a.min() < 0 or a.max() >= self.core.num_plans:
            raise ValueError(f"action: expected {self.core.num_clients} plan indices in "
                             f"0..{self.core.num_plans - 1}, found {np.asarray(action).tolist()}")
        if self.core.t[0] >= self.config.max_steps:  # used without TimeLimit: a fresh episode
            self.core.generate(0, self.np_random)
        before = self.core.plans[0].copy()
        reward, out = self.core.step(a)
        served = out["admitted"][0]
        frames = float(served.sum())
        served_ms = (served * np.nan_to_num(out["latency_ms"][0])).sum()
        latency = float(served_ms / frames) if frames else float("nan")
        energy = float((served * out["energy_j"][0]).sum() / frames) if frames else 0.0
        info = {"latency_ms": latency, "frames": frames, "offered": float(out["offered"][0].sum()),
                "dropped": float(out["dropped"][0].sum()), "energy_j": energy,
                "plan": out["plans"][0].tolist(), "active": out["active"][0].tolist(),
                "client_latency_ms": out["latency_ms"][0].tolist(), "client_frames": served.tolist(),
                "client_dropped": out["dropped"][0].tolist(), "batch": out["batch"][0].tolist(),
                "bandwidth_mbps": out["bandwidth_mbps"][0].tolist(),
                "switched": bool(np.any((out["plans"][0] != before) & out["active"][0])), "feasible": True,
                "ignored": np.flatnonzero(~out["active"][0] & (a[0] != 0)).tolist()}
        return self.core.observe()[0], float(reward[0]), False, False, info

    def action_masks(self) -> np.ndarray:
        """Flattened ``K·P`` mask (``MaskablePPO`` calls this)."""
        return self.core.masks()[0]


    def policy_spec(self, policy: str = "ppo", notes: str = "") -> PolicySpec:
        """The sidecar: candidate plans, observation layout and configuration."""
        return PolicySpec(model_profile=self.config.model_profile, devices=tuple(self.config.devices),
                          plans=self.candidates.to_json(), codec_names=self.candidates.codec_names,
                          observation=self.obs_spec, env=self.config.to_dict(), policy=policy, notes=notes,
                          env_id=MULTI_ENV)


def make_multi_client(config: MultiClientConfig | dict | str | None = None, render_mode: str | None = None,
                      **overrides: Any) -> gym.Env:
    """Entry point of ``adaptive/MultiClient-v0``: the env in a ``TimeLimit`` of ``max_steps``."""
    env = MultiClientEnv(config, render_mode, **overrides)
    return gym.wrappers.TimeLimit(env, max_episode_steps=env.config.max_steps)
