"""Decision rules: how the controller tells a source node to pick each request's plan.

Two-level control (Intra-DP, seed 001 Sec. 3.2): the controller (slow, central) publishes a rule per
source node on ``adaptive/<cluster>/node/<source>/rule`` (QoS 1, retained, versioned); the source
(fast, local) applies it to every request with its own fresh uplink estimate, with no network round
trip. Two kinds, both for the slow state the controller conditioned them on (load, clients,
calibration, dead nodes, request rate):

* ``table``: plan ``k`` applies when ``edges_mbps[k-1] <= bandwidth < edges_mbps[k]``;
* ``policy``: a trained actor network (:class:`ActorRule`) the source evaluates per request, on an
  observation the controller prefilled with the slow state and the source completes with its own
  uplink history, every candidate's predicted latency at its estimate (interpolated on a grid the
  controller evaluated), the plan in force and its dwell.

The source answers on its ack topic with the rule's version, like a plan. Receivers validate every
message; a bad one is refused and the source keeps its last good rule.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from typing import Any

from adaptive.protocol.fields import (
    MAX_RULE_BYTES,
    MAX_VERSION,
    VERSION,
    SchemaError,
    check_id,
    check_version,
    devices_field,
    dump_payload,
    epoch_field,
    integer,
    load_payload,
    number,
    section_field,
    section_json,
    string,
)
from adaptive.protocol.messages import PlanMessage

__all__ = ["ActorRule", "RuleMessage", "RulePlan", "rule_topic"]

OBSERVATION_KEYS = ("num_devices", "num_plans", "ref_latency_ms", "history", "max_clients", "bw_min_mbps",
                    "bw_max_mbps", "dwell_norm")
INTEGER_KEYS = ("num_devices", "num_plans", "history", "max_clients", "dwell_norm")

CODECS = ("none", "fp16", "int8")


def rule_topic(cluster: str, source: str) -> str:
    """``adaptive/<cluster>/node/<source>/rule``."""
    return f"adaptive/{check_id(cluster, 'cluster')}/node/{check_id(source, 'node')}/rule"


@dataclass(frozen=True)
class RulePlan:
    """One row of a table rule.

    Attributes:
        splits: ``[s1, …, sM]``, non-decreasing.
        codecs: Codec per split (empty: none).
        predicted_ms: Predicted latency at the bin's representative bandwidth, ms (None if unknown).
        throughput_rps: Predicted sustainable request rate, requests/s (None if unknown).
        at_mbps: The representative bandwidth ``predicted_ms`` is for, Mbit/s (None if unknown).
        edge_ms: Of ``predicted_ms``, the source's own compute, ms (None if unknown).
        uplink_bits: What the plan sends over the source's uplink per request, bits (None if unknown).
        section: The plan's parallel section ``(stop, share, parts)``, or None
            (:attr:`adaptive.protocol.messages.PlanMessage.section`).
    """

    splits: tuple[int, ...]
    codecs: tuple[str, ...] = ()
    predicted_ms: float | None = None
    throughput_rps: float | None = None
    at_mbps: float | None = None
    edge_ms: float | None = None
    uplink_bits: float | None = None
    section: tuple[int, float, int] | None = None

    def latency_at(self, bandwidth_mbps: float) -> float | None:
        """The predicted latency with the uplink at ``bandwidth_mbps`` (the transfer rescaled), ms."""
        if self.predicted_ms is None:
            return None
        if not self.at_mbps or self.uplink_bits is None or not bandwidth_mbps > 0:
            return self.predicted_ms
        return self.predicted_ms + self.uplink_bits / 1e3 * (1 / bandwidth_mbps - 1 / self.at_mbps)


@dataclass(frozen=True)
class ActorRule:
    """What a ``policy`` rule adds: an actor network and how to build its observation at the source.

    Attributes:
        grid_mbps: ``G`` ascending uplink bandwidths the controller evaluated, Mbit/s.
        predicted_ms: ``G × P`` predicted latency of each candidate there (None: does not fit).
        allowed: ``G`` strings of ``P`` ``0``/``1``: the candidates the source may pick there
            (fits, no dead node, sustains the request rate where any plan does).
        observation: The observation layout (``adaptive.model.observation.ObservationSpec`` fields).
        template: The observation with the slow state filled in (length ``observation`` size).
        step_s: Decision period the actor was trained with: the spacing of its bandwidth history, s.
        network: The actor (``adaptive.mlp/v1`` document; validated where it is loaded).
    """

    grid_mbps: tuple[float, ...]
    predicted_ms: tuple[tuple[float | None, ...], ...]
    allowed: tuple[str, ...]
    observation: dict[str, float]
    template: tuple[float, ...]
    step_s: float
    network: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The ``actor`` field."""
        return {"grid_mbps": list(self.grid_mbps), "predicted_ms": [list(r) for r in self.predicted_ms],
                "allowed": list(self.allowed), "observation": dict(self.observation),
                "template": list(self.template), "step_s": self.step_s, "network": self.network}

    @classmethod
    def from_json(cls, obj: Any, num_plans: int) -> ActorRule:
        """Validate the ``actor`` field of a rule with ``num_plans`` candidate plans."""
        w = "rule: actor"
        if not isinstance(obj, dict):
            raise SchemaError(f"{w}: expected an object")
        grid = obj.get("grid_mbps")
        if (not isinstance(grid, list) or not 2 <= len(grid) <= 256
                or not all(_finite(g) and g > 0 for g in grid)
                or any(b <= a for a, b in itertools.pairwise(grid))):
            raise SchemaError(f"{w}: field 'grid_mbps': expected 2 to 256 increasing positive numbers")
        pred = obj.get("predicted_ms")
        if (not isinstance(pred, list) or len(pred) != len(grid)
                or any(not isinstance(r, list) or len(r) != num_plans for r in pred)
                or any(v is not None and not (_finite(v) and v >= 0) for r in pred for v in r)):
            raise SchemaError(f"{w}: field 'predicted_ms': expected {len(grid)} rows of {num_plans} "
                              "latencies >= 0 or null")
        allowed = obj.get("allowed")
        if (not isinstance(allowed, list) or len(allowed) != len(grid)
                or any(not isinstance(a, str) or len(a) != num_plans or set(a) - {"0", "1"}
                       for a in allowed)):
            raise SchemaError(f"{w}: field 'allowed': expected {len(grid)} strings of {num_plans} 0/1")
        spec = obj.get("observation")
        if (not isinstance(spec, dict) or set(spec) != set(OBSERVATION_KEYS)
                or not all(_finite(spec[k]) and spec[k] > 0 for k in OBSERVATION_KEYS)
                or not all(float(spec[k]).is_integer() and spec[k] <= 4096 for k in INTEGER_KEYS)):
            raise SchemaError(f"{w}: field 'observation': expected positive {', '.join(OBSERVATION_KEYS)}")
        if spec["num_plans"] != num_plans:
            raise SchemaError(f"{w}: field 'observation': num_plans is {spec['num_plans']}, "
                              f"with {num_plans} plans")
        d, h = int(spec["num_devices"]), int(spec["history"])
        size = 2 * d + (d - 1) * h + 1 + 2 * num_plans + 1
        template = obj.get("template")
        if not isinstance(template, list) or len(template) != size or not all(_finite(v) for v in template):
            raise SchemaError(f"{w}: field 'template': expected {size} finite numbers")
        step = obj.get("step_s")
        if not (_finite(step) and 0 < step <= 60):
            raise SchemaError(f"{w}: field 'step_s': expected a number in (0, 60]")
        network = obj.get("network")
        if not isinstance(network, dict):
            raise SchemaError(f"{w}: field 'network': expected an object")
        return cls(tuple(float(g) for g in grid),
                   tuple(tuple(None if v is None else float(v) for v in r) for r in pred), tuple(allowed),
                   {k: int(spec[k]) if k in INTEGER_KEYS else float(spec[k]) for k in OBSERVATION_KEYS},
                   tuple(float(v) for v in template), float(step), network)


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


@dataclass(frozen=True)
class RuleMessage:
    """A versioned decision rule for one source node (see the module docstring).

    Attributes:
        version: Rule version, increasing from 1 (shared with plan versions: one counter).
        source: The source node (``devices[0]``), which applies the rule.
        model: Model name every node must hold.
        devices: Node ids in chain order.
        num_blocks: The model's block count ``L``.
        issued_at: Unix time, s.
        policy: Name of the policy that built it.
        edges_mbps: ``table``: ascending uplink bin edges, Mbit/s (``len(plans) - 1`` of them);
            ``policy``: empty.
        plans: ``table``: the plan of each bin; ``policy``: the candidate plans, by action index.
        kind: ``table`` or ``policy``.
        actor: The network and observation of a ``policy`` rule (None for a table).
        deadline_ms: The source drops a request whose predicted latency, with the work it has
            queued ahead, exceeds this (None: it admits every request).
        epoch: The controller's epoch (see :class:`~adaptive.protocol.messages.PlanMessage`).
    """

    version: int
    source: str
    model: str
    devices: tuple[str, ...]
    num_blocks: int
    issued_at: float
    policy: str
    edges_mbps: tuple[float, ...]
    plans: tuple[RulePlan, ...]
    kind: str = "table"
    actor: ActorRule | None = None
    deadline_ms: float | None = None
    epoch: int = 0

    @property
    def rank(self) -> tuple[int, int]:
        """``(epoch, version)``: the order in which plans and rules supersede each other."""
        return self.epoch, self.version

    def index(self, bandwidth_mbps: float) -> int:
        """The bin of ``bandwidth_mbps`` (a NaN or unknown estimate falls in the lowest bin)."""
        if not bandwidth_mbps > 0:
            return 0
        return bisect.bisect_right(self.edges_mbps, bandwidth_mbps)

    def plan(self, k: int) -> PlanMessage:
        """Bin ``k``'s plan as a plan record (for stamping requests)."""
        row = self.plans[k]
        return PlanMessage(version=self.version, model=self.model, devices=self.devices, splits=row.splits,
                           issued_at=self.issued_at, policy=self.policy, predicted_ms=row.predicted_ms,
                           codecs=row.codecs, num_blocks=self.num_blocks, epoch=self.epoch,
                           section=row.section)

    def encode(self) -> bytes:
        """Compact JSON bytes."""
        rows = []
        for p in self.plans:
            row: dict[str, Any] = {"splits": list(p.splits)}
            if p.codecs:
                row["codecs"] = list(p.codecs)
            if p.predicted_ms is not None:
                row["predicted_ms"] = p.predicted_ms
            for key in ("throughput_rps", "at_mbps", "edge_ms", "uplink_bits"):
                if getattr(p, key) is not None:
                    row[key] = getattr(p, key)
            if p.section is not None:
                row["section"] = section_json(p.section)
            rows.append(row)
        doc = {"v": VERSION, "version": self.version, "kind": self.kind, "source": self.source,
               "model": self.model, "devices": list(self.devices), "num_blocks": self.num_blocks,
               "issued_at": self.issued_at, "policy": self.policy, "edges_mbps": list(self.edges_mbps),
               "plans": rows}
        if self.actor is not None:
            doc["actor"] = self.actor.to_json()
        if self.deadline_ms is not None:
            doc["deadline_ms"] = self.deadline_ms
        if self.epoch:
            doc["epoch"] = self.epoch
        return dump_payload(doc)

    @classmethod
    def decode(cls, payload: bytes | str) -> RuleMessage:
        """Parse and validate bytes from the network."""
        w = "rule"
        obj = load_payload(payload, w, MAX_RULE_BYTES)
        check_version(obj, w)
        kind = obj.get("kind")
        if kind not in ("table", "policy"):
            raise SchemaError(f"{w}: field 'kind': expected 'table' or 'policy', found {kind!r}"[:200])
        devices = devices_field(obj, w, 16)
        source = check_id(string(obj, "source", w) or "", "rule: source")
        if source != devices[0]:
            raise SchemaError(f"{w}: field 'source': '{source}' is not the chain's first node '{devices[0]}'")
        num_blocks = integer(obj, "num_blocks", w, lo=1)
        edges = obj.get("edges_mbps")
        if (not isinstance(edges, list) or len(edges) > 256
                or any(isinstance(e, bool) or not isinstance(e, int | float) or not math.isfinite(e) or e <= 0
                       for e in edges)
                or any(b <= a for a, b in itertools.pairwise(edges))):
            raise SchemaError(f"{w}: field 'edges_mbps': expected up to 256 increasing positive numbers")
        rows = obj.get("plans")
        if kind == "policy":
            if edges or not isinstance(rows, list) or not 1 <= len(rows) <= 256:
                raise SchemaError(f"{w}: a policy rule has no 'edges_mbps' and 1 to 256 'plans' "
                                  "(its actions)")
        elif not isinstance(rows, list) or len(rows) != len(edges) + 1:
            raise SchemaError(f"{w}: field 'plans': expected {len(edges) + 1} plans (one per bin)")
        plans = tuple(_row(r, i, len(devices) - 1, num_blocks) for i, r in enumerate(rows))
        actor = ActorRule.from_json(obj.get("actor"), len(plans)) if kind == "policy" else None
        if kind == "table" and "actor" in obj:
            raise SchemaError(f"{w}: a table rule has no 'actor'")
        return cls(version=integer(obj, "version", w, 1, MAX_VERSION), source=source,
                   model=check_id(string(obj, "model", w) or "", "rule: model"), devices=tuple(devices),
                   num_blocks=num_blocks, issued_at=float(number(obj, "issued_at", w, lo=0)),
                   policy=string(obj, "policy", w) or "", edges_mbps=tuple(float(e) for e in edges),
                   plans=plans, kind=kind, actor=actor,
                   deadline_ms=number(obj, "deadline_ms", w, lo=0, optional=True, allow_null=True),
                   epoch=epoch_field(obj, w))


def _row(row: Any, i: int, m: int, num_blocks: int) -> RulePlan:
    w = f"rule: plans[{i}]"
    if not isinstance(row, dict):
        raise SchemaError(f"{w}: expected an object")
    splits = row.get("splits")
    if (not isinstance(splits, list) or len(splits) != m
            or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= num_blocks for s in splits)
            or any(b < a for a, b in itertools.pairwise(splits))):
        raise SchemaError(f"{w}: field 'splits': expected {m} non-decreasing integers in 0..{num_blocks}")
    codecs = row.get("codecs", [])
    if not isinstance(codecs, list) or (codecs and len(codecs) != m) or any(c not in CODECS for c in codecs):
        raise SchemaError(f"{w}: field 'codecs': expected {m} of none/fp16/int8")
    return RulePlan(tuple(splits), tuple(codecs),
                    *(number(row, key, w, lo=0, optional=True, allow_null=True)
                      for key in ("predicted_ms", "throughput_rps", "at_mbps", "edge_ms", "uplink_bits")),
                    section=section_field(row, w, splits))
