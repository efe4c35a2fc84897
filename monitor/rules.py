"""Decision rules: how the controller tells a source node to pick each request's plan.

Two-level control (Intra-DP, seed 001 Sec. 3.2): the controller (slow, central) publishes a rule per
source node on ``adaptive/<cluster>/node/<source>/rule`` (QoS 1, retained, versioned); the source
(fast, local) applies it to every request with its own fresh uplink estimate, with no network round
trip. A ``table`` rule maps the source's uplink bandwidth to a plan, for the slow state the
controller conditioned it on (load, clients, calibration, dead nodes, request rate): plan ``k``
applies when ``edges_mbps[k-1] <= bandwidth < edges_mbps[k]``. The source answers on its ack topic
with the rule's version, like a plan. Receivers validate every message; a bad one is refused and the
source keeps its last good rule.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from typing import Any

from monitor.schema import (
    VERSION,
    PlanMessage,
    SchemaError,
    _dump,
    _int,
    _load,
    _num,
    _str,
    _version,
    check_id,
    devices_field,
)

__all__ = ["RuleMessage", "RulePlan", "rule_topic"]

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
    """

    splits: tuple[int, ...]
    codecs: tuple[str, ...] = ()
    predicted_ms: float | None = None
    throughput_rps: float | None = None


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
        edges_mbps: Ascending uplink bin edges, Mbit/s (``len(plans) - 1`` of them).
        plans: The plan of each bin.
        kind: ``table``.
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
                           codecs=row.codecs, num_blocks=self.num_blocks)

    def encode(self) -> bytes:
        """Compact JSON bytes."""
        rows = []
        for p in self.plans:
            row: dict[str, Any] = {"splits": list(p.splits)}
            if p.codecs:
                row["codecs"] = list(p.codecs)
            if p.predicted_ms is not None:
                row["predicted_ms"] = p.predicted_ms
            if p.throughput_rps is not None:
                row["throughput_rps"] = p.throughput_rps
            rows.append(row)
        return _dump({"v": VERSION, "version": self.version, "kind": self.kind, "source": self.source,
                      "model": self.model, "devices": list(self.devices), "num_blocks": self.num_blocks,
                      "issued_at": self.issued_at, "policy": self.policy, "edges_mbps": list(self.edges_mbps),
                      "plans": rows})

    @classmethod
    def decode(cls, payload: bytes | str) -> RuleMessage:
        """Parse and validate bytes from the network."""
        w = "rule"
        obj = _load(payload, w)
        _version(obj, w)
        if obj.get("kind") != "table":
            raise SchemaError(f"{w}: field 'kind': expected 'table', found {obj.get('kind')!r}"[:200])
        devices = devices_field(obj, w, 16)
        source = check_id(_str(obj, "source", w) or "", "rule: source")
        if source != devices[0]:
            raise SchemaError(f"{w}: field 'source': '{source}' is not the chain's first node '{devices[0]}'")
        num_blocks = _int(obj, "num_blocks", w, lo=1)
        edges = obj.get("edges_mbps")
        if (not isinstance(edges, list) or len(edges) > 256
                or any(isinstance(e, bool) or not isinstance(e, int | float) or not math.isfinite(e) or e <= 0
                       for e in edges)
                or any(b <= a for a, b in itertools.pairwise(edges))):
            raise SchemaError(f"{w}: field 'edges_mbps': expected up to 256 increasing positive numbers")
        rows = obj.get("plans")
        if not isinstance(rows, list) or len(rows) != len(edges) + 1:
            raise SchemaError(f"{w}: field 'plans': expected {len(edges) + 1} plans (one per bin)")
        plans = tuple(_row(r, i, len(devices) - 1, num_blocks) for i, r in enumerate(rows))
        return cls(version=_int(obj, "version", w, lo=1), source=source,
                   model=check_id(_str(obj, "model", w) or "", "rule: model"), devices=tuple(devices),
                   num_blocks=num_blocks, issued_at=float(_num(obj, "issued_at", w, lo=0)),
                   policy=_str(obj, "policy", w) or "", edges_mbps=tuple(float(e) for e in edges),
                   plans=plans)


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
                    _num(row, "predicted_ms", w, lo=0, optional=True, allow_null=True),
                    _num(row, "throughput_rps", w, lo=0, optional=True, allow_null=True))
