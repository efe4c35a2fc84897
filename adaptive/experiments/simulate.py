"""``adaptive experiment run --mode sim``: a scenario's policies on the model, step by step.

Each policy runs on ``adaptive/MultiClient-v0`` replaying the scenario's true conditions (its
``script`` reset option: who is present, frame rates, deadlines, every uplink and every node's
background load at every step). What a policy observes is that truth as telemetry reports it:
``staleness_steps`` old, with the env's noise, drawn from the repeat's seed. One client on a chain
is the single-chain model exactly (:class:`adaptive.model.shared_chain.SharedChain`).

Policies: the multi-client heuristics (``device-only``, ``full-offload``, ``greedy``,
``hysteresis``, ``coordinated``, ``static-hindsight``, ``clairvoyant``) and ``ppo[:PATH]``, a
trained multi-client actor (default: the shipped one) whose model, devices and step the scenario
must match; it keeps its own configuration (observation scales, client slots), with the scenario's
conditions in its slots.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from adaptive.errors import AdaptiveError
from adaptive.experiments.scenario import Scenario

__all__ = ["HEURISTICS", "policy_env", "simulate"]

HEURISTICS = (
    "device-only",
    "full-offload",
    "greedy",
    "hysteresis",
    "coordinated",
    "static-hindsight",
    "clairvoyant",
)


def simulate(
    scenario: Scenario,
    *,
    repeats: int | None = None,
    seed: int | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run every policy of ``scenario`` ``repeats`` times; return ``{"rows": [...], "runs": [...]}``.

    ``rows`` has one entry per step and present client: ``policy``, ``repeat``, ``time_s``,
    ``client``, ``bandwidth_mbps`` (true), ``plan``, ``edge_share`` (fraction of the blocks on
    its edge), ``offered``, ``dropped`` (frames: dropped at admission, or served later than the
    client's deadline, as a live run counts them) and ``latency_ms`` (of its frames served in
    time; NaN if none). ``runs`` has each run's wall time.
    """
    repeats = scenario.repeats if repeats is None else repeats
    seed = scenario.seed if seed is None else seed
    if repeats < 1:
        raise AdaptiveError("--repeats must be >= 1")
    rows: list[dict[str, Any]] = []
    runs = []
    envs = {spec: policy_env(spec, scenario) for spec in scenario.policies}  # bad policies fail first
    cond = scenario.conditions()  # traces are read once, not per policy and repeat
    for spec in scenario.policies:
        env, policy, slots = envs[spec]
        for r in range(repeats):
            started = time.perf_counter()
            rows += _run(scenario, cond, spec, env, policy, slots, r, seed + r)
            runs.append({"policy": spec, "repeat": r, "wall_s": round(time.perf_counter() - started, 3)})
            if on_progress is not None:
                on_progress(spec, r, repeats)
    return {"rows": rows, "runs": runs}


def policy_env(spec: str, scenario: Scenario) -> tuple[Any, Any, int]:
    """``(env, policy, client slots)``: the environment a policy runs ``scenario`` on, and the policy."""
    from envs.multi_client import MultiClientEnv

    name, _, path = spec.partition(":")
    layers = path == "layers" and name != "plan"  # NAME:layers: the heuristic over layer plans only
    K = len(scenario.clients)
    devices = [scenario.edge_device, *(a.device for a in scenario.accelerators)]
    base = {
        "model_profile": scenario.model,
        "devices": devices,
        "max_clients": K,
        "dt_s": scenario.dt_s,
        "max_steps": scenario.steps,
        "accel_link_mbps": scenario.accel_link_mbps,
        "device_scales": list(scenario.device_scales),
        "client_rate_rps": [
            min(c.rate_rps for c in scenario.clients),
            max(max(c.rate_rps for c in scenario.clients), 1.0),
        ],
        "deadline_ms": scenario.clients[0].deadline_ms,
        "min_edge_blocks": scenario.min_edge_blocks,
        "codecs": list(scenario.codecs),
        "link_delay_ms": list(scenario.link_delay_ms),
        **plan_options(spec, scenario),
    }
    if name == "ppo":
        return _ppo_env(spec, path, scenario, devices)
    if name == "plan":
        from adaptive.model.plans import parse_plan
        from agents.multi_policies import FixedPlan

        env = MultiClientEnv(base)
        cands = env.candidates
        want = parse_plan(path, env.chain.chains[0].num_blocks, len(devices), cands.codec_names)
        keys = [(tuple(int(x) for x in cands.plans.splits[i]), tuple(int(x) for x in cands.plans.codecs[i]),
                 cands.plans.section_of(i)) for i in range(len(cands))]
        return env, FixedPlan(env, keys.index(want)), K
    if name not in HEURISTICS or (path and not layers):
        raise AdaptiveError(
            f"policy '{spec}' is not one of ppo[:PATH], plan:SPLITS, {', '.join(HEURISTICS)} "
            "(each may end in :layers)"
        )
    from agents.multi_policies import make_multi_heuristic

    env = MultiClientEnv(base)
    return env, make_multi_heuristic(name, env), K


def plan_options(spec: str, scenario: Scenario) -> dict[str, Any]:
    """The env keys that make a policy's candidates, live and in sim: the plans to include, sections or not.

    ``NAME:layers`` chooses among layer plans: no sections, and none of the scenario's included
    labels that has one (a ``plan:`` policy's sectioned plan).
    """
    name, _, path = spec.partition(":")
    layers = path == "layers" and name != "plan"
    return {"include_plans": [x for x in scenario.include_plans if not (layers and "@" in x)],
            "parallel": scenario.parallel and not layers}


def _ppo_env(spec: str, path: str, scenario: Scenario, devices: list[str]) -> tuple[Any, Any, int]:
    """The trained multi-client policy and its own environment, refused if it does not fit ``scenario``."""
    from envs.multi_client import MultiClientEnv

    K = len(scenario.clients)
    from importlib import resources
    from pathlib import Path

    from adaptive.model.observation import MULTI_ENV
    from agents.multi_policies import MultiActor
    from agents.ppo import load_actor

    net, sidecar = load_actor(
        path or Path(str(resources.files("agents.trained").joinpath("ppo_multi_client.zip")))
    )
    trained = dict(sidecar.env)
    if sidecar.env_id != MULTI_ENV:
        raise AdaptiveError(f"policy {spec}: trained on {sidecar.env_id}, not {MULTI_ENV}")
    if list(sidecar.devices) != devices or sidecar.model_profile != scenario.model:
        raise AdaptiveError(
            f"policy {spec}: trained for {sidecar.model_profile} on "
            f"{list(sidecar.devices)}; the scenario runs {scenario.model} on {devices}"
        )
    if scenario.min_edge_blocks or scenario.codecs or scenario.include_plans:
        raise AdaptiveError(
            f"policy {spec}: its plans were fixed in training; the scenario restricts them "
            "(plans: min_edge_blocks, codecs, include)"
        )
    if sidecar.observation.num_clients < K or float(trained.get("dt_s", 0.25)) != scenario.dt_s:
        raise AdaptiveError(
            f"policy {spec}: {sidecar.observation.num_clients} client slots and "
            f"{trained.get('dt_s')} s steps; the scenario has {K} clients and "
            f"{scenario.dt_s:g} s steps"
        )
    trained.update(
        max_steps=scenario.steps,
        accel_link_mbps=scenario.accel_link_mbps,
        device_scales=list(scenario.device_scales),
        deadline_ms=scenario.clients[0].deadline_ms,
        link_delay_ms=list(scenario.link_delay_ms),
    )
    env = MultiClientEnv(trained)
    return env, MultiActor(net, env.num_clients), env.num_clients


def edge_share(plan: Any, num_blocks: int) -> float:
    """Blocks the edge computes, as a fraction: ``[0, s1)``, and its rows' share of a section."""
    edge = float(plan.splits[0])
    if plan.section is not None:
        edge += (1.0 - plan.section.share) * (plan.section.stop - plan.splits[0])
    return edge / num_blocks


def _run(
    scenario: Scenario,
    cond: dict[str, np.ndarray],
    spec: str,
    env: Any,
    policy: Any,
    slots: int,
    repeat: int,
    seed: int,
) -> list[dict[str, Any]]:
    K = len(scenario.clients)
    pad = slots - K
    if pad:  # the policy's extra slots stay empty
        T = scenario.steps
        extra = {
            "active": np.zeros((T, pad), bool),
            "rate": np.ones((T, pad)),
            "bw": np.ones((T, pad)),
            "edge_load": np.zeros((T, pad)),
        }
        cond = {
            **cond,
            **{key: np.concatenate([cond[key], x], axis=1) for key, x in extra.items()},
            "deadline_ms": np.concatenate([cond["deadline_ms"], np.full(pad, 1e3)]),
        }
    obs, _ = env.reset(seed=seed, options={"script": cond})
    if hasattr(policy, "begin_episode"):
        policy.begin_episode(env)
    u = env.unwrapped
    cands = u.candidates
    L = u.chain.chains[0].num_blocks
    labels = [cands.plan(i).label for i in range(len(cands))]
    share = np.array([edge_share(cands.plan(i), L) for i in range(len(cands))])
    names = [c.name for c in scenario.clients]
    rows = []
    for t in range(scenario.steps):
        action, _ = policy.predict(obs, action_masks=u.action_masks())
        obs, _, _, _, info = env.step(action)
        for k in range(K):
            if not info["active"][k]:
                continue
            p = int(info["plan"][k])
            frames, dropped = info["client_frames"][k], info["client_dropped"][k]
            latency = float(info["client_latency_ms"][k])
            if latency > cond["deadline_ms"][k]:  # served, but late: dropped, as a live run counts it
                dropped, latency = frames + dropped, math.nan
            rows.append(
                {
                    "policy": spec,
                    "repeat": repeat,
                    "time_s": round(t * scenario.dt_s, 4),
                    "client": names[k],
                    "bandwidth_mbps": round(float(info["bandwidth_mbps"][k]), 4),
                    "plan": labels[p],
                    "edge_share": round(float(share[p]), 4),
                    "offered": round(float(frames + dropped), 4),
                    "dropped": round(float(dropped), 4),
                    "latency_ms": round(latency, 3),
                }
            )
    return rows
