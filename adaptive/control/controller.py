"""The controller of one chain: the slow level of two-level control.

Control has two levels (seed 001 Sec. 3.2). This daemon is the slow one: every ``interval_s`` it
builds the policy's observation from the newest telemetry with the same mapping the environment
uses (:mod:`adaptive.model.observation`), masks plans that do not fit reported memory or that give
work to a dead node, and publishes

* a **decision rule** for the source node (the chain's first, where the input is): a table of
  plans per uplink bandwidth bin for the current slow state (:mod:`adaptive.model.decision`), or
  the trained actor itself. The source (:mod:`adaptive.runtime.source`), the fast level, applies it
  to every request with its own fresh uplink estimate;
* the **default plan** (retained, versioned): the policy's choice, the plan requests follow when
  no rule applies (``source_rule: off``, a source that lost its rule) and the audit trail. It
  changes when the policy's choice does and the last change is at least ``min_dwell_s`` old (or
  the plan in force uses a dead node), and goes out again when a node has not applied it.

It owns liveness (:class:`~adaptive.control.telemetry.Collector`), calibration
(:class:`~adaptive.control.calibration.Calibration`: the model is rebuilt from profiles scaled by
measured stage times) and the MQTT side (:class:`~adaptive.control.channel.ControlChannel`). The
policy is any object with Stable-Baselines3's ``predict``; the CLI wires concrete policies in, so
this module never imports ``agents``. Several sources sharing the accelerators have their own
controller, :class:`adaptive.control.shared_controller.SharedController`, built from the same parts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from adaptive.control.config import ChainNode, ControllerConfig, Decision
from adaptive.control.session import ControlSession
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
from adaptive.protocol.messages import Ack, PlanMessage
from adaptive.protocol.rules import RuleMessage, RulePlan
from monitor.transport import BrokerAddress

__all__ = ["ChainNode", "Controller", "ControllerConfig", "Decision", "scaled_profiles"]

log = logging.getLogger(__name__)


class Controller:
    """Turns telemetry into a source rule and a default plan (see the module docstring).

    Args:
        config: Controller configuration.
        broker: MQTT broker.
        policy: Anything with ``predict(obs, action_masks=...)``.
        candidates: The action set (a trained policy's sidecar fixes it; else derived here).
        obs_spec: The observation layout (likewise).
        policy_name: Name published with each plan.
        on_model: Called with each new (calibrated) model, e.g. to update a heuristic policy.
        ca_file: CA bundle for an ``mqtts://`` broker.
        signer: Signs plans and rules (:class:`adaptive.runtime.signing.Signer`); None: unsigned.
        metrics: Prometheus metrics (:class:`adaptive.control.metrics.ControllerMetrics`), or None.
    """

    def __init__(self, config: ControllerConfig, broker: BrokerAddress, policy: Any, *,
                 candidates: CandidatePlans | None = None, obs_spec: ObservationSpec | None = None,
                 policy_name: str = "policy", on_model: Callable[[SplitModel], None] | None = None,
                 ca_file: str | None = None, metrics: Any = None, signer: Any = None) -> None:
        self.config = config
        self.metrics = metrics
        self.policy = policy
        self.policy_name = policy_name
        self.on_model = on_model
        self.profile: ModelProfile = resolve_model(config.model_profile)
        self.devices: list[DeviceProfile] = [resolve_device(c.device) for c in config.chain]
        base = SplitModel(self.profile, self.devices)  # the profiles as shipped
        self.model = base
        self.candidates = candidates or candidate_plans(self.model, max_plans=config.max_plans,
                                                        parallel=config.parallel)
        self.obs_spec = obs_spec or _nominal_spec(self.model, self.candidates, config.history)
        if self.obs_spec.num_devices != len(self.devices) or self.obs_spec.num_plans != len(self.candidates):
            raise AdaptiveError(f"policy expects {self.obs_spec.num_devices} devices and "
                                f"{self.obs_spec.num_plans} plans; the chain has {len(self.devices)} devices")
        mode = config.source_rule
        if mode == "policy" and not isinstance(policy, MlpPolicyNet):
            raise AdaptiveError("source_rule: policy needs a trained PPO policy (--policy ppo[:PATH])")
        self.rule_kind = {"auto": "policy" if isinstance(policy, MlpPolicyNet) else "table"}.get(mode, mode)
        M = len(self.devices) - 1
        self._bw_history = deque([np.full(M, config.default_bandwidth_mbps)] * self.obs_spec.history,
                                 maxlen=self.obs_spec.history)
        self.session = ControlSession(config, broker, {c.node: (base, i) for i, c in enumerate(config.chain)},
                                      [config.chain[0].node], tick=self._tick, rebuild=self.rebuild_model,
                                      on_ack=self._on_ack, ca_file=ca_file,
                                      signer=signer)
        self.collector, self.channel = self.session.collector, self.session.channel
        self.current: int | None = None
        self.reissue: int | None = None  # a plan not applied, to publish again at the next step
        self._table: DecisionTable | None = None  # the table of the rule in force
        self._basis: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # what the actor rule assumed
        self.last_switch = 0.0
        self.decisions: deque[Decision] = deque(maxlen=1000)  # newest last; bounded: a daemon runs for months
        self.observed: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stepping = threading.RLock()

    # ------------------------------------------------------------------ lifecycle

    def start(self, wait_s: float = 10.0) -> Controller:
        """Connect, learn the last plan version from the retained topics, start deciding."""
        self.session.start(wait_s)
        return self

    def close(self) -> None:
        """Stop deciding and disconnect (the retained plan and rule stay in force)."""
        self.session.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self.session.closed

    def connected(self) -> bool:
        """Both broker sessions (telemetry view and control) are up."""
        return self.session.connected()

    @property
    def version(self) -> int:
        """The newest plan or rule version published in this controller's epoch (0: none yet)."""
        return self.channel.version

    @property
    def rules(self) -> deque[RuleMessage]:
        """The source's rules published, newest last."""
        return self.channel.rules

    @property
    def scales(self) -> dict[str, float]:
        """Each node's calibrated compute scale (measured / profiled stage time)."""
        return self.session.calibration.snapshot()

    @property
    def scale_history(self) -> deque[tuple[float, dict[str, float]]]:
        """``(Unix time, scales)`` after each calibration update."""
        return self.session.calibration.history

    def fixed_plan(self, splits: tuple[int, ...], codecs: tuple[str, ...] | None, policy: str) -> PlanMessage:
        """The next version of the plan topic for a plan chosen outside the controller (not published).

        Lets a caller that stopped this controller pin a fixed plan whose version still follows
        every plan the controller issued, so nodes accept it.
        """
        devices = tuple(c.node for c in self.config.chain)
        return PlanMessage(self.channel.next_version(), self.profile.model, devices, splits,
                           round(time.time(), 3), policy, None, codecs, self.model.num_blocks,
                           epoch=self.channel.epoch)

    def wait_rules(self, timeout_s: float = 5.0) -> list[str]:
        """Wait until the source applied its newest rule; the sources that did not (see the channel)."""
        return self.channel.wait_rules(timeout_s)

    # ------------------------------------------------------------------ acks, stats, calibration

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

    def request_rate(self, now: float | None = None, source: str | None = None) -> float:
        """A source's recent request rate, requests/s (0 after 3 s without stats); default: chain[0]."""
        return self.session.rates.rate(source or self.config.chain[0].node, now)

    def adopt_scales(self, scales: Mapping[str, float]) -> None:
        """Start from compute scales measured earlier (e.g. by a previous controller), per node."""
        self.session.adopt_scales(scales)

    def rebuild_model(self) -> None:
        """Rebuild the model with every node's compute scaled by its fitted factor."""
        scales = self.session.calibration.built()
        names = [c.node for c in self.config.chain]
        profiles = scaled_profiles(self.profile, self.devices, [scales[n] for n in names], names)
        self.model = SplitModel(*profiles)
        if self.on_model is not None:
            self.on_model(self.model)

    # ------------------------------------------------------------------ observation

    def observe(self, now: float | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """``(observation, action mask, dead nodes)`` from the newest telemetry."""
        return self._observe(now)[:3]

    def _links(self, views: dict[str, Any], now: float) -> tuple[np.ndarray, list[float | None]]:
        """Each link's newest estimate (the previous one where there is none) and its age, s."""
        chain = self.config.chain
        bw = self._bw_history[-1].copy()
        ages: list[float | None] = [None] * (len(chain) - 1)
        for m in range(1, len(chain)):
            value, ages[m - 1] = self.collector.uplink(views.get(chain[m - 1].node), chain[m].node, now)
            if value:
                bw[m - 1] = value
        return bw, ages

    def _observe(self, now: float | None = None) -> tuple[np.ndarray, np.ndarray, list[str], ConditionBatch]:
        """:meth:`observe`, plus the conditions it predicted under."""
        now = time.time() if now is None else now
        cfg = self.config
        views = self.collector.nodes()
        D = len(cfg.chain)
        cpu, mem, dead = np.zeros(D), np.array([d.memory_mb for d in self.devices]), []
        for i, c in enumerate(cfg.chain):
            v = views.get(c.node)
            if not self.session.alive(v, now):
                dead.append(c.node)
                continue
            cpu[i] = v.telemetry.cpu_percent / 100
            mem[i] = min(v.telemetry.available_mb, self.devices[i].memory_mb)
        bw, ages = self._links(views, now)
        self._bw_history.append(bw)
        hist = np.stack(list(self._bw_history))[None]  # (1, H, M)
        cond = ConditionBatch(hist[:, -1], np.zeros((1, D - 1)), cpu[None], np.array([float(cfg.clients)]),
                              mem[None])
        pred = self.model.evaluate(self.candidates.plans, cond)
        total = np.array([d.memory_mb for d in self.devices])
        static = self.obs_spec.static_part(cpu[None], (mem / total)[None], hist, np.array([cfg.clients]),
                                           pred.latency_ms, pred.feasible)[0]
        dwell = int((now - self.last_switch) / cfg.interval_s) if self.current is not None else 0
        obs = self.obs_spec.encode(static, self.current or 0, dwell)
        alive = self.candidates.avoiding(self._dead_positions(dead), self.model.num_blocks)
        mask = pred.feasible[0] & alive
        if not mask.any():
            mask = alive if alive.any() else np.ones_like(mask)
        with self._lock:
            self.observed = {"cpu": cpu.tolist(), "available_mb": mem.tolist(), "bandwidth_mbps": bw.tolist(),
                             "dead": dead, "predicted_ms": pred.latency_ms[0].tolist()}
        if self.metrics is not None:
            names = [c.node for c in cfg.chain]
            links = {f"{names[m]}->{names[m + 1]}": (float(bw[m]), ages[m]) for m in range(D - 1)}
            self.metrics.observed(links, {n: n not in dead for n in names}, self.scales, self.connected())
        return obs, mask, dead, cond

    def _dead_positions(self, dead: list[str]) -> list[int]:
        return [i for i, c in enumerate(self.config.chain) if c.node in dead]

    # ------------------------------------------------------------------ decisions

    def step(self, now: float | None = None) -> Decision | None:
        """Decide once: the source's rule if it changed, then the default plan if it changes.

        Returns the default plan published, if any. Nothing is decided while the broker is away:
        the telemetry is frozen and nobody would hear.
        """
        with self._stepping:  # the loop's tick and a caller's step() would interleave their versions
            return self._step(time.time() if now is None else now)

    def _step(self, now: float) -> Decision | None:
        if not self.connected():
            return None
        obs, mask, dead, cond = self._observe(now)
        if self.rule_kind == "table":
            self.publish_table_rule(now, mask, cond)
        elif self.rule_kind == "policy":
            self.publish_actor_rule(now, obs, mask, cond)
        again, self.reissue = self.reissue, None
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
        version = self.channel.next_version()
        with self._lock:
            predicted = float(self.observed.get("predicted_ms", [0.0] * (action + 1))[action])
        msg = PlanMessage(version=version, model=self.profile.model,
                          devices=tuple(c.node for c in self.config.chain), splits=plan.splits,
                          issued_at=round(now, 3), policy=self.policy_name,
                          predicted_ms=round(predicted, 3) if np.isfinite(predicted) else None,
                          codecs=plan.codecs, num_blocks=self.model.num_blocks,
                          section=plan.section.wire if plan.section else None)
        expected = frozenset(c.node for c in self.config.chain if c.node not in dead)
        decision = Decision(version, action, now, predicted, expected=expected)
        with self._lock:
            self.decisions.append(decision)
        self.channel.publish_plan(msg)
        self.current = action
        if not keep_switch_time:
            self.last_switch = now
        if self.metrics is not None:
            self.metrics.switched(version, predicted)
        log.info("plan %d: %s (predicted %.1f ms) by %s", version, plan, predicted, self.policy_name)
        return decision

    def _rule(self, now: float, policy: str, edges: tuple[float, ...], rows: tuple[RulePlan, ...],
              kind: str = "table", actor: Any = None) -> RuleMessage:
        """The source's next rule (its version taken) over the chain."""
        devices = tuple(c.node for c in self.config.chain)
        return RuleMessage(self.channel.next_version(), devices[0], self.profile.model, devices,
                           self.model.num_blocks, round(now, 3), policy, edges, rows, kind=kind, actor=actor)

    def publish_table_rule(self, now: float, mask: np.ndarray, cond: ConditionBatch) -> RuleMessage | None:
        """Publish the source's decision table if the one in force no longer holds; returns it if so."""
        table = decision_table(self.model, self.candidates, cond, mask, self.request_rate(now),
                               self.config.rate_headroom, incumbent=self._table)
        if table is self._table:
            return None
        rows = []
        for a, ms, rps in zip(table.actions, table.predicted_ms, table.throughput_rps, strict=True):
            plan = self.candidates.plan(a)
            rows.append(RulePlan(plan.splits, plan.codecs, round(ms, 3) if np.isfinite(ms) else None,
                                 round(rps, 3) if np.isfinite(rps) else None,
                                 section=plan.section.wire if plan.section else None))
        rule = self._rule(now, "table", tuple(round(e, 4) for e in table.edges_mbps), tuple(rows))
        self._table = table
        rule = self.channel.publish_rule(rule)
        log.info("rule %d for %s: %d bins, edges %s Mbit/s", rule.version, rule.source, len(rows),
                 [round(e, 2) for e in table.edges_mbps])
        return rule

    def publish_actor_rule(self, now: float, obs: np.ndarray, mask: np.ndarray, cond: ConditionBatch,
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
        if self._basis is not None and _basis_holds(self._basis, (ok, latency, slow), margin, slack):
            return None
        rows = tuple(RulePlan(p.splits, p.codecs, section=p.section.wire if p.section else None)
                     for p in (self.candidates.plan(a) for a in range(P)))
        step_s = getattr(self.policy, "step_s", None) or self.config.interval_s
        actor = actor_rule(latency, ok, spec, obs, step_s, self.policy.to_json())
        rule = self._rule(now, self.policy_name, (), rows, kind="policy", actor=actor)
        self._basis = (ok, latency, slow)
        rule = self.channel.publish_rule(rule)
        log.info("rule %d for %s: the %s actor, %d plans allowed somewhere", rule.version, rule.source,
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
        self.reissue = d.action  # at the next step(), if the plan is still allowed

    def _tick(self) -> None:
        self.check_acks()
        self.step()


def _nominal_spec(model: SplitModel, candidates: CandidatePlans, history: int) -> ObservationSpec:
    """The observation layout when no trained policy fixes it, referenced to the first plan."""
    devices = model.devices
    D = len(devices)
    nominal = model.evaluate(candidates.plans.take(0), ConditionBatch(
        np.ones((1, D - 1)), np.zeros((1, D - 1)), np.zeros((1, D)), np.ones(1),
        np.array([[d.memory_mb for d in devices]])))
    return ObservationSpec(D, len(candidates), float(nominal.latency_ms[0, 0]), history=history)


Basis = tuple[np.ndarray, np.ndarray, np.ndarray]  # an actor rule's (allowed, latency, slow observation)


def _basis_holds(was: Basis, now: Basis, margin: float, slack: float) -> bool:
    """An actor rule's ``(allowed, latency, slow observation)`` still describe the cluster.

    The same plans allowed everywhere on the grid, every finite prediction within ``margin``
    (relative) and every slow observation entry within ``slack``.
    """
    (was_ok, was_latency, was_slow), (ok, latency, slow) = was, now
    finite = np.isfinite(latency)
    return bool(np.array_equal(was_ok, ok) and np.array_equal(np.isfinite(was_latency), finite)
                and np.all(np.abs(latency[finite] - was_latency[finite]) <= margin * was_latency[finite])
                and np.all(np.abs(slow - was_slow) <= slack))
