"""The controller daemon: live telemetry in, versioned split plans out.

Every ``interval_s`` it builds the policy's observation from the newest telemetry with the same
mapping the environment uses (:mod:`adaptive.model.observation`), masks plans that do not fit reported
memory or that give work to a dead node, asks the policy, and — if the plan changes and the last
change is at least ``min_dwell_s`` old (or the current plan uses a dead node) — publishes the next
plan version (retained, QoS 1) and collects the nodes' acks.

Online calibration: nodes report measured stage times (:class:`adaptive.protocol.messages.StatsMessage`); the
controller keeps a scale factor per node, an exponentially weighted mean of measured / predicted
stage time, and rebuilds its latency model from the scaled profiles whenever a scale has moved 2%
from the one the model was built with, so predictions (and the policy's observations) track the
real devices. The policy is any object with Stable-Baselines3's
``predict``; the CLI wires concrete policies in, so this module never imports ``agents``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adaptive.control.telemetry import Collector
from adaptive.errors import AdaptiveError
from adaptive.model.decision import DecisionTable, actor_rule, decision_table, grid_choices
from adaptive.model.latency import ConditionBatch, SplitModel
from adaptive.model.mlp import MlpPolicyNet
from adaptive.model.observation import CandidatePlans, ObservationSpec, candidate_plans
from adaptive.model.profiles import (
    DeviceProfile,
    ModelProfile,
    resolve_device,
    resolve_model,
    scaled_profiles,
)
from adaptive.protocol.messages import (
    Ack,
    Message,
    PlanMessage,
    SchemaError,
    StatsMessage,
    parse_topic,
    plan_topic,
)
from adaptive.protocol.rules import RuleMessage, RulePlan, rule_topic
from monitor.transport import BrokerAddress, MqttTransport

__all__ = ["ChainNode", "Controller", "ControllerConfig", "Decision", "scaled_profiles"]

log = logging.getLogger(__name__)


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
            kwargs = {k: v for k, v in doc.items() if k not in ("chain", "sources")}
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
                or cfg.reconnect_grace_s < 0):
            raise AdaptiveError(f"{source}: interval_s and stale_after_s must be > 0, min_dwell_s and "
                                "reconnect_grace_s >= 0")
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> ControllerConfig:
        """Read YAML."""
        import yaml

        try:
            doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AdaptiveError(f"{path}: controller config not found") from None
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


class Controller:
    """Turns telemetry into plans (see the module docstring).

    Args:
        config: Controller configuration.
        broker: MQTT broker.
        policy: Anything with ``predict(obs, action_masks=...)``.
        candidates: The action set (a trained policy's sidecar fixes it; else derived here).
        obs_spec: The observation layout (likewise).
        policy_name: Name published with each plan.
        on_model: Called with each new (calibrated) model, e.g. to update a heuristic policy.
        ca_file: CA bundle for an ``mqtts://`` broker.
        metrics: Prometheus metrics (:class:`adaptive.control.metrics.ControllerMetrics`), or None.
    """

    def __init__(self, config: ControllerConfig, broker: BrokerAddress, policy: Any, *,
                 candidates: CandidatePlans | None = None, obs_spec: ObservationSpec | None = None,
                 policy_name: str = "policy", on_model: Callable[[SplitModel], None] | None = None,
                 ca_file: str | None = None, metrics: Any = None) -> None:
        self.config = config
        self.metrics = metrics
        self.policy = policy
        self.policy_name = policy_name
        self.on_model = on_model
        self.profile: ModelProfile = resolve_model(config.model_profile)
        self.devices: list[DeviceProfile] = [resolve_device(c.device) for c in config.chain]
        self.scales = {c.node: 1.0 for c in config.chain}
        self._model_scales = dict(self.scales)  # the scales self.model was built with
        self.scale_history: deque[tuple[float, dict[str, float]]] = deque(maxlen=10_000)
        self._base_model = SplitModel(self.profile, self.devices)  # the profiles as shipped
        self.model = self._base_model
        self.candidates = candidates or candidate_plans(self.model, max_plans=config.max_plans)
        if obs_spec is None:
            D = len(self.devices)
            nominal = self.model.evaluate(self.candidates.plans.take(0), ConditionBatch(
                np.ones((1, D - 1)), np.zeros((1, D - 1)), np.zeros((1, D)), np.ones(1),
                np.array([[d.memory_mb for d in self.devices]])))
            obs_spec = ObservationSpec(len(self.devices), len(self.candidates),
                                       float(nominal.latency_ms[0, 0]), history=config.history)
        if obs_spec.num_devices != len(self.devices) or obs_spec.num_plans != len(self.candidates):
            raise AdaptiveError(f"policy expects {obs_spec.num_devices} devices and {obs_spec.num_plans} "
                                f"plans; the chain has {len(self.devices)} devices")
        self.obs_spec = obs_spec
        mode = config.source_rule
        if mode == "policy" and not isinstance(policy, MlpPolicyNet):
            raise AdaptiveError("source_rule: policy needs a trained PPO policy (--policy ppo[:PATH])")
        self.rule_kind = {"auto": "policy" if isinstance(policy, MlpPolicyNet) else "table"}.get(mode, mode)
        M = len(self.devices) - 1
        self._bw_history = deque([np.full(M, config.default_bandwidth_mbps)] * obs_spec.history,
                                 maxlen=obs_spec.history)
        self.collector = Collector(broker, config.cluster, client_id=f"controller-{config.cluster}-view",
                                   ca_file=ca_file)
        self.transport = MqttTransport(
            broker, client_id=f"controller-{config.cluster}",
            subscriptions=[(plan_topic(config.cluster), 1), (f"adaptive/{config.cluster}/node/+/ack", 1),
                           (f"adaptive/{config.cluster}/node/+/stats", 1)],
            on_message=self._on_message, ca_file=ca_file, on_connect_messages=self._retained)
        self.current: int | None = None
        self._reissue: int | None = None  # a plan not applied, to publish again
        self._last_plan: Message | None = None  # republished on every reconnect (a new broker forgot it)
        self._last_rule: Message | None = None
        self._table: DecisionTable | None = None  # the table of the rule in force
        self._basis: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # what the actor rule assumed
        self._rates: dict[str, tuple[float, float]] = {}  # source -> (request rate, Unix time of its stats)
        self._sources = (config.chain[0].node,)  # nodes whose request rate is measured
        self.rules: deque[RuleMessage] = deque(maxlen=1000)
        self.version = 0
        self.last_switch = 0.0
        self.decisions: deque[Decision] = deque(maxlen=1000)  # newest last; bounded: a daemon runs for months
        self.observed: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._retained_seen = threading.Event()

    # ------------------------------------------------------------------ lifecycle

    def start(self, wait_s: float = 10.0) -> Controller:
        """Connect, learn the last plan version from the retained topic, start deciding."""
        self.collector.start(wait_s)
        self.transport.start(wait_s)
        self._retained_seen.wait(1.0)  # a retained plan from an earlier run arrives on subscribe
        self._thread = threading.Thread(target=self._loop, name="controller", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop deciding and disconnect (the retained plan stays in force)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.transport.close()
        self.collector.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._stop.is_set()

    def fixed_plan(self, splits: tuple[int, ...], codecs: tuple[str, ...] | None, policy: str) -> PlanMessage:
        """The next version of the plan topic for a plan chosen outside the controller (not published).

        Lets a caller that stopped this controller pin a fixed plan whose version still follows
        every plan the controller issued, so nodes accept it.
        """
        with self._lock:
            self.version += 1
            version = self.version
        return PlanMessage(version, self.profile.model, tuple(c.node for c in self.config.chain), splits,
                           round(time.time(), 3), policy, None, codecs, self.model.num_blocks)

    def _retained(self) -> list[Message]:
        with self._lock:
            return [m for m in (self._last_plan, self._last_rule) if m is not None]

    def connected(self) -> bool:
        """Both broker sessions (telemetry view and control) are up."""
        return self.transport.connected and self.collector.transport.connected

    # ------------------------------------------------------------------ messages

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            _, kind, node = parse_topic(topic)
            if kind == "plan":
                if payload:
                    plan = PlanMessage.decode(payload)
                    with self._lock:
                        self.version = max(self.version, plan.version)
                self._retained_seen.set()
            elif kind == "ack":
                ack = Ack.decode(payload)
                if ack.node != node:
                    raise SchemaError(f"ack names node '{ack.node}' on the topic of '{node}'")
                self._on_ack(ack)
            elif kind == "stats":
                stats = StatsMessage.decode(payload)
                if stats.node != node:
                    raise SchemaError(f"stats name node '{stats.node}' on the topic of '{node}'")
                if node in self._sources:
                    self._measure_rate(stats)
                if self.config.calibrate:
                    self._calibrate(stats)
        except SchemaError as exc:
            log.warning("dropped message on %s: %s", topic, exc)

    def _on_ack(self, ack: Ack) -> None:
        with self._lock:
            decision = next((d for d in reversed(self.decisions) if d.version == ack.version), None)
            if decision is None:
                return
            if ack.ok:
                decision.acked.add(ack.node)
            else:
                decision.rejected[ack.node] = ack.error
                log.warning("node %s rejected plan %d: %s", ack.node, ack.version, ack.error)
            if decision.applied_at is None and decision.expected <= decision.acked:
                decision.applied_at = time.time()

    def _measure_rate(self, stats: StatsMessage) -> None:
        """A source's request rate from its stats: requests it started per second."""
        requests = sum(st.count * st.batch for st in stats.stages)
        with self._lock:
            rate, at = self._rates.get(stats.node, (0.0, 0.0))
            span = stats.ts - at if 0 < stats.ts - at < 5 else 1.0
            now_rate = requests / span
            self._rates[stats.node] = (0.5 * rate + 0.5 * now_rate if at else now_rate, stats.ts)

    def request_rate(self, now: float | None = None, source: str | None = None) -> float:
        """A source's recent request rate, requests/s (0 after 3 s without stats).

        ``source`` defaults to the chain's first node.
        """
        now = time.time() if now is None else now
        with self._lock:
            rate, at = self._rates.get(source or self.config.chain[0].node, (0.0, 0.0))
        return rate if now - at < 3.0 else 0.0

    def _stage_model(self, node: str) -> tuple[SplitModel, int] | None:
        """The shipped-profile model a node's stage times are compared with, and its position there."""
        idx = next((i for i, c in enumerate(self.config.chain) if c.node == node), None)
        return None if idx is None else (self._base_model, idx)

    def _calibrate(self, stats: StatsMessage) -> None:
        found = self._stage_model(stats.node)
        if found is None:
            return
        base_model, idx = found
        w = self.config.calibration_weight
        updated = False
        for st in stats.stages:
            a, b = np.array([st.start]), np.array([st.stop])
            base = float(base_model.exec_base(idx, a, b)[0])
            # the first device serves its own client; accelerators batch (seed 000 Sec. V-D)
            device = base_model.devices[idx]
            batching = 1 + device.batch_per_extra_item * (st.batch - 1) if idx else 1.0
            predicted = base * batching
            if predicted < 0.5 or st.exec_ms <= 0:
                continue  # too small to compare reliably
            # a guard against a broken measurement, wide enough for devices emulated far slower
            # than their profile (an experiment's live run slows Orins 30x)
            ratio = float(np.clip(st.exec_ms / predicted, 0.01, 1000.0))
            with self._lock:
                self.scales[stats.node] = (1 - w) * self.scales[stats.node] + w * ratio
            updated = True
        if not updated:
            return
        with self._lock:
            self.scale_history.append((time.time(), dict(self.scales)))
            drift = max(abs(self.scales[n] / self._model_scales[n] - 1) for n in self.scales)
        if drift > 0.02:  # rebuild when the model's scales are 2% off, not on every small step
            self._rebuild_model()

    def adopt_scales(self, scales: Mapping[str, float]) -> None:
        """Start from compute scales measured earlier (e.g. by a previous controller), per node."""
        with self._lock:
            for node, k in scales.items():
                if node in self.scales and k > 0:
                    self.scales[node] = float(k)
        self._rebuild_model()

    def _rebuild_model(self) -> None:
        """Rebuild the model with every node's compute scaled by its fitted factor."""
        with self._lock:
            scales = dict(self.scales)
        names = [c.node for c in self.config.chain]
        model = SplitModel(*scaled_profiles(self.profile, self.devices, [scales[n] for n in names], names))
        self.model = model
        with self._lock:
            self._model_scales = scales
        if self.on_model is not None:
            self.on_model(model)

    # ------------------------------------------------------------------ decisions

    def observe(self, now: float | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """``(observation, action mask, dead nodes)`` from the newest telemetry."""
        return self._observe(now)[:3]

    def _observe(self, now: float | None = None) -> tuple[np.ndarray, np.ndarray, list[str], ConditionBatch]:
        """:meth:`observe`, plus the conditions it predicted under."""
        now = time.time() if now is None else now
        cfg = self.config
        views = self.collector.nodes()
        D = len(cfg.chain)
        cpu, mem, dead = np.zeros(D), np.array([d.memory_mb for d in self.devices]), []
        for i, c in enumerate(cfg.chain):
            v = views.get(c.node)
            if not self._alive(v, now):
                dead.append(c.node)
                continue
            assert v is not None and v.telemetry is not None
            cpu[i] = v.telemetry.cpu_percent / 100
            mem[i] = min(v.telemetry.available_mb, self.devices[i].memory_mb)
        bw = self._bw_history[-1].copy()
        ages: list[float | None] = [None] * (D - 1)
        for m in range(1, D):
            v = views.get(cfg.chain[m - 1].node)
            est = v.telemetry.links.get(cfg.chain[m].node) if v and v.telemetry else None
            if est is not None and v is not None and v.telemetry is not None:
                value = est.passive_mbps or est.bandwidth_mbps
                if value:
                    bw[m - 1] = value
                    measured = v.telemetry.ts if est.passive_mbps else (est.measured_at or v.telemetry.ts)
                    ages[m - 1] = max(now - measured, 0.0)
        self._bw_history.append(bw)
        hist = np.stack(list(self._bw_history))[None]  # (1, H, M)
        cond = ConditionBatch(hist[:, -1], np.zeros((1, D - 1)), cpu[None],
                              np.array([float(cfg.clients)]), mem[None])
        pred = self.model.evaluate(self.candidates.plans, cond)
        total = np.array([d.memory_mb for d in self.devices])
        static = self.obs_spec.static_part(cpu[None], (mem / total)[None], hist, np.array([cfg.clients]),
                                           pred.latency_ms, pred.feasible)[0]
        dwell = int((now - self.last_switch) / cfg.interval_s) if self.current is not None else 0
        obs = self.obs_spec.encode(static, self.current or 0, dwell)
        mask = pred.feasible[0] & self._alive_mask(dead)
        if not mask.any():
            mask = self._alive_mask(dead) if self._alive_mask(dead).any() else np.ones_like(mask)
        with self._lock:
            self.observed = {"cpu": cpu.tolist(), "available_mb": mem.tolist(),
                             "bandwidth_mbps": bw.tolist(), "dead": dead,
                             "predicted_ms": pred.latency_ms[0].tolist()}
            scales = dict(self.scales)
        if self.metrics is not None:
            names = [c.node for c in cfg.chain]
            links = {f"{names[m]}->{names[m + 1]}": (float(bw[m]), ages[m]) for m in range(D - 1)}
            self.metrics.observed(links, {n: n not in dead for n in names}, scales, self.connected())
        return obs, mask, dead, cond

    def _alive(self, view: Any, now: float) -> bool:
        """A node's view shows it online with fresh telemetry.

        After our own broker session comes back, nodes get time to reconnect before they can look stale.
        """
        cfg = self.config
        grace = now < self.collector.reconnected_at() + cfg.stale_after_s + cfg.reconnect_grace_s
        return (view is not None and view.online() and view.telemetry is not None
                and (grace or view.fresh(now, cfg.stale_after_s)))

    def _alive_mask(self, dead: list[str]) -> np.ndarray:
        """Plans that give no blocks to a dead node (the first node must be alive for any plan)."""
        L = self.model.num_blocks
        splits = self.candidates.plans.splits
        bounds = np.column_stack([np.zeros(len(splits), np.int64), splits, np.full(len(splits), L)])
        ok = np.ones(len(splits), bool)
        for i, c in enumerate(self.config.chain):
            if c.node in dead and i > 0:
                ok &= bounds[:, i + 1] == bounds[:, i]
        return ok

    def step(self, now: float | None = None) -> Decision | None:
        """Decide once; publish a new plan if it changes. Returns the decision published, if any.

        Nothing is decided while the broker is away: the telemetry is frozen and nobody would hear.
        """
        now = time.time() if now is None else now
        if not self.connected():
            return None
        obs, mask, dead, cond = self._observe(now)
        if self.rule_kind == "table":
            self._publish_rule(now, mask, cond)
        elif self.rule_kind == "policy":
            self._publish_actor_rule(now, obs, mask, cond)
        again, self._reissue = self._reissue, None
        if again is not None and again == self.current and mask[again]:
            return self._publish(again, now, dead, keep_switch_time=True)
        action, _ = self.policy.predict(obs, deterministic=True, action_masks=mask)
        action = int(action)
        if not mask[action]:
            action = int(np.flatnonzero(mask)[0])
        must_move = self.current is not None and not mask[self.current]
        dwell_ok = now - self.last_switch >= self.config.min_dwell_s
        if self.current is not None and action == self.current:
            return None
        if self.current is not None and not (dwell_ok or must_move):
            return None
        return self._publish(action, now, dead)

    def _publish(self, action: int, now: float, dead: list[str], keep_switch_time: bool = False) -> Decision:
        plan = self.candidates.plan(action)
        with self._lock:
            self.version += 1
            version = self.version
            predicted = float(self.observed.get("predicted_ms", [0.0] * (action + 1))[action])
        msg = PlanMessage(version=version, model=self.profile.model,
                          devices=tuple(c.node for c in self.config.chain), splits=plan.splits,
                          issued_at=round(now, 3), policy=self.policy_name,
                          predicted_ms=round(predicted, 3) if np.isfinite(predicted) else None,
                          codecs=plan.codecs, num_blocks=self.model.num_blocks)
        expected = frozenset(c.node for c in self.config.chain if c.node not in dead)
        decision = Decision(version, action, now, predicted, expected=expected)
        message = Message(plan_topic(self.config.cluster), msg.encode(), qos=1, retain=True)
        with self._lock:
            self.decisions.append(decision)
            self._last_plan = message
        self.transport.publish(message)
        self.current = action
        if not keep_switch_time:
            self.last_switch = now
        if self.metrics is not None:
            self.metrics.switched(version, predicted)
        log.info("plan %d: %s (predicted %.1f ms) by %s", version, plan, predicted, self.policy_name)
        return decision

    def _publish_rule(self, now: float, mask: np.ndarray, cond: ConditionBatch) -> RuleMessage | None:
        """Publish the source's decision table if the one in force no longer holds; returns it if so."""
        table = decision_table(self.model, self.candidates, cond, mask, self.request_rate(now),
                               self.config.rate_headroom, incumbent=self._table)
        if table is self._table:
            return None
        rows = []
        for a, ms, rps in zip(table.actions, table.predicted_ms, table.throughput_rps, strict=True):
            plan = self.candidates.plan(a)
            rows.append(RulePlan(plan.splits, plan.codecs, round(ms, 3) if np.isfinite(ms) else None,
                                 round(rps, 3) if np.isfinite(rps) else None))
        with self._lock:
            self.version += 1
            version = self.version
        devices = tuple(c.node for c in self.config.chain)
        edges = tuple(round(e, 4) for e in table.edges_mbps)
        rule = RuleMessage(version, devices[0], self.profile.model, devices, self.model.num_blocks,
                           round(now, 3), "table", edges, tuple(rows))
        message = Message(rule_topic(self.config.cluster, devices[0]), rule.encode(), qos=1, retain=True)
        with self._lock:
            self._last_rule, self._table = message, table
            self.rules.append(rule)
        self.transport.publish(message)
        log.info("rule %d for %s: %d bins, edges %s Mbit/s", version, devices[0], len(rows),
                 [round(e, 2) for e in table.edges_mbps])
        return rule

    def _publish_actor_rule(self, now: float, obs: np.ndarray, mask: np.ndarray, cond: ConditionBatch,
                            margin: float = 0.05, slack: float = 0.05) -> RuleMessage | None:
        """Publish the actor as the source's rule if what the rule in force assumed no longer holds.

        The source completes the observation itself (uplink history, predicted latencies, plan in
        force, dwell); the rule carries the rest, the grid of predictions and what is allowed. It is
        republished when the allowed plans change anywhere on the grid, a prediction moves by more
        than ``margin`` (relative), or a slow observation entry by more than ``slack``.
        """
        pred, ok = grid_choices(self.model, self.candidates, cond, mask, self.request_rate(now),
                                self.config.rate_headroom)
        latency = np.where(pred.feasible, pred.latency_ms, np.inf)
        spec = self.obs_spec
        D, H, P = spec.num_devices, spec.history, spec.num_plans
        slow = np.concatenate([obs[: 2 * D], obs[2 * D + H : 2 * D + (D - 1) * H + 1]])
        if self._basis is not None:
            was_ok, was_latency, was_slow = self._basis
            finite = np.isfinite(latency)
            if (np.array_equal(was_ok, ok) and np.array_equal(np.isfinite(was_latency), finite)
                    and np.all(np.abs(latency[finite] - was_latency[finite]) <= margin * was_latency[finite])
                    and np.all(np.abs(slow - was_slow) <= slack)):
                return None
        rows = tuple(RulePlan(p.splits, p.codecs) for p in (self.candidates.plan(a) for a in range(P)))
        step_s = getattr(self.policy, "step_s", None) or self.config.interval_s
        actor = actor_rule(latency, ok, spec, obs, step_s, self.policy.to_json())
        with self._lock:
            self.version += 1
            version = self.version
        devices = tuple(c.node for c in self.config.chain)
        rule = RuleMessage(version, devices[0], self.profile.model, devices, self.model.num_blocks,
                           round(now, 3), self.policy_name, (), rows, kind="policy", actor=actor)
        message = Message(rule_topic(self.config.cluster, devices[0]), rule.encode(), qos=1, retain=True)
        with self._lock:
            self._last_rule, self._basis = message, (ok, latency, slow)
            self.rules.append(rule)
        self.transport.publish(message)
        log.info("rule %d for %s: the %s actor, %d plans allowed somewhere", version, devices[0],
                 self.policy_name, int(ok.any(axis=0).sum()))
        return rule

    def check_acks(self, now: float | None = None) -> None:
        """Re-issue the newest plan if some chain node refused it or has not acked it in ``ack_timeout_s``.

        A node refuses a plan that names a peer it has not heard of yet or one it believes offline
        (both happen while a cluster starts or a broker restarts), and a node that was away may have
        missed it. The same plan then goes out again under a new version, at most once per
        ``ack_timeout_s``; the nodes still missing are logged and listed in :attr:`Decision.missing`.
        """
        now = time.time() if now is None else now
        with self._lock:
            d = self.decisions[-1] if self.decisions else None
            if d is None or d.applied_at is not None or now - d.issued_at < self.config.ack_timeout_s:
                return
            d.missing = tuple(c.node for c in self.config.chain
                              if c.node in d.expected and c.node not in d.acked)
            if not d.missing:
                return
        log.warning("plan %d: not applied by %s after %.1f s; issuing it again", d.version,
                    ", ".join(d.missing), self.config.ack_timeout_s)
        self._reissue = d.action  # at the next step(), if the plan is still allowed

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.check_acks()
                self.step()
            except (AdaptiveError, ValueError) as exc:
                log.warning("decision skipped: %s", exc)
            next_at += self.config.interval_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))
