"""Find the best split plan, the latency–energy Pareto front, and plan tables.

Two exact methods share the model's component functions (:mod:`adaptive.model.latency`):

* **Dynamic program** for additive objectives (latency, energy, a weighted sum) without
  SLO or energy-budget constraints: state = (last device that ran a stage, split position);
  ``O(D²·L²·K)`` work for ``D`` devices, ``L`` blocks and ``K`` codecs, independent of the
  number of plans.
* **Vectorised enumeration** of every canonical plan in chunks for everything else
  (throughput, constraints, the Pareto front).

Memory feasibility is enforced by both. Objectives:

``latency``
    minimise end-to-end latency (ms).
``energy``
    minimise energy per request (J).
``weighted``
    minimise ``latency/L_ref + energy_weight · energy/E_ref`` where the references are the
    device-only plan's values (so the weight is unitless).
``throughput``
    maximise pipelined throughput (minimise the bottleneck stage or transfer).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from adaptive.errors import PlanError
from adaptive.model.latency import ConditionBatch, Conditions, Prediction, SplitModel
from adaptive.model.plans import Plan, PlanArray, count_plans, enumerate_plans
from adaptive.model.section_search import DpParts, SectionSearch

__all__ = ["Constraints", "Objective", "PlanResult", "Planner"]

Objective = Literal["latency", "energy", "weighted", "throughput"]
OBJECTIVES: tuple[str, ...] = ("latency", "energy", "weighted", "throughput")
_CHUNK = 100_000


@dataclass(frozen=True)
class Constraints:
    """Limits a plan must respect.

    Attributes:
        slo_ms: Maximum end-to-end latency, ms (``None``: no limit).
        energy_budget_j: Maximum energy per request, J (``None``: no limit).
        memory: Require every stage to fit its device's available memory.
        min_edge_blocks: Blocks the first device must run before anything leaves it (seed 000
            splits in 1..N, i.e. 1; also keeps raw input on the device, for privacy).
    """

    slo_ms: float | None = None
    energy_budget_j: float | None = None
    memory: bool = True
    min_edge_blocks: int = 0

    def __post_init__(self) -> None:
        if self.min_edge_blocks < 0:
            raise PlanError(f"min_edge_blocks must be >= 0, found {self.min_edge_blocks}")

    @property
    def needs_enumeration(self) -> bool:
        """Whether the constraints couple stages (so the DP cannot be used)."""
        return self.slo_ms is not None or self.energy_budget_j is not None


@dataclass(frozen=True)
class PlanResult:
    """The chosen plan with its prediction.

    Attributes:
        plan: The plan (splits and codec names).
        latency_ms: Predicted end-to-end latency, ms.
        energy_j: Predicted energy per request, J.
        throughput_rps: Predicted pipelined throughput, requests/s.
        prediction: Full model output for this plan (per-device breakdown).
        evaluated: Plans evaluated with the full model (enumeration) or plan space size
            covered exactly (dynamic program).
        method: ``"dp"`` or ``"enumeration"``.
        elapsed_ms: Wall-clock planning time, ms.
    """

    plan: Plan
    latency_ms: float
    energy_j: float
    throughput_rps: float
    prediction: Prediction
    evaluated: int
    method: str
    elapsed_ms: float


class Planner:
    """Plans over one :class:`~adaptive.model.latency.SplitModel`.

    Args:
        model: The latency and energy model (profile + chain).
        use_codecs: Consider the profile's activation codecs at each split.
        codecs: Only these codecs (``none`` is always allowed); None: all the profile's.
        parallel: Also search plans with a parallel section (Intra-DP's local operation
            parallelism) for the latency, energy and weighted objectives without SLO or budget;
            a model without parallel sections gets layer plans only.
    """

    def __init__(self, model: SplitModel, *, use_codecs: bool = True,
                 codecs: Sequence[str] | None = None, parallel: bool = False) -> None:
        self.model = model
        self.parallel = parallel and bool(model.section_costs.sections) and model.num_devices > 1
        self.use_codecs = use_codecs and len(model.codec_names) > 1
        self.codec_allowed = model.codec_allowed.copy()
        if codecs is not None:
            unknown = sorted(set(codecs) - set(model.codec_names))
            if unknown:
                raise PlanError(f"unknown codec(s) {unknown} (the profile has {list(model.codec_names)})")
            for k, name in enumerate(model.codec_names):
                if k and name not in codecs:
                    self.codec_allowed[k] = False
        self._all_plans: PlanArray | None = None

    # ------------------------------------------------------------------ plan space

    def all_plans(self) -> PlanArray:
        """Every canonical plan of the chain (cached)."""
        if self._all_plans is None:
            allowed = self.codec_allowed if self.use_codecs else None
            self._all_plans = enumerate_plans(self.model.num_blocks, self.model.num_devices, allowed)
        return self._all_plans

    def to_plan(self, plans: PlanArray, index: int = 0) -> Plan:
        """Convert one row of a :class:`PlanArray` to a :class:`Plan` with codec names."""
        splits = tuple(int(x) for x in plans.splits[index])
        codecs = tuple(self.model.codec_names[int(c)] for c in plans.codecs[index])
        return Plan(splits, codecs if any(c != "none" for c in codecs) else (), plans.section_of(index))

    def plan_array(self, plan: Plan) -> PlanArray:
        """Convert a :class:`Plan` to a one-row :class:`PlanArray` (validates codec names)."""
        m = self.model.num_devices - 1
        names = plan.codecs or ("none",) * m
        if len(names) != m:
            raise PlanError(f"expected {m} codec name(s), found {len(names)}")
        codecs = [self.model.codec_index(n) for n in names]
        return PlanArray.from_rows(np.array([plan.splits], np.int64), np.array([codecs], np.int64),
                                   [plan.section])

    def evaluate(self, plan: Plan, conditions: Conditions) -> Prediction:
        """Prediction for one plan (outputs shaped ``(1, …)``)."""
        return self.model.evaluate(self.plan_array(plan), conditions)

    # ------------------------------------------------------------------ best plan

    def best(
        self,
        conditions: Conditions,
        objective: Objective = "latency",
        *,
        energy_weight: float = 1.0,
        constraints: Constraints = Constraints(),
        method: Literal["auto", "dp", "enumeration"] = "auto",
        sections: bool | None = None,
    ) -> PlanResult:
        """The best plan under ``conditions``.

        Args:
            conditions: Bandwidth, load, clients and memory of the chain.
            objective: One of ``latency``, ``energy``, ``weighted``, ``throughput``.
            energy_weight: Weight of normalised energy in the ``weighted`` objective, ≥ 0.
            constraints: SLO, energy budget and memory feasibility.
            method: ``auto`` uses the dynamic program where it is exact, else enumeration.
            sections: Search plans with a parallel section too (None: as the planner was built);
                only for latency, energy and weighted without SLO or budget (else layer plans).

        Raises:
            PlanError: Unknown objective, or no plan satisfies the constraints.
        """
        if objective not in OBJECTIVES:
            raise PlanError(f"unknown objective '{objective}' (expected one of {', '.join(OBJECTIVES)})")
        if energy_weight < 0 or not np.isfinite(energy_weight):
            raise PlanError(f"energy weight must be a finite number >= 0, found {energy_weight}")
        cb = self.model.conditions(conditions)
        start = time.perf_counter()
        dp_ok = objective != "throughput" and not constraints.needs_enumeration
        if method == "dp" and not dp_ok:
            raise PlanError("the dynamic program handles latency/energy/weighted without SLO or budget")
        if method == "dp" or (method == "auto" and dp_ok):
            plans, used = self._dp(cb, objective, energy_weight, constraints), "dp"
            evaluated = self.plan_space_size()
            if self.parallel if sections is None else sections and self.parallel:
                plans = self._with_sections(plans, cb, objective, energy_weight, constraints)[0]
        else:
            plans, evaluated, used = self._enumerate_best(cb, objective, energy_weight, constraints)
        pred = self.model.evaluate(plans, conditions)
        elapsed = (time.perf_counter() - start) * 1e3
        return PlanResult(
            plan=self.to_plan(plans),
            latency_ms=float(pred.latency_ms[0]),
            energy_j=float(pred.energy_j[0]),
            throughput_rps=float(pred.throughput_rps[0]),
            prediction=pred,
            evaluated=evaluated,
            method=used,
            elapsed_ms=elapsed,
        )

    def best_layer(self, conditions: Conditions, objective: Objective = "latency",
                   **kwargs: object) -> PlanResult:
        """:meth:`best` over plans of layer splits only (no parallel section)."""
        return self.best(conditions, objective, sections=False, **kwargs)  # type: ignore[arg-type]

    def plan_space_size(self) -> int:
        """Number of canonical plans (with codec choices when enabled), without enumerating."""
        allowed = self.codec_allowed if self.use_codecs else None
        return count_plans(self.model.num_blocks, self.model.num_devices, allowed)

    def _references(self, cb: ConditionBatch) -> tuple[float, float]:
        device_only = PlanArray.from_splits([[self.model.num_blocks] * (self.model.num_devices - 1)])
        pred = self.model.evaluate_unchecked(device_only, cb)
        return max(float(pred.latency_ms[0, 0]), 1e-9), max(float(pred.energy_j[0, 0]), 1e-12)

    def score(self, pred: Prediction, objective: str, energy_weight: float,
              refs: tuple[float, float]) -> np.ndarray:
        """Objective value to minimise for predictions (lower is better)."""
        if objective == "latency":
            return pred.latency_ms
        if objective == "energy":
            return pred.energy_j
        if objective == "throughput":
            return pred.bottleneck_ms
        return pred.latency_ms / refs[0] + energy_weight * pred.energy_j / refs[1]

    def _enumerate_best(
        self, cb: ConditionBatch, objective: str, energy_weight: float, constraints: Constraints
    ) -> tuple[PlanArray, int, str]:
        plans = self.all_plans()
        refs = self._references(cb)
        best_val, best_idx = np.inf, -1
        for lo in range(0, len(plans), _CHUNK):
            chunk = plans.take(np.arange(lo, min(lo + _CHUNK, len(plans))))
            pred = self.model.evaluate_unchecked(chunk, cb)
            val = self.score(pred, objective, energy_weight, refs)[0]
            # secondary key: latency, so ties (e.g. equal bottlenecks) prefer the faster plan
            val = val + 1e-9 * pred.latency_ms[0] if objective != "latency" else val
            val = np.where(_allowed(pred, constraints, chunk, self.model.num_blocks)[0], val, np.inf)
            i = int(np.argmin(val))
            if val[i] < best_val:
                best_val, best_idx = float(val[i]), lo + i
        if best_idx < 0:
            raise PlanError(_infeasible_message(constraints))
        return plans.take(best_idx), len(plans), "enumeration"

    # ------------------------------------------------------------------ dynamic program

    def _dp(self, cb: ConditionBatch, objective: str, energy_weight: float,
            constraints: Constraints) -> PlanArray:
        parts = self.dp_parts(cb, objective, energy_weight, constraints)
        L, D, pos = self.model.num_blocks, self.model.num_devices, np.arange(self.model.num_blocks + 1)
        stage_cost, transfer_cost, finals_add = parts.stage_cost, parts.transfer_cost, parts.finals
        best = [stage_cost[0][0].copy()] + [np.full(L + 1, np.inf) for _ in range(1, D)]
        back: list[dict[str, np.ndarray]] = [{}]
        for j in range(1, D):
            src = np.full(L + 1, -1)
            start = np.zeros(L + 1, np.int64)
            codec = np.zeros(L + 1, np.int64)
            for i in range(j):
                tr, kbest = transfer_cost(i, j)
                cand = best[i][:, None] + tr[:, None] + stage_cost[j]  # (a, b)
                amin = np.argmin(cand, axis=0)
                val = cand[amin, pos]
                better = val < best[j]
                best[j] = np.where(better, val, best[j])
                src = np.where(better, i, src)
                start = np.where(better, amin, start)
                codec = np.where(better, kbest[amin], codec)
            back.append({"src": src, "start": start, "codec": codec})
        finals = [best[0][L]] + [best[j][L] + finals_add[j] for j in range(1, D)]
        last = int(np.argmin(finals))
        if not np.isfinite(finals[last]):
            raise PlanError(_infeasible_message(constraints))
        return self._backtrack(back, last)

    def dp_parts(self, cb: ConditionBatch, objective: str, energy_weight: float,
                 constraints: Constraints) -> DpParts:
        """The dynamic program's costs on the first condition: stages, transfers, results, weights."""
        m = self.model
        L, D = m.num_blocks, m.num_devices
        alpha, gamma = {"latency": (1.0, 0.0), "energy": (0.0, 1.0)}.get(objective, (None, None))
        if alpha is None:
            lref, eref = self._references(cb)
            alpha, gamma = 1.0 / lref, energy_weight / eref
        w_exec, w_busy = (w[0] / 1e3 for w in m.power_weights(cb))
        scale = m.exec_scale(cb)[0]
        slow = m.load_slowdown(cb)[0]
        pos = np.arange(L + 1)
        a, b = pos[:, None], pos[None, :]
        share = m.batch_share(cb)[0]
        stage_cost = []
        for d in range(D):
            ex = m.exec_base(d, a, b) * scale[d]
            cost = (alpha + gamma * w_exec[d]) * ex
            bad = b < a if d == 0 else b <= a
            if constraints.memory:
                bad = bad | (m.stage_memory_mb(a, b, share[d]) > cb.available_mb[0, d])
            if d == 0:
                bad = bad | (b < min(constraints.min_edge_blocks, L))
            stage_cost.append(np.where(bad, np.inf, cost))
        K = len(m.codec_names) if self.use_codecs else 1
        raw = m.split_bytes[:, None] * np.ones((1, K))
        kk = np.broadcast_to(np.arange(K), raw.shape)
        allowed = self.codec_allowed[:K].T  # (L+1, K)

        def transfer_cost(i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
            t = m.transfer(i, j, raw, kk, cb)
            codec_i = t.enc_src[0] * slow[i]
            codec_j = t.dec_dst[0] * slow[j]
            lat = t.comm[0] + t.out_src[0] + t.in_dst[0] + codec_i + codec_j
            energy = ((codec_i * w_exec[i] + t.out_src[0] * w_busy[i])
                      + (codec_j * w_exec[j] + (t.in_dst[0] + t.comm[0]) * w_busy[j]))
            cost = np.where(allowed, alpha * lat + gamma * energy, np.inf)
            k = np.argmin(cost, axis=1)
            return cost[pos, k], k

        finals = [0.0]
        for j in range(1, D):
            out, comm, inn = m.result_return(j, cb)
            lat = out[0] + comm[0] + inn[0]
            energy = out[0] * w_busy[j] + (comm[0] + inn[0]) * w_busy[0]
            finals.append(float(alpha * lat + gamma * energy))
        return DpParts(stage_cost, transfer_cost, finals, alpha, gamma, w_exec, w_busy)

    def _with_sections(self, layer: PlanArray, cb: ConditionBatch, objective: str, energy_weight: float,
                       constraints: Constraints) -> tuple[PlanArray, bool]:
        """The better of the layer plan ``layer`` and the best plan with a section (first condition)."""
        return SectionSearch(self).best_batch([layer], cb, objective, energy_weight, constraints)[0]

    def _backtrack(self, back: list[dict[str, np.ndarray]], last: int) -> PlanArray:
        L, D = self.model.num_blocks, self.model.num_devices
        starts: dict[int, tuple[int, int]] = {}
        j, b = last, L
        while j > 0:
            a = int(back[j]["start"][b])
            starts[j] = (a, int(back[j]["codec"][b]))
            j, b = int(back[j]["src"][b]), a
        splits, codecs = [], []
        for d in range(1, D):
            if d in starts:
                splits.append(starts[d][0])
                codecs.append(starts[d][1])
            else:
                later = [starts[e][0] for e in range(d + 1, D) if e in starts]
                splits.append(later[0] if later else L)
                codecs.append(0)
        return PlanArray(np.array([splits], np.int64), np.array([codecs], np.int64))

    # ------------------------------------------------------------------ fronts and tables

    def pareto(self, conditions: Conditions, constraints: Constraints = Constraints()
               ) -> tuple[PlanArray, Prediction]:
        """Latency–energy Pareto front over every feasible plan, sorted by latency."""
        cb = self.model.conditions(conditions)
        plans = self.all_plans()
        lat, en, ok = [], [], []
        for lo in range(0, len(plans), _CHUNK):
            chunk = plans.take(np.arange(lo, min(lo + _CHUNK, len(plans))))
            pred = self.model.evaluate_unchecked(chunk, cb)
            lat.append(pred.latency_ms[0])
            en.append(pred.energy_j[0])
            ok.append(_allowed(pred, constraints, chunk, self.model.num_blocks)[0])
        latency, energy, allowed = (np.concatenate(x) for x in (lat, en, ok))
        idx = np.nonzero(allowed)[0]
        if idx.size == 0:
            raise PlanError(_infeasible_message(constraints))
        order = idx[np.lexsort((energy[idx], latency[idx]))]
        running = np.minimum.accumulate(energy[order])
        keep = np.concatenate([[True], energy[order][1:] < running[:-1]])
        front = plans.take(order[keep])
        return front, self.model.evaluate(front, conditions)

    def layer_table(self, bandwidths_mbps: Sequence[float], conditions: Conditions,
                    objective: Objective = "latency", **kwargs: object) -> list[PlanResult]:
        """:meth:`table` over plans of layer splits only."""
        return [self.best_layer(replace(conditions, bandwidth_mbps=float(bw)), objective, **kwargs)
                for bw in bandwidths_mbps]

    def table(
        self,
        bandwidths_mbps: Sequence[float],
        conditions: Conditions,
        objective: Objective = "latency",
        layers: list[PlanResult] | None = None,
        **kwargs: object,
    ) -> list[PlanResult]:
        """Best plan for each bandwidth (applied to every link), other conditions fixed.

        Intra-DP (seed 001 Sec. 3.2) precomputes such a table so that a live switch is a lookup.
        ``layers``: :meth:`layer_table` of the same arguments, if the caller has it already.
        """
        results = layers if layers is not None else self.layer_table(bandwidths_mbps, conditions, objective,
                                                                     **kwargs)
        if not self.parallel:
            return results
        constraints = kwargs.get("constraints", Constraints())
        method = kwargs.get("method")
        enumerate_only = constraints.needs_enumeration or method == "enumeration"  # type: ignore[union-attr]
        if objective == "throughput" or enumerate_only:
            return results
        start = time.perf_counter()
        cb = ConditionBatch.concat([self.model.conditions(replace(conditions, bandwidth_mbps=float(bw)))
                                    for bw in bandwidths_mbps])
        layers = [self.plan_array(r.plan) for r in results]
        weight = float(kwargs.get("energy_weight", 1.0))  # type: ignore[arg-type]
        chosen = SectionSearch(self).best_batch(layers, cb, objective, weight, constraints)
        share_ms = (time.perf_counter() - start) * 1e3 / max(len(results), 1)
        out = []
        for r, (plans, changed), bw in zip(results, chosen, bandwidths_mbps, strict=True):
            if not changed:
                out.append(replace(r, elapsed_ms=r.elapsed_ms + share_ms))
                continue
            pred = self.model.evaluate(plans, replace(conditions, bandwidth_mbps=float(bw)))
            out.append(PlanResult(self.to_plan(plans), float(pred.latency_ms[0]), float(pred.energy_j[0]),
                                  float(pred.throughput_rps[0]), pred, r.evaluated, "dp",
                                  r.elapsed_ms + share_ms))
        return out


def _allowed(pred: Prediction, constraints: Constraints, plans: PlanArray, num_blocks: int
             ) -> np.ndarray:
    ok = pred.feasible if constraints.memory else np.ones_like(pred.feasible)
    if constraints.min_edge_blocks > 0 and plans.splits.shape[1] > 0:
        need = min(constraints.min_edge_blocks, num_blocks)
        ok = ok & (plans.splits[:, 0] >= need)
    if constraints.slo_ms is not None:
        ok = ok & (pred.latency_ms <= constraints.slo_ms)
    if constraints.energy_budget_j is not None:
        ok = ok & (pred.energy_j <= constraints.energy_budget_j)
    return ok


def _infeasible_message(constraints: Constraints) -> str:
    parts = []
    if constraints.memory:
        parts.append("memory")
    if constraints.slo_ms is not None:
        parts.append(f"SLO {constraints.slo_ms} ms")
    if constraints.energy_budget_j is not None:
        parts.append(f"energy budget {constraints.energy_budget_j} J")
    if constraints.min_edge_blocks:
        parts.append(f"at least {constraints.min_edge_blocks} block(s) on the first device")
    return "no plan satisfies the constraints (" + ", ".join(parts) + ")"
