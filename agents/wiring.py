"""Policies wired for the live controller: ``build_policy("greedy", config)`` and friends.

The controller (:mod:`adaptive.control.controller`) takes any object with Stable-Baselines3's ``predict``;
this module builds the concrete ones from a ``--policy`` spec, so neither ``adaptive`` core nor its
demo imports ``agents`` (the CLI passes :func:`build_policy` in).
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["FirstChoice", "SharedWiring", "build_multi_policy", "build_policy", "multi_replay_env",
           "replay_env", "static_multi_plan", "static_plans"]

LAN_MBPS = 1000.0


def build_policy(spec: str, config: Any, trust_zip: bool = False) -> tuple[Any, Any, Any, str, Any]:
    """Wire a policy for the controller: ``(policy, candidates, obs_spec, name, on_model)``.

    ``trust_zip`` lets ``ppo:PATH`` unpickle a stable-baselines3 zip with no ``.mlp.json`` beside it.
    """
    from adaptive.errors import AdaptiveError
    from adaptive.model.latency import Conditions, SplitModel
    from adaptive.model.observation import ObservationSpec, candidate_plans
    from adaptive.model.plans import PlanArray
    from adaptive.model.profiles import resolve_device, resolve_model

    name, _, path = spec.partition(":")
    if name == "ppo":
        from importlib import resources
        from pathlib import Path

        from agents.ppo import load_actor

        # the actor as numpy (adaptive.model.mlp): the controller needs no torch, and it can ship the same
        # network to the source node in a decision rule
        model, sidecar = load_actor(path or Path(str(resources.files("agents.trained").joinpath(
            "ppo_default.zip"))), trust_zip=trust_zip)
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
    candidates = candidate_plans(split_model, max_plans=config.max_plans, parallel=config.parallel)
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


def replay_env(model_profile: str, devices: list[str], uplink_csv: str, window_s: float,
               **overrides: Any) -> tuple[Any, dict[str, Any]]:
    """The environment replaying a live run's uplink: ``(env, reset options)``.

    ``uplink_csv`` holds the series the source's emulated uplink replayed (already scaled); the
    other links are a 1 Gbit/s LAN; nothing else moves (no background load, memory pressure or
    other clients), as in the demo. Step 0 is the start of the replay, and an episode lasts
    ``window_s``. Keyword arguments override env config keys (e.g. ``staleness_steps``).
    """
    import gymnasium as gym

    import envs  # noqa: F401  (registers the env id)
    from envs.config import EnvConfig

    base = EnvConfig()
    doc = {"model_profile": model_profile, "devices": list(devices), "traces": [uplink_csv],
           "synthetic_share": 0.0,
           "scaling": {"target_median_mbps": None, "min_mbps": 0.05, "max_mbps": 1000.0},
           "cpu_load": {"mean": 0.0, "sd": 0.0}, "memory_used": {"mean": 0.0, "sd": 0.0, "high": 0.99},
           "max_clients": 1, "client_change_prob": 0.0}
    doc["max_steps"] = max(round(window_s / float(overrides.get("dt_s", base.dt_s))), 1)
    env = gym.make("adaptive/SplitInference-v0", config=EnvConfig.from_dict({**doc, **overrides}, "replay"))
    name = env.unwrapped.trace_names[0]
    return env, {"links": [name] + [LAN_MBPS] * (len(devices) - 2), "start_s": 0.0}


def static_plans(model_profile: str, devices: list[str], uplink_csv: str, window_s: float
                 ) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    """The two static layer-plan baselines for a replayed window: ``{name: (splits, codecs)}``.

    ``static-hindsight`` is the fixed plan with the least mean latency over the window and
    ``static-mean`` the best plan for its mean conditions (Neurosurgeon-style), both on the
    environment's true costs (transfers integrated over the changing bandwidth) with the devices
    as profiled.
    """
    from agents.policies import make_heuristic

    env, options = replay_env(model_profile, devices, uplink_csv, window_s, parallel=False)
    env.reset(seed=0, options=options)
    out = {}
    for name in ("static-hindsight", "static-mean"):
        policy = make_heuristic(name, env)
        policy.begin_episode(env)
        plan = env.unwrapped.candidates.plan(policy.choice)
        out[name] = (tuple(plan.splits), tuple(plan.codecs))
    return out


class SharedWiring(NamedTuple):
    """A joint policy wired for :class:`adaptive.control.shared_controller.SharedController`.

    Attributes:
        policy: ``predict(obs, action_masks=...)`` returning a plan per client slot.
        spec: The observation layout.
        candidates: The plans.
        name: Policy name published with the rules.
        on_shared: Hands a recalibrated shared model to a heuristic that simulates with it.
        deadline_ms: The frame deadline the policy was built for, ms.
        step_s: Spacing of the uplink history the policy reads, s.
    """

    policy: Any
    spec: Any
    candidates: Any
    name: str
    on_shared: Any
    deadline_ms: float
    step_s: float


MULTI_POLICIES = ("ppo[:PATH]", "coordinated", "greedy", "hysteresis", "device-only", "full-offload",
                  "static")


def build_multi_policy(spec: str, config: Any, slots: int | None = None, static_plan: int | None = None,
                       env: dict[str, Any] | None = None, trust_zip: bool = False) -> SharedWiring:
    """Wire a joint policy for a controller of several sources (``config.sources``).

    ``ppo[:PATH]`` is the trained actor (default: the shipped ``ppo_multi_client``); the
    heuristics (``coordinated``, ``greedy``, ``hysteresis``, ``device-only``) run on an
    ``adaptive/MultiClient-v0`` env built for the cluster's devices, with ``slots`` client slots
    (default: one per source) and the env config keys in ``env`` (e.g. an experiment's plan
    limits, link delays and deadline); ``static`` keeps plan ``static_plan`` for every client, or without
    one each client's first ``coordinated`` plan.
    """
    from adaptive.errors import AdaptiveError

    name, _, path = spec.partition(":")
    edge_devices = {c.device for c in (config.chain[0], *config.sources)}
    if len(edge_devices) > 1:
        raise AdaptiveError(f"the sources' edge devices differ ({sorted(edge_devices)}); a joint policy "
                            "takes one kind of edge device")
    devices = [config.chain[0].device, *(c.device for c in config.chain[1:])]
    sources = 1 + len(config.sources)
    if name == "ppo":
        from importlib import resources
        from pathlib import Path

        from adaptive.model.observation import MULTI_ENV
        from agents.multi_policies import MultiActor
        from agents.ppo import load_actor

        net, sidecar = load_actor(path or Path(str(resources.files("agents.trained").joinpath(
            "ppo_multi_client.zip"))), trust_zip=trust_zip)
        if sidecar.env_id != MULTI_ENV:
            raise AdaptiveError(f"the PPO policy was trained on {sidecar.env_id}, not {MULTI_ENV}")
        if list(sidecar.devices) != devices or sidecar.model_profile != config.model_profile:
            raise AdaptiveError(f"the PPO policy was trained for {sidecar.model_profile} on "
                                f"{list(sidecar.devices)}; the cluster runs {config.model_profile} "
                                f"on {devices}")
        trained = sidecar.env
        return SharedWiring(MultiActor(net, sidecar.observation.num_clients), sidecar.observation,
                            sidecar.candidates(), "ppo", None, float(trained.get("deadline_ms", 1000.0)),
                            float(trained.get("dt_s", 0.25)))
    heuristics = ("coordinated", "greedy", "hysteresis", "device-only", "full-offload", "static")
    if name not in heuristics:
        raise AdaptiveError(f"--policy: unknown multi-client policy '{spec}' (expected "
                            f"{', '.join(MULTI_POLICIES)})")
    from agents.multi_policies import FixedPlan, make_multi_heuristic
    from envs.multi_client import MultiClientEnv

    built = MultiClientEnv({"model_profile": config.model_profile, "devices": devices,
                            "max_clients": slots or sources, "history": config.history, **(env or {})})
    if name == "static":
        policy: Any = (FixedPlan(built, static_plan) if static_plan is not None
                       else FirstJoint(make_multi_heuristic("coordinated", built)))
    else:
        policy = make_multi_heuristic(name, built)

    def on_shared(chain: Any) -> None:
        (policy.inner if isinstance(policy, FirstJoint) else policy).chain = chain

    return SharedWiring(policy, built.obs_spec, built.candidates, name, on_shared, built.config.deadline_ms,
                        built.config.dt_s)


class FirstJoint:
    """Static for several clients: each client keeps the inner policy's first plan for it.

    A client's plan is chosen again only when it leaves the mask (a dead accelerator), or when
    the client joins.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.plans: Any = None

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None,
                deterministic: bool = True, action_masks: Any = None) -> tuple[Any, Any]:
        """The first plans, again."""
        import numpy as np

        fresh = np.asarray(self.inner.predict(observation, action_masks=action_masks)[0])
        K = len(fresh)
        active = self.inner.seen(np.asarray(observation, np.float32))["active"]
        mask = (np.ones((K, 1), bool) if action_masks is None
                else np.asarray(action_masks, bool).reshape(K, -1))
        if self.plans is None:
            self.plans = np.full(K, -1)
        kept = (self.plans >= 0) & mask[np.arange(K), np.maximum(self.plans, 0)]
        self.plans = np.where(active & kept, self.plans, np.where(active, fresh, -1))
        return np.where(active, self.plans, 0), state


def multi_replay_env(model_profile: str, devices: list[str], uplink_csvs: list[str], rate_rps: float,
                     window_s: float, device_scales: list[float] | None = None,
                     **overrides: Any) -> tuple[Any, dict[str, Any]]:
    """``adaptive/MultiClient-v0`` replaying a live run: one client per uplink CSV, ``(env, options)``.

    Every client is present all the window at ``rate_rps``; the accelerators' links are a LAN and
    nothing else moves (no background load). ``device_scales``: the edge's, then each
    accelerator's compute time relative to its profile (what a live controller calibrated).
    """
    from envs.multi_client import MultiClientEnv

    doc = {"model_profile": model_profile, "devices": list(devices), "traces": list(uplink_csvs),
           "synthetic_share": 0.0,
           "scaling": {"target_median_mbps": None, "min_mbps": 0.05, "max_mbps": 1000.0},
           "cpu_load": {"mean": [0.0], "sd": 0.0}, "bw_noise": 0.0, "load_noise": 0.0,
           "max_clients": len(uplink_csvs), "client_change_prob": 0.0,
           "client_rate_rps": [rate_rps, rate_rps], "device_scales": list(device_scales or [])}
    doc["max_steps"] = max(round(window_s / float(overrides.get("dt_s", 0.25))), 1)
    env = MultiClientEnv({**doc, **overrides})
    names = env.trace_names
    return env, {"links": list(names), "clients": len(uplink_csvs), "rate_rps": rate_rps}


def static_multi_plan(model_profile: str, devices: list[str], uplink_csvs: list[str], rate_rps: float,
                      window_s: float, device_scales: list[float] | None = None) -> int:
    """The one plan every client keeps with the least true cost over a replayed window (hindsight)."""
    from agents.multi_policies import StaticHindsight

    env, options = multi_replay_env(model_profile, devices, uplink_csvs, rate_rps, window_s, device_scales)
    env.reset(seed=0, options=options)
    policy = StaticHindsight(env)
    policy.begin_episode(env)
    return int(policy.choice)
