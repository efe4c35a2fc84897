"""The search over plans with a parallel section: what follows a section, and the best section.

A plan with a section costs d0's own stage, the section's schedule
(:func:`adaptive.model.lop.section_schedule`) and the best way on from device ``j`` at the section's
end: a backward dynamic program (:meth:`SectionSearch.suffix`) gives that for every ``(j, position)``
at once, so every section configuration of the grid (:meth:`adaptive.model.lop.SectionCosts.grid`)
is scored in one vectorised pass per number of parts, device ``j`` and codec, over many conditions.
Tested against brute force over every plan in ``tests/adaptive/model/test_lop.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from adaptive.model.latency import ConditionBatch
from adaptive.model.lop import SectionConfig, section_schedule
from adaptive.model.plans import MAX_PARTS, PlanArray, Section

__all__ = ["DpParts", "SectionSearch"]


class DpParts(NamedTuple):
    """The dynamic program's costs on one condition (``Planner.dp_parts``)."""

    stage_cost: list[np.ndarray]
    transfer_cost: Callable[[int, int], tuple[np.ndarray, np.ndarray]]
    finals: list[float]
    alpha: float
    gamma: float
    w_exec: np.ndarray
    w_busy: np.ndarray



class SectionSearch:
    """Best plans with a parallel section for a :class:`~adaptive.model.planner.Planner`.

    Args:
        planner: The planner (its model, codecs and dynamic-program costs).
    """

    def __init__(self, planner: Any) -> None:
        self.planner = planner
        self.model = planner.model

    def suffix(self, parts: DpParts) -> tuple[list[np.ndarray], list[dict[str, np.ndarray]]]:
        """Best cost from device ``j`` running a non-empty stage that starts at ``a`` to the result.

        ``value[j][a]`` for ``j ≥ 1``; the backward twin of :meth:`_dp`, for what follows a section.
        """
        L, D = self.model.num_blocks, self.model.num_devices
        value = [np.full(L + 1, np.inf) for _ in range(D)]
        back: list[dict[str, np.ndarray]] = [{} for _ in range(D)]
        for j in range(D - 1, 0, -1):
            cont = np.full(L + 1, np.inf)
            cont[L] = parts.finals[j]
            nxt, codec = np.full(L + 1, -1), np.zeros(L + 1, np.int64)
            for i in range(j + 1, D):
                tr, kbest = parts.transfer_cost(j, i)
                cand = tr + value[i]
                better = cand < cont
                cont, nxt = np.where(better, cand, cont), np.where(better, i, nxt)
                codec = np.where(better, kbest, codec)
            total = parts.stage_cost[j] + cont[None, :]  # (a, b)
            stop = np.argmin(total, axis=1)
            value[j] = total[np.arange(L + 1), stop]
            back[j] = {"stop": stop, "next": nxt, "codec": codec}
        return value, back

    def best_batch(self, layers: Sequence[PlanArray], cb: ConditionBatch, objective: str,
                        energy_weight: float, constraints: Any) -> list[tuple[PlanArray, bool]]:
        """Per condition of ``cb``: the better of its layer plan and the best plan with a section."""
        rows = [ConditionBatch(*(np.asarray(x)[b : b + 1] for x in cb)) for b in range(len(cb.clients))]
        parts = [self.planner.dp_parts(r, objective, energy_weight, constraints) for r in rows]
        suffixes = [self.suffix(p) for p in parts]
        found = self.candidates(cb, parts, [s[0] for s in suffixes], constraints)
        out = []
        for b, (layer, (cost, row)) in enumerate(zip(layers, found, strict=True)):
            if row is None:
                out.append((layer, False))
                continue
            pred = self.model.evaluate_unchecked(layer, rows[b])
            layer_cost = parts[b].alpha * pred.latency_ms[0, 0] + parts[b].gamma * pred.energy_j[0, 0]
            better = cost < layer_cost - 1e-9
            out.append((self.plan(row, suffixes[b][1]), True) if better else (layer, False))
        return out

    def candidates(self, cb: ConditionBatch, parts: list[DpParts], value: list[list[np.ndarray]],
                            constraints: Any) -> list[tuple[float, tuple[int, ...] | None]]:
        """Per condition: cost and ``(start, stop, share, parts, j, codec)`` of the best sectioned plan."""
        m, B = self.model, len(cb.clients)
        (start, stop, share, nparts), sizes = m.section_costs.grid()
        scale = m.exec_scale(cb)  # (B, D)
        alpha = np.array([p.alpha for p in parts])[:, None]
        gamma = np.array([p.gamma for p in parts])[:, None]
        w_exec, w_busy = np.stack([p.w_exec for p in parts]), np.stack([p.w_busy for p in parts])  # (B, D)
        edge_ok = np.broadcast_to(start >= min(constraints.min_edge_blocks, m.num_blocks), (B, start.size))
        if constraints.memory:
            edge_ok = edge_ok & (m.stage_memory_mb(np.zeros_like(stop), stop, 1.0) <= cb.available_mb[:, :1])
        K, allowed = (len(m.codec_names) if self.planner.use_codecs else 1), self.planner.codec_allowed
        best_cost, best_row = np.full(B, np.inf), [None] * B
        energy_too = bool(np.any(gamma > 0))
        for c in range(1, MAX_PARTS + 1):  # one pass per number of parts: no empty parts computed
            sel = np.flatnonzero(nparts == c)
            if sel.size == 0:
                continue
            cfg = SectionConfig(sizes.edge_ms[sel], sizes.part_ms[sel, :, :c], sizes.chunk_bytes[sel, :c],
                                sizes.join_bytes[sel])
            prefix = m.exec_base(0, np.zeros(sel.size, np.int64), start[sel])[None] * scale[:, :1]  # (B, N)
            for j in range(1, m.num_devices):
                rest = np.stack([v[j][stop[sel]] for v in value])  # (B, N)
                for k in range(K):
                    both_ends = allowed[k, start[sel]] & allowed[k, stop[sel]]
                    usable = edge_ok[:, sel] & np.isfinite(rest) & both_ends[None]
                    if not usable.any():
                        continue
                    t = section_schedule(m, cb, j, np.full(sel.size, k), cfg, breakdown=energy_too)
                    energy = (t.edge_exec * w_exec[:, :1] + t.edge_proc * w_busy[:, :1]
                              + t.acc_exec * w_exec[:, j : j + 1]
                              + (t.acc_proc + t.acc_comm) * w_busy[:, j : j + 1]
                              + prefix * w_exec[:, :1])
                    total = np.where(usable, alpha * (prefix + t.latency) + gamma * energy + rest, np.inf)
                    i = np.argmin(total, axis=1)
                    for b in np.flatnonzero(total[np.arange(B), i] < best_cost):
                        n = sel[i[b]]
                        best_cost[b] = total[b, i[b]]
                        best_row[b] = (int(start[n]), int(stop[n]), float(share[n]), int(nparts[n]), j, k)
        return list(zip(best_cost.tolist(), best_row, strict=True))

    def plan(self, row: tuple[int, ...], back: list[dict[str, np.ndarray]]) -> PlanArray:
        """The plan of a :meth:`candidates` row, its rest traced back through :meth:`suffix`'s pointers."""
        start, stop, share, nparts, j, k = row
        L, D = self.model.num_blocks, self.model.num_devices
        splits, codecs = [start] * j, [0] * (j - 1) + [k]
        dev, a = j, stop
        while len(splits) < D - 1:
            b = int(back[dev]["stop"][a])
            nxt = int(back[dev]["next"][b]) if b < L else -1
            if nxt < 0:
                splits += [L] * (D - 1 - len(splits))
                codecs += [0] * (D - 1 - len(codecs))
                break
            splits += [b] * (nxt - dev)
            codecs += [0] * (nxt - dev - 1) + [int(back[dev]["codec"][b])]
            dev, a = nxt, b
        return PlanArray.from_rows(np.array([splits], np.int64), np.array([codecs], np.int64),
                                   [Section(stop, float(share), nparts)])
