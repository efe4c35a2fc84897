"""The observation mapping shared by the Gymnasium env and the live controller.

Live control must see exactly what training saw, so the mapping from a cluster's *observed* state
(what monitors report) to the policy's observation vector, and from action indices to plans, lives
here in the core and is saved with every trained policy (:class:`PolicySpec`, the sidecar).

Observation vector (float32, every entry in [0, 1] or [−1, 1] as listed), ``D`` devices,
``M = D − 1`` links, history ``H``, ``P`` candidate plans:

=================  ======  =========================================================  ==========
part               size    meaning                                                      range
=================  ======  =========================================================  ==========
``cpu``            D       background CPU load of each device                           [0, 1]
``memory``         D       available memory / profile memory, per device                [0, 1]
``bandwidth``      M × H   log-scaled bandwidth of each link, oldest to newest:         [0, 1]
                           ``(log10 B − log10 B_min) / (log10 B_max − log10 B_min)``
``clients``        1       clients sharing the accelerators / ``max_clients``           [0, 1]
``predicted``      P       predicted latency of each candidate under the observed       [−1, 1]
                           state: ``tanh(log(latency / ref_latency_ms))``; infeasible
                           plans read 1
``current``        P       one-hot of the plan in force                                 {0, 1}
``dwell``          1       steps since the last switch / ``dwell_norm``, capped at 1    [0, 1]
=================  ======  =========================================================  ==========
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adaptive.errors import AdaptiveError, PlanError, read_input
from adaptive.model.latency import ConditionBatch, Conditions, SplitModel
from adaptive.model.planner import Constraints, Planner
from adaptive.model.plans import PLAN_SCHEMA, Plan, PlanArray
from adaptive.model.section_search import SectionSearch

__all__ = ["CandidatePlans", "ObservationSpec", "ObservedState", "PolicySpec", "candidate_plans"]

POLICY_SCHEMA = "adaptive.policy/v1"
SINGLE_ENV, MULTI_ENV = "adaptive/SplitInference-v0", "adaptive/MultiClient-v0"


@dataclass(frozen=True)
class ObservedState:
    """What the controller (or the env's simulated monitors) reports about the cluster.

    Attributes:
        cpu_load: ``(D,)`` background CPU load per device, [0, 1].
        available_mb: ``(D,)`` available memory per device, MB.
        bandwidth_mbps: ``(H, M)`` link bandwidth history, oldest row first, Mbit/s.
        clients: Clients sharing the accelerators (≥ 1).
        current_plan: Index of the plan in force.
        dwell_steps: Steps since the last plan switch.
    """

    cpu_load: np.ndarray
    available_mb: np.ndarray
    bandwidth_mbps: np.ndarray
    clients: int
    current_plan: int
    dwell_steps: int = 0


@dataclass(frozen=True)
class CandidatePlans:
    """The discrete action set: plans over one chain.

    Attributes:
        plans: ``(P, M)`` splits and codec indices.
        codec_names: Names of the codec indices.
    """

    plans: PlanArray
    codec_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.plans)

    def plan(self, index: int) -> Plan:
        """The plan of action ``index`` (with its parallel section, if it has one)."""
        splits = tuple(int(x) for x in self.plans.splits[index])
        codecs = tuple(self.codec_names[int(c)] for c in self.plans.codecs[index])
        return Plan(splits, codecs if any(c != "none" for c in codecs) else (), self.plans.section_of(index))

    def avoiding(self, positions: Iterable[int], num_blocks: int) -> np.ndarray:
        """``(P,)`` which plans give no blocks to the chain positions ``positions`` (e.g. dead nodes).

        Position 0, where the input is, is never avoided: every plan starts there.
        """
        splits = self.plans.splits
        bounds = np.column_stack([np.zeros(len(splits), np.int64), splits, np.full(len(splits), num_blocks)])
        ok = np.ones(len(splits), bool)
        for i in positions:
            if i > 0:
                ok &= bounds[:, i + 1] == bounds[:, i]
        return ok

    def index(self, plan: Plan) -> int:
        """Action index of ``plan``; raises :class:`AdaptiveError` if it is not a candidate."""
        wanted = Plan(tuple(plan.splits), tuple(plan.codecs), plan.section)
        for i in range(len(self)):
            if self.plan(i) == wanted:
                return i
        raise AdaptiveError(f"plan {plan} is not among the {len(self)} candidates")

    def to_json(self) -> list[dict[str, Any]]:
        """JSON-friendly list of plans."""
        plans = (self.plan(i) for i in range(len(self)))
        return [{"splits": list(p.splits), "codecs": list(p.codecs),
                 **({"section": p.to_json()["section"]} if p.section else {})} for p in plans]

    @classmethod
    def from_json(cls, items: Sequence[dict[str, Any]], codec_names: Sequence[str]) -> CandidatePlans:
        """Rebuild from :meth:`to_json` output."""
        names = tuple(codec_names)
        splits, codecs, sections = [], [], []
        for item in items:
            splits.append([int(s) for s in item["splits"]])
            cs = item.get("codecs") or ["none"] * len(item["splits"])
            try:
                codecs.append([names.index(c) for c in cs])
            except ValueError:
                raise AdaptiveError(f"candidate plan uses unknown codec in {cs}") from None
            section = item.get("section")
            sections.append(Plan.from_json({"schema": PLAN_SCHEMA, "splits": item["splits"],
                                            "section": section}).section if section else None)
        m = len(splits[0]) if splits else 0
        arrays = (np.array(splits, np.int64).reshape(-1, m), np.array(codecs, np.int64).reshape(-1, m))
        return cls(PlanArray.from_rows(*arrays, sections), names)


def candidate_plans(model: SplitModel, *,
                    bandwidths_mbps: Sequence[float] = tuple(np.geomspace(0.3, 300, 25)),
                    loads: Sequence[float] = (0.0, 0.4, 0.8), clients: Sequence[int] = (1, 2, 4, 8),
                    max_plans: int = 48, use_codecs: bool = True, codecs: Sequence[str] | None = None,
                    min_edge_blocks: int = 0, include: Sequence[str] = (),
                    parallel: bool = False) -> CandidatePlans:
    """Plans that are optimal (latency) somewhere on a grid of conditions, plus the two extremes.

    Intra-DP (seed 001 Sec. 3.2) precomputes plans per bandwidth; we do the same over bandwidth,
    background load (on each device in turn) and clients, and keep the distinct winners, most
    frequent first, so the action space holds only plans worth choosing. Device-only and full
    offload (everything after the first ``min_edge_blocks`` blocks) are always included (as
    action 0 and 1). ``codecs`` limits the codecs (None: all); ``min_edge_blocks``: blocks every
    plan runs on the first device; ``include``: plans (:func:`adaptive.model.plans.plan_label` labels,
    e.g. a paper's fixed split points) kept right after the extremes, whatever the grid says;
    ``parallel``: the winners may carry a parallel section (Intra-DP's local operation parallelism,
    ``docs/model.md``), so layer plans and sectioned plans compete on the same grid.

    Raises:
        PlanError: An ``include`` label is not a plan of this model and chain.
    """
    planner = Planner(model, use_codecs=use_codecs, codecs=codecs, parallel=parallel)
    D = model.num_devices
    L, M = model.num_blocks, D - 1
    counts: dict[tuple[Any, ...], int] = {}
    edge = min(min_edge_blocks, L)
    extremes: list[tuple[Any, ...]] = [((L,) * M, (0,) * M, None), ((edge,) * M, (0,) * M, None)]
    from adaptive.model.plans import parse_plan

    for label in include:
        key = parse_plan(label, L, D, model.codec_names)
        if key[2] is not None and not parallel:
            raise PlanError(f"plan '{label}' has a parallel section: include it only with parallel: true")
        if key[2] is not None:  # raises if the section does not fit the model
            model.evaluate(PlanArray.from_rows(np.array([key[0]]), np.array([key[1]]), [key[2]]),
                           Conditions(bandwidth_mbps=10.0))
        if key not in extremes:
            extremes.append(key)
    grid = [Conditions(bandwidth_mbps=float(bw), cpu_load=[load if d == busy else 0.0 for d in range(D)],
                       clients=int(n))
            for bw in bandwidths_mbps for load in loads for busy in range(D) for n in clients]
    constraints = Constraints(memory=False, min_edge_blocks=edge)
    best = [planner.plan_array(planner.best(c, constraints=constraints, method="dp", sections=False).plan)
            for c in grid]
    if planner.parallel:  # one vectorised pass over the section grid for many conditions at once
        search = SectionSearch(planner)
        for lo in range(0, len(grid), 64):
            cb = ConditionBatch.concat([model.conditions(c) for c in grid[lo : lo + 64]])
            chosen = search.best_batch(best[lo : lo + 64], cb, "latency", 1.0, constraints)
            best[lo : lo + 64] = [plans for plans, _ in chosen]
    for arr in best:
        key = (tuple(int(x) for x in arr.splits[0]), tuple(int(x) for x in arr.codecs[0]), arr.section_of(0))
        counts[key] = counts.get(key, 0) + 1
    ordered = extremes + [k for k, _ in sorted(counts.items(), key=lambda kv: -kv[1]) if k not in extremes]
    ordered = ordered[:max(max_plans, len(extremes))]
    splits = np.array([k[0] for k in ordered], np.int64).reshape(-1, M)
    codecs = np.array([k[1] for k in ordered], np.int64).reshape(-1, M)
    return CandidatePlans(PlanArray.from_rows(splits, codecs, [k[2] for k in ordered]), model.codec_names)


def env_candidate_plans(config: Any) -> CandidatePlans:
    """:func:`candidate_plans` of an environment config's model profile and chain, once per process.

    Every policy of an experiment builds its own environment on the same model and chain, and the
    grid search behind the candidates takes about a second on a three-device chain; it is done once
    per distinct profile, chain and limits (and file version, where they name files). The plans
    are shared, read-only.
    """
    names = (config.model_profile, *config.devices)
    key = (names, config.max_plans, config.use_codecs, tuple(config.codecs), config.min_edge_blocks,
           tuple(config.include_plans), config.parallel, tuple(_file_version(n) for n in names))
    return _env_candidates(key)


def _file_version(name: str) -> tuple[int, int] | None:
    try:
        st = os.stat(name)
    except (OSError, ValueError):
        return None  # a shipped name, not a file
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=32)
def _env_candidates(key: tuple[Any, ...]) -> CandidatePlans:
    from adaptive.model.profiles import resolve_device, resolve_model

    names, max_plans, use_codecs, codecs, min_edge_blocks, include, parallel, _ = key
    model = SplitModel(resolve_model(names[0]), [resolve_device(d) for d in names[1:]])
    plans = candidate_plans(model, max_plans=max_plans, use_codecs=use_codecs, codecs=codecs or None,
                            min_edge_blocks=min_edge_blocks, include=include, parallel=parallel)
    for a in (plans.plans.splits, plans.plans.codecs, plans.plans.stop, plans.plans.share, plans.plans.parts):
        if a is not None:
            a.setflags(write=False)
    return plans


@dataclass(frozen=True)
class ObservationSpec:
    """Layout and scaling of the observation vector (see the module docstring).

    Attributes:
        num_devices: ``D``.
        num_plans: ``P``.
        ref_latency_ms: Reference latency for the ``predicted`` part, ms (> 0).
        history: Bandwidth samples per link (``H`` ≥ 1).
        max_clients: Normalisation of the client count.
        bw_min_mbps: Lower end of the bandwidth scale, Mbit/s.
        bw_max_mbps: Upper end of the bandwidth scale, Mbit/s.
        dwell_norm: Steps at which the dwell feature saturates.
    """

    num_devices: int
    num_plans: int
    ref_latency_ms: float
    history: int = 4
    max_clients: int = 8
    bw_min_mbps: float = 0.1
    bw_max_mbps: float = 10_000.0
    dwell_norm: int = 10

    @property
    def size(self) -> int:
        """Length of the observation vector."""
        D, M = self.num_devices, self.num_devices - 1
        return 2 * D + M * self.history + 1 + 2 * self.num_plans + 1

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` of every entry."""
        low = np.zeros(self.size, np.float32)
        start = 2 * self.num_devices + (self.num_devices - 1) * self.history + 1
        low[start : start + self.num_plans] = -1.0
        return low, np.ones(self.size, np.float32)

    def static_part(self, cpu_load: np.ndarray, mem_fraction: np.ndarray, bandwidth_mbps: np.ndarray,
                    clients: np.ndarray, predicted_ms: np.ndarray, feasible: np.ndarray) -> np.ndarray:
        """Everything but ``current`` and ``dwell`` for ``T`` steps at once.

        Args:
            cpu_load: ``(T, D)``.
            mem_fraction: ``(T, D)`` available / profile memory.
            bandwidth_mbps: ``(T, H, M)`` history per step, oldest first.
            clients: ``(T,)``.
            predicted_ms: ``(T, P)`` predicted latency of each candidate.
            feasible: ``(T, P)`` memory feasibility.

        Returns:
            ``(T, size − P − 1)`` float32.
        """
        T = len(clients)
        lo, hi = np.log10(self.bw_min_mbps), np.log10(self.bw_max_mbps)
        bw = (np.log10(np.clip(bandwidth_mbps, self.bw_min_mbps, self.bw_max_mbps)) - lo) / (hi - lo)
        bw = bw.transpose(0, 2, 1).reshape(T, -1)  # per link, its history oldest → newest
        pred = np.tanh(np.log(np.maximum(predicted_ms, 1e-6) / self.ref_latency_ms))
        pred = np.where(feasible, pred, 1.0)
        parts = [np.clip(cpu_load, 0, 1), np.clip(mem_fraction, 0, 1), bw,
                 np.clip(np.asarray(clients, float) / self.max_clients, 0, 1)[:, None], pred]
        return np.concatenate(parts, axis=1).astype(np.float32)

    def encode(self, static: np.ndarray, current_plan: int, dwell_steps: int,
               out: np.ndarray | None = None) -> np.ndarray:
        """Complete one step's observation from its static part (fast path for the env)."""
        obs = np.empty(self.size, np.float32) if out is None else out
        n = static.shape[-1]
        obs[:n] = static
        obs[n : n + self.num_plans] = 0.0
        obs[n + current_plan] = 1.0
        obs[-1] = min(dwell_steps / self.dwell_norm, 1.0)
        return obs

    def decode_predicted(self, obs: np.ndarray) -> np.ndarray:
        """Predicted latency of each candidate, ms, recovered from an observation (inf if infeasible)."""
        start = 2 * self.num_devices + (self.num_devices - 1) * self.history + 1
        pred = np.asarray(obs[..., start : start + self.num_plans], dtype=float)
        with np.errstate(divide="ignore"):
            ms = self.ref_latency_ms * np.exp(np.arctanh(np.clip(pred, -0.999999, 0.999999)))
        return np.where(pred >= 0.999999, np.inf, ms)

    def decode_current(self, obs: np.ndarray) -> int:
        """Index of the plan in force."""
        start = 2 * self.num_devices + (self.num_devices - 1) * self.history + 1 + self.num_plans
        return int(np.argmax(obs[..., start : start + self.num_plans]))

    def decode_dwell(self, obs: np.ndarray) -> float:
        """Steps since the last switch (saturates at ``dwell_norm``)."""
        return float(obs[..., -1]) * self.dwell_norm


def predict_candidates(model: SplitModel, plans: CandidatePlans, cb: ConditionBatch
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(latency_ms, energy_j, feasible)`` of every candidate under ``B`` conditions, each ``(B, P)``."""
    pred = model.evaluate(plans.plans, cb)
    return pred.latency_ms, pred.energy_j, pred.feasible


@dataclass(frozen=True)
class PolicySpec:
    """Everything needed to rebuild a trained policy's observation and action mapping (the sidecar).

    Attributes:
        model_profile: Model profile name or path.
        devices: Device profile names or paths, in chain order.
        plans: Candidate plans (action index → plan).
        observation: Observation layout.
        env: The environment configuration the policy was trained with (free-form dict).
        policy: ``ppo`` or a heuristic name.
        notes: Training details.
        env_id: The environment: ``adaptive/SplitInference-v0`` (one chain; ``observation`` is an
            :class:`ObservationSpec`) or ``adaptive/MultiClient-v0`` (several clients: a
            :class:`adaptive.model.shared_chain.ClusterObservation`, one plan per client slot).
    """

    model_profile: str
    devices: tuple[str, ...]
    plans: list[dict[str, Any]]
    codec_names: tuple[str, ...]
    observation: Any
    env: dict[str, Any] = field(default_factory=dict)
    policy: str = "ppo"
    notes: str = ""
    env_id: str = SINGLE_ENV

    @property
    def num_outputs(self) -> int:
        """Logits the policy network gives: one per plan, per client slot on the multi-client env."""
        return self.observation.num_plans * getattr(self.observation, "num_clients", 1)

    def save(self, path: str | Path) -> None:
        """Write the sidecar JSON."""
        doc = {"schema": POLICY_SCHEMA, "model_profile": self.model_profile, "devices": list(self.devices),
               "codec_names": list(self.codec_names), "plans": self.plans,
               "observation": asdict(self.observation), "env": self.env, "policy": self.policy,
               "notes": self.notes, "env_id": self.env_id}
        Path(path).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> PolicySpec:
        """Read a sidecar; raises :class:`AdaptiveError` naming the file and problem."""
        text = read_input(path, "a policy sidecar (JSON)")
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise AdaptiveError(f"{path}: cannot read policy sidecar ({exc.__class__.__name__})") from None
        if not isinstance(doc, dict) or doc.get("schema") != POLICY_SCHEMA:
            raise AdaptiveError(f"{path}: expected schema '{POLICY_SCHEMA}'")
        env_id = str(doc.get("env_id", SINGLE_ENV))
        if env_id not in (SINGLE_ENV, MULTI_ENV):
            raise AdaptiveError(f"{path}: unknown env_id '{env_id}' (expected {SINGLE_ENV} or {MULTI_ENV})")
        try:
            if env_id == MULTI_ENV:
                from adaptive.model.shared_chain import ClusterObservation

                observation: Any = ClusterObservation(**doc["observation"])
            else:
                observation = ObservationSpec(**doc["observation"])
            return cls(model_profile=str(doc["model_profile"]), devices=tuple(doc["devices"]),
                       plans=list(doc["plans"]), codec_names=tuple(doc["codec_names"]),
                       observation=observation, env=dict(doc.get("env", {})),
                       policy=str(doc.get("policy", "ppo")), notes=str(doc.get("notes", "")), env_id=env_id)
        except (KeyError, TypeError) as exc:
            raise AdaptiveError(f"{path}: malformed policy sidecar ({exc})") from None

    def candidates(self) -> CandidatePlans:
        """The action set."""
        return CandidatePlans.from_json(self.plans, self.codec_names)
