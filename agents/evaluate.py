"""One evaluation for every policy: the same seeded episodes, the same metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.policies import Policy

__all__ = ["EpisodeResult", "Summary", "evaluate", "run_episode", "summarise"]


@dataclass(frozen=True)
class EpisodeResult:
    """One policy on one episode.

    Attributes:
        policy: Policy name.
        seed: Episode seed.
        traces: Trace name per link.
        latency_ms: ``(T,)`` per-step latency including switch costs, ms.
        energy_j: ``(T,)`` per-step energy, J.
        actions: ``(T,)`` plan indices.
        bandwidth_mbps: ``(T, M)`` true bandwidth.
        reward: Episode return.
        switches: Plan changes.
        slo_violations: Steps over the SLO (0 without an SLO).
        infeasible: Steps whose plan did not fit memory.
    """

    policy: str
    seed: int
    traces: tuple[str, ...]
    latency_ms: np.ndarray
    energy_j: np.ndarray
    actions: np.ndarray
    bandwidth_mbps: np.ndarray
    reward: float
    switches: int
    slo_violations: int
    infeasible: int


@dataclass(frozen=True)
class Summary:
    """A policy over all episodes.

    Attributes:
        policy: Name.
        episodes: Episodes run.
        mean_latency_ms: Mean per-step latency, ms.
        p95_latency_ms: 95th percentile of per-step latency, ms.
        mean_energy_j: Mean per-step energy, J.
        switches_per_episode: Mean plan changes per episode.
        slo_violation_rate: Share of steps over the SLO.
        infeasible_rate: Share of steps whose plan did not fit.
        mean_return: Mean episode return.
        ratio_to_oracle: Mean latency / the oracle's on the same episodes (nan without an oracle).
    """

    policy: str
    episodes: int
    mean_latency_ms: float
    p95_latency_ms: float
    mean_energy_j: float
    switches_per_episode: float
    slo_violation_rate: float
    infeasible_rate: float
    mean_return: float
    ratio_to_oracle: float


def run_episode(env: Any, policy: Policy, seed: int, name: str = "", options: dict | None = None
                ) -> EpisodeResult:
    """Run ``policy`` for one full episode of ``env`` (which should be ``TimeLimit``-wrapped)."""
    obs, info = env.reset(seed=seed, options=options)
    if hasattr(policy, "begin_episode"):
        policy.begin_episode(env)
    slo = env.unwrapped.config.slo_ms
    lat, energy, acts, bw = [], [], [], []
    total, switches, infeasible = 0.0, 0, 0
    done = False
    while not done:
        masks = env.unwrapped.action_masks()
        action, _ = policy.predict(obs, deterministic=True, action_masks=masks)
        obs, reward, terminated, truncated, info = env.step(int(action))
        done = terminated or truncated
        total += float(reward)
        lat.append(info["latency_ms"])
        energy.append(info["energy_j"])
        acts.append(info["plan"])
        bw.append(info["bandwidth_mbps"])
        switches += int(info["switched"])
        infeasible += int(not info["feasible"])
    latency = np.asarray(lat)
    return EpisodeResult(name or getattr(policy, "name", type(policy).__name__), seed,
                         tuple(env.unwrapped.episode_traces), latency, np.asarray(energy),
                         np.asarray(acts), np.asarray(bw), total, switches,
                         int((latency > slo).sum()) if slo is not None else 0, infeasible)


def summarise(results: Sequence[EpisodeResult], oracle: Sequence[EpisodeResult] | None = None) -> Summary:
    """Aggregate one policy's episodes (``oracle``: the oracle's episodes with the same seeds)."""
    lat = np.concatenate([r.latency_ms for r in results])
    ratio = float("nan")
    if oracle:
        ratio = float(lat.mean() / np.concatenate([r.latency_ms for r in oracle]).mean())
    steps = len(lat)
    return Summary(results[0].policy, len(results), float(lat.mean()), float(np.percentile(lat, 95)),
                   float(np.concatenate([r.energy_j for r in results]).mean()),
                   float(np.mean([r.switches for r in results])),
                   sum(r.slo_violations for r in results) / steps, sum(r.infeasible for r in results) / steps,
                   float(np.mean([r.reward for r in results])), ratio)


def evaluate(make_env: Callable[[], Any], policies: Mapping[str, Callable[[Any], Policy]],
             seeds: Sequence[int], options: Sequence[dict | None] | None = None
             ) -> tuple[list[Summary], dict[str, list[EpisodeResult]]]:
    """Run every policy on the same seeded episodes; the oracle (if listed) anchors the ratios.

    Args:
        make_env: Builds a ``TimeLimit``-wrapped env.
        policies: Name → factory taking the env and returning a policy.
        seeds: One episode per seed (identical for every policy).
        options: Optional reset options per seed (e.g. a pinned trace).
    """
    env = make_env()
    episodes: dict[str, list[EpisodeResult]] = {}
    for name, factory in policies.items():
        policy = factory(env)
        episodes[name] = [run_episode(env, policy, s, name, (options or [None] * len(seeds))[i])
                          for i, s in enumerate(seeds)]
    oracle = episodes.get("oracle")
    return [summarise(eps, oracle) for eps in episodes.values()], episodes
