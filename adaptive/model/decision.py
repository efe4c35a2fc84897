"""Decision tables: the best plan per uplink bandwidth bin, for a fixed slow state.

The controller conditions on what changes slowly (CPU load, the other links, clients, calibration,
dead nodes, the source's request rate) and leaves the source's uplink free: every candidate plan is
evaluated, vectorised, on a log-spaced grid of uplink bandwidths, and each grid point gets the plan
with the lowest predicted latency among those allowed and able to sustain the request rate (the
bottleneck stage or link must keep up). Runs of equal choices become bins whose edges lie halfway,
in log scale, between neighbouring grid points. The source looks its estimate up in the bins
(:class:`adaptive.protocol.rules.RuleMessage`), so a bandwidth change moves the plan without asking anyone.

The slow state wobbles (a shared host's CPU load moves every second), so a new table replaces the
one in force only where that one has become worse than ``margin`` at some grid point, or breaks a
constraint: the hysteresis a published rule needs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from adaptive.model.latency import ConditionBatch, Prediction, SplitModel
from adaptive.model.observation import CandidatePlans, ObservationSpec
from adaptive.protocol.rules import OBSERVATION_KEYS, ActorRule

__all__ = ["Bins", "DecisionTable", "actor_rule", "bandwidth_bins", "decision_table", "grid_choices"]

GRID_MBPS = np.geomspace(0.05, 5000.0, 97)  # 20 points per decade


class DecisionTable(NamedTuple):
    """Bins over the source's uplink.

    Attributes:
        edges_mbps: ``K - 1`` ascending bin edges, Mbit/s.
        actions: ``K`` candidate indices, one per bin.
        predicted_ms: ``K`` predicted latencies, at the bin's middle grid point, ms.
        throughput_rps: ``K`` predicted sustainable rates there, requests/s.
    """

    edges_mbps: tuple[float, ...]
    actions: tuple[int, ...]
    predicted_ms: tuple[float, ...]
    throughput_rps: tuple[float, ...]


class Bins(NamedTuple):
    """Runs of equal choices over an ascending bandwidth grid.

    Attributes:
        edges_mbps: ``K - 1`` bin edges, halfway in log scale between the grid points where the
            choice changes, Mbit/s.
        actions: ``K`` choices, one per bin.
        mids: ``K`` grid indices, each bin's middle point (where its figures are read).
    """

    edges_mbps: tuple[float, ...]
    actions: tuple[int, ...]
    mids: tuple[int, ...]


def bandwidth_bins(grid_mbps: np.ndarray, choice: np.ndarray) -> Bins:
    """Merge neighbouring grid points with the same choice into bins (``choice``: one per grid point)."""
    choice = np.asarray(choice)
    change = np.flatnonzero(choice[1:] != choice[:-1])  # a new bin starts at change + 1
    starts = np.concatenate([[0], change + 1])
    ends = np.concatenate([change + 1, [len(choice)]])
    return Bins(tuple(float(np.sqrt(grid_mbps[i - 1] * grid_mbps[i])) for i in change + 1),
                tuple(int(choice[s]) for s in starts), tuple(int(m) for m in (starts + ends - 1) // 2))


def grid_choices(model: SplitModel, candidates: CandidatePlans, conditions: ConditionBatch,
                 allowed: np.ndarray, rate_hz: float = 0.0, headroom: float = 1.2,
                 grid_mbps: np.ndarray = GRID_MBPS) -> tuple[Prediction, np.ndarray]:
    """Every candidate on the uplink grid under the slow state, and which are allowed there.

    Returns:
        ``(prediction (G, P), allowed (G, P))``: a plan is allowed at a grid point if it fits
        memory, is in ``allowed`` and, where any such plan does, sustains ``headroom × rate_hz``.
        (Where nothing fits memory, what ``allowed`` permits; where nothing is allowed, anything.)
    """
    G = len(grid_mbps)
    bw = np.repeat(np.asarray(conditions.bandwidth_mbps, float)[:1], G, axis=0)
    bw[:, 0] = grid_mbps
    cond = ConditionBatch(bw, np.repeat(conditions.propagation_ms[:1], G, axis=0),
                          np.repeat(conditions.cpu_load[:1], G, axis=0),
                          np.repeat(np.asarray(conditions.clients)[:1], G, axis=0),
                          np.repeat(conditions.available_mb[:1], G, axis=0))
    pred = model.evaluate(candidates.plans, cond)  # (G, P)
    allowed = np.asarray(allowed, bool)
    ok = pred.feasible & allowed[None]
    if not ok.any():  # nothing fits memory: fall back to what is allowed, then to anything
        ok = np.broadcast_to(allowed[None] if allowed.any() else True, ok.shape).copy()
    if rate_hz > 0:
        fast = ok & (pred.throughput_rps >= headroom * rate_hz)
        ok = np.where(fast.any(axis=1, keepdims=True), fast, ok)  # where none keeps up: the best of all
    return pred, ok


def decision_table(model: SplitModel, candidates: CandidatePlans, conditions: ConditionBatch,
                   allowed: np.ndarray, rate_hz: float = 0.0, headroom: float = 1.2,
                   grid_mbps: np.ndarray = GRID_MBPS, incumbent: DecisionTable | None = None,
                   margin: float = 0.05) -> DecisionTable:
    """The best allowed plan per bin of the first link's bandwidth.

    Args:
        model: The (calibrated) latency model.
        candidates: The plans to choose from.
        conditions: The slow state, one row (its first link's bandwidth is replaced by the grid).
        allowed: ``(P,)`` plans allowed (memory, dead nodes).
        rate_hz: The source's request rate; plans whose predicted throughput is below
            ``headroom × rate_hz`` are left out where any plan keeps up (0: no constraint).
        headroom: Margin on the rate (≥ 1).
        grid_mbps: Uplink bandwidths to evaluate, ascending, Mbit/s.
        incumbent: The table in force (built on the same grid and candidates), or None.
        margin: ``incumbent`` is returned unchanged, the same object, while at every grid point its
            plan is allowed, keeps up, and is within this fraction of the best plan's latency.

    Returns:
        The bins, merged where neighbouring grid points choose the same plan.
    """
    G = len(grid_mbps)
    pred, ok = grid_choices(model, candidates, conditions, allowed, rate_hz, headroom, grid_mbps)
    latency = np.where(ok, pred.latency_ms, np.inf)
    best = np.argmin(latency, axis=1)  # (G,)
    rows = np.arange(G)
    if incumbent is not None:
        kept = np.asarray(incumbent.actions)[np.searchsorted(incumbent.edges_mbps, grid_mbps, side="right")]
        if np.all(latency[rows, kept] <= (1 + margin) * latency[rows, best]):  # inf where not allowed
            return incumbent
    bins = bandwidth_bins(grid_mbps, best)
    return DecisionTable(bins.edges_mbps, bins.actions,
                         tuple(float(latency[rows, best][m]) for m in bins.mids),
                         tuple(float(pred.throughput_rps[m, best[m]]) for m in bins.mids))


def actor_rule(latency_ms: np.ndarray, allowed: np.ndarray, spec: ObservationSpec, template: np.ndarray,
               step_s: float, network: dict, grid_mbps: np.ndarray = GRID_MBPS) -> ActorRule:
    """The ``actor`` field of a policy rule.

    It carries the predictions and allowed plans on the grid, the prefilled observation and the
    network; ``latency_ms`` is ``inf`` where a plan does not fit.
    """
    return ActorRule(
        grid_mbps=tuple(round(float(g), 4) for g in grid_mbps),
        predicted_ms=tuple(tuple(round(float(v), 2) if np.isfinite(v) else None for v in row)
                           for row in latency_ms),
        allowed=tuple("".join("1" if a else "0" for a in row) for row in allowed),
        observation={k: getattr(spec, k) for k in OBSERVATION_KEYS},
        template=tuple(round(float(v), 5) for v in template),
        step_s=float(step_s),
        network=network)
