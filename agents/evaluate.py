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
        actions: ``(T,)`` plan indices; ``(T, K)`` per client slot on ``adaptive/MultiClient-v0``,
            −1 where the slot was empty.
        bandwidth_mbps: ``(T, M)`` true bandwidth.
        reward: Episode return.
        switches: Plan changes.
        slo_violations: Steps over the SLO (0 without an SLO).
        infeasible: Steps whose plan did not fit memory.
        frames: ``(T,)`` requests served at each step: the weight of its latency (1 per step on a
            single chain; frames on ``adaptive/MultiClient-v0``, whose steps serve several).
        dropped: Frames dropped over the episode.
        offered: Frames offered over the episode.
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
    frames: np.ndarray | None = None
    dropped: float = 0.0
    offered: float = 0.0


@dataclass(frozen=True)
class Summary:
    """A policy over all episodes.

    Attributes:
        policy: Name.
        episodes: Episodes run.
        mean_latency_ms: Mean latency per request served, ms (per step on a single chain).
        p95_latency_ms: 95th percentile of per-step latency, ms; on ``adaptive/MultiClient-v0``
            of each step's mean over its frames, weighted by them.
        mean_energy_j: Mean energy per request served, J.
        switches_per_episode: Mean plan changes per episode.
        slo_violation_rate: Share of steps over the SLO.
        infeasible_rate: Share of steps whose plan did not fit.
        mean_return: Mean episode return.
        ratio_to_oracle: Mean latency / the reference's on the same episodes: the ``oracle``, or
            on ``adaptive/MultiClient-v0`` the ``clairvoyant`` policy (nan without either).
        drop_rate: Share of the offered frames dropped (0 on a single chain, which drops none).
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
    drop_rate: float = 0.0


def run_episode(env: Any, policy: Policy, seed: int, name: str = "", options: dict | None = None
                ) -> EpisodeResult:
    """Run ``policy`` for one full episode of ``env`` (which should be ``TimeLimit``-wrapped)."""
    obs, info = env.reset(seed=seed, options=options)
    if hasattr(policy, "begin_episode"):
        policy.begin_episode(env)
    slo = env.unwrapped.config.slo_ms
    lat, energy, acts, bw, frames = [], [], [], [], []
    total, switches, infeasible, dropped, offered = 0.0, 0, 0, 0.0, 0.0
    done = False
    while not done:
        masks = env.unwrapped.action_masks()
        action, _ = policy.predict(obs, deterministic=True, action_masks=masks)
        action = np.asarray(action)
        obs, reward, terminated, truncated, info = env.step(int(action) if action.ndim == 0 else action)
        done = terminated or truncated
        total += float(reward)
        lat.append(info["latency_ms"])
        energy.append(info["energy_j"])
        acts.append(np.where(info["active"], info["plan"], -1) if "active" in info else info["plan"])
        bw.append(info["bandwidth_mbps"])
        switches += int(info["switched"])
        infeasible += int(not info["feasible"])
        frames.append(info.get("frames", 1.0))
        dropped += info.get("dropped", 0.0)
        offered += info.get("offered", 1.0)
    latency = np.asarray(lat)
    return EpisodeResult(name or getattr(policy, "name", type(policy).__name__), seed,
                         tuple(env.unwrapped.episode_traces), latency, np.asarray(energy),
                         np.asarray(acts), np.asarray(bw), total, switches,
                         int((latency > slo).sum()) if slo is not None else 0, infeasible,
                         np.asarray(frames, float), dropped, offered)


def summarise(results: Sequence[EpisodeResult], oracle: Sequence[EpisodeResult] | None = None) -> Summary:
    """Aggregate one policy's episodes (``oracle``: the reference's episodes with the same seeds)."""
    lat, w = _weighted(results)
    mean = float((w * lat).sum() / w.sum()) if w.sum() else float("nan")
    ratio = float("nan")
    if oracle:
        ref_lat, ref_w = _weighted(oracle)
        ratio = mean / float((ref_w * ref_lat).sum() / ref_w.sum())
    if np.all(w == 1.0):
        p95 = float(np.percentile(lat, 95))
    else:
        p95 = float(np.percentile(lat[w > 0], 95, weights=w[w > 0], method="inverted_cdf"))
    energy, w_all = np.concatenate([r.energy_j for r in results]), _weights(results)
    steps = sum(len(r.latency_ms) for r in results)
    offered = sum(r.offered for r in results)
    mean_energy = float((w_all * energy).sum() / w_all.sum()) if w_all.sum() else float("nan")
    return Summary(results[0].policy, len(results), mean, p95, mean_energy,
                   float(np.mean([r.switches for r in results])),
                   sum(r.slo_violations for r in results) / steps, sum(r.infeasible for r in results) / steps,
                   float(np.mean([r.reward for r in results])), ratio,
                   sum(r.dropped for r in results) / offered if offered else 0.0)


def _weighted(results: Sequence[EpisodeResult]) -> tuple[np.ndarray, np.ndarray]:
    """Latencies and their weights (requests served), steps that served none left out."""
    lat, w = np.concatenate([r.latency_ms for r in results]), _weights(results)
    keep = w > 0
    return lat[keep], w[keep]


def _weights(results: Sequence[EpisodeResult]) -> np.ndarray:
    return np.concatenate([r.frames if r.frames is not None else np.ones(len(r.latency_ms)) for r in results])


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
    oracle = episodes.get("oracle") or episodes.get("clairvoyant")
    return [summarise(eps, oracle) for eps in episodes.values()], episodes
