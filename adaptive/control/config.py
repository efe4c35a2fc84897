"""What a controller is told (:class:`ControllerConfig`, read from YAML) and what it records."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptive.errors import AdaptiveError, read_input

__all__ = ["ChainNode", "ControllerConfig", "Decision"]


@dataclass(frozen=True)
class ChainNode:
    """A node of the chain and the device profile that describes it."""

    node: str
    device: str


@dataclass(frozen=True)
class ControllerConfig:
    """Configuration of the controller (YAML keys are these field names).

    Attributes:
        model_profile: Shipped model name or profile path.
        chain: Nodes in chain order (the first holds the input) with their device profiles.
        cluster: Cluster id.
        interval_s: Decision period, s.
        min_dwell_s: Least time between plan changes, s (a dead node overrides it).
        stale_after_s: Telemetry older than this marks a node dead, s. After our own broker
            session comes back from a loss, every node gets ``stale_after_s + reconnect_grace_s``
            from that moment before it can be judged stale (the broker's outage is not theirs).
        reconnect_grace_s: Time nodes get to reconnect after a broker outage (paho's backoff is
            at most 4 s), s.
        ack_timeout_s: Acks expected within this, s.
        clients: Clients sharing the accelerators (for predictions).
        default_bandwidth_mbps: Assumed before a link has any estimate, Mbit/s.
        calibrate: Refit per-device scale factors from measured stage times.
        calibration_weight: Weight of each new measurement in the scale's moving average, (0, 1].
        max_plans: Candidate plans when no trained policy fixes them.
        parallel: Candidate plans (when no trained policy fixes them) may carry a parallel section
            (Intra-DP's local operation parallelism; docs/model.md, "Parallel sections"); false:
            layer plans only.
        history: Bandwidth samples per link in the observation (a trained policy's sidecar wins).
        source_rule: The decision rule published for the source node (the chain's first), which
            applies it to every request with its own fresh uplink estimate: ``table`` (the best
            plan per uplink bin for the current slow state, :mod:`adaptive.model.decision`), ``policy``
            (the trained actor itself, evaluated at the source; needs a PPO policy), ``auto`` (the
            default: ``policy`` with a PPO policy, else ``table``) or ``off`` (requests follow
            the default plan). ``true``/``false`` mean ``auto``/``off``.
        rate_headroom: With ``source_rule``, the table leaves out plans whose predicted throughput
            is below this many times the source's measured request rate.
        sources: More clients' edge nodes, each with its own client and uplink, sharing the
            accelerators ``chain[1:]`` with ``chain[0]``
            (:class:`adaptive.control.shared_controller.SharedController`
            decides for all of them jointly and publishes each its own rule). Empty: one chain.
    """

    model_profile: str
    chain: tuple[ChainNode, ...]
    cluster: str = "default"
    interval_s: float = 1.0
    min_dwell_s: float = 3.0
    stale_after_s: float = 3.0
    reconnect_grace_s: float = 5.0
    ack_timeout_s: float = 3.0
    clients: int = 1
    default_bandwidth_mbps: float = 10.0
    calibrate: bool = True
    calibration_weight: float = 0.3
    max_plans: int = 32
    parallel: bool = True
    history: int = 4
    source_rule: str = "auto"
    rate_headroom: float = 1.2
    sources: tuple[ChainNode, ...] = ()

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], source: str = "<dict>") -> ControllerConfig:
        """Build from a mapping (``chain`` is a list of ``{node, device}``)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(doc) - known
        if unknown:
            raise AdaptiveError(f"{source}: unknown controller config key(s) {sorted(unknown)}")
        for key in ("chain", "sources"):
            for c in doc.get(key) or ():
                if not isinstance(c, Mapping) or set(c) != {"node", "device"}:
                    raise AdaptiveError(f"{source}: each entry of {key} must be {{node, device}}, "
                                        f"found {c!r}"[:300])
        try:
            chain = tuple(ChainNode(str(c["node"]), str(c["device"])) for c in doc["chain"])
            sources = tuple(ChainNode(str(c["node"]), str(c["device"])) for c in doc.get("sources") or ())
            kwargs = {k: _typed(cls, k, v, source) for k, v in doc.items() if k not in ("chain", "sources")}
            cfg = cls(chain=chain, sources=sources, **kwargs)
        except (KeyError, TypeError) as exc:
            raise AdaptiveError(f"{source}: controller config needs model_profile and a chain (and "
                                f"sources) of {{node, device}} ({exc})") from None
        if isinstance(cfg.source_rule, bool):
            cfg = dataclasses.replace(cfg, source_rule="auto" if cfg.source_rule else "off")
        if cfg.source_rule not in ("auto", "table", "policy", "off"):
            raise AdaptiveError(f"{source}: source_rule must be auto, table, policy or off, "
                                f"found {cfg.source_rule!r}")
        if len(cfg.chain) < 1 or len({c.node for c in cfg.chain}) != len(cfg.chain):
            raise AdaptiveError(f"{source}: chain must list distinct nodes")
        named = [c.node for c in (*cfg.chain, *cfg.sources)]
        if len(set(named)) != len(named):
            raise AdaptiveError(f"{source}: sources must be distinct nodes, none of them in the chain")
        if cfg.sources and len(cfg.chain) < 2:
            raise AdaptiveError(f"{source}: sources share the chain's accelerators; the chain has none")
        if (not cfg.interval_s > 0 or cfg.min_dwell_s < 0 or not cfg.stale_after_s > 0
                or cfg.reconnect_grace_s < 0 or not cfg.ack_timeout_s > 0
                or not cfg.default_bandwidth_mbps > 0 or not cfg.rate_headroom >= 0):
            raise AdaptiveError(f"{source}: interval_s, stale_after_s, ack_timeout_s and "
                                "default_bandwidth_mbps must be > 0; min_dwell_s, reconnect_grace_s and "
                                "rate_headroom >= 0")
        if cfg.clients < 1 or cfg.max_plans < 2 or cfg.history < 1 or not 0 <= cfg.calibration_weight <= 1:
            raise AdaptiveError(f"{source}: clients and history must be >= 1, max_plans >= 2, "
                                "calibration_weight in [0, 1]")
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> ControllerConfig:
        """Read YAML."""
        import yaml

        text = read_input(path, "a controller config (YAML)")
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError:
            raise AdaptiveError(f"{path}: invalid YAML") from None
        if not isinstance(doc, dict):
            raise AdaptiveError(f"{path}: expected a mapping")
        return cls.from_dict(doc, str(path))


@dataclass
class Decision:
    """One published plan and how its switch went.

    Attributes:
        version: Plan version.
        action: Index of the plan among the candidates.
        issued_at: Unix time it was published, s.
        predicted_ms: Predicted end-to-end latency when it was chosen, ms.
        acked: Nodes that accepted it.
        rejected: Nodes that refused it, with their error.
        applied_at: When every expected node had accepted it (None until then).
        expected: The chain nodes alive when it was issued.
        missing: Expected nodes with no answer after ``ack_timeout_s``.
    """

    version: int
    action: int
    issued_at: float
    predicted_ms: float
    acked: set[str] = field(default_factory=set)
    rejected: dict[str, str] = field(default_factory=dict)
    applied_at: float | None = None
    expected: frozenset[str] = frozenset()
    missing: tuple[str, ...] = ()


def _typed(cls: type, key: str, value: Any, source: str) -> Any:
    """``value`` for the scalar field ``key``, checked against the kind of its default."""
    default = next(f.default for f in dataclasses.fields(cls) if f.name == key)
    if key == "source_rule" and isinstance(value, bool):
        return value
    if default is dataclasses.MISSING or isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int | float):
        ok = (not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
              and (isinstance(default, float) or float(value).is_integer()))
        value = type(default)(value) if ok else value
    else:
        ok = True
    if not ok:
        kind = "text" if default is dataclasses.MISSING else type(default).__name__
        found = repr(value)[:80]
        raise AdaptiveError(f"{source}: controller config key '{key}': expected a {kind}, found {found}")
    return value
