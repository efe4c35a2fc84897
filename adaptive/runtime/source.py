"""The fast level of control: a source node picks each request's plan from its rule and its uplink.

The slow level, the controller (:mod:`adaptive.control`), conditions a rule on what changes slowly
(load, clients, calibration, dead nodes, request rates) and publishes it per source; this module
applies it per request, where the input is, within a fraction of a second of a bandwidth change.

A request enters its source node without a plan; :class:`SourceDecider` stamps one on it at arrival,
with no network round trip, from the controller's decision rule (:mod:`adaptive.protocol.rules`) and the
freshest estimate of the source's uplink — the wire time of the node's own recent transfers, or the
monitor's probe when it sends nothing (a device-only plan moves no activations):

* a ``table`` rule gives the plan of the estimate's bin; a plan that would give work to a node the
  source knows to be offline is passed over for the nearest bin's plan that avoids it;
* a ``policy`` rule is evaluated (:class:`ActorRunner`): the observation the controller prefilled
  is completed with the source's own uplink history, each candidate's predicted latency at the
  estimate, the plan in force and its dwell, and the actor's masked argmax is the plan.

Without a rule it uses the controller's default plan. Every decision is kept (time, estimate, its
age, plan) so that benchmarks can say how old the information was.

**Admission.** A table rule with a ``deadline_ms`` makes the source drop a request the model
predicts later than that, as the environment does (seed 004's frame drop): the bin's predicted
latency, its transfer rescaled to the estimate (:meth:`adaptive.protocol.rules.RulePlan.latency_at`), plus
the work this source admitted before it and has not finished, on its own compute and on its uplink.
That backlog is kept as the model keeps it, not measured (a kernel's send buffer is out of sight):
each admitted request adds its bin's ``edge_ms`` to the compute, which drains in real time, and
its ``uplink_bits`` to the uplink, which drains at the uplink's estimate of the moment, so that a
drop of the link makes the queued bits wait longer. A dropped request is
answered at once with an error frame marked ``dropped``; it never enters a queue.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import NamedTuple

import numpy as np

from adaptive.errors import AdaptiveError
from adaptive.model.mlp import MlpPolicyNet
from adaptive.model.observation import ObservationSpec
from adaptive.model.plans import Section
from adaptive.protocol.messages import PlanMessage
from adaptive.protocol.rules import RuleMessage, RulePlan
from adaptive.runtime.wire import Frame
from monitor.presence import Presence

__all__ = ["ActorRunner", "Decided", "SourceDecider", "SourceDecision", "check_rule"]


class SourceDecision(NamedTuple):
    """One request's plan choice at the source.

    Attributes:
        at: Unix time, s.
        estimate_mbps: Uplink estimate used (None: none yet).
        age_s: Age of that estimate, s (None: none yet).
        splits: The plan chosen.
        version: Version of the rule (or default plan) it came from.
        dropped: The request was dropped at admission (predicted past the rule's deadline).
    """

    at: float
    estimate_mbps: float | None
    age_s: float | None
    splits: tuple[int, ...]
    version: int
    dropped: bool = False


class Decided(NamedTuple):
    """What :meth:`SourceDecider.decide` did with a request.

    Attributes:
        frame: The request with its plan, or None when it does not go on.
        why: Why not ("" when it goes on).
        dropped: It was dropped at admission (final); otherwise a None frame may be retried.
    """

    frame: Frame | None
    why: str
    dropped: bool = False


class SourceDecider:
    """Plans for requests entering at this node.

    Args:
        node: This node's id.
        presence: Peers' statuses (a plan giving work to an offline node is passed over).
        uplink: ``uplink(peer) -> (Mbit/s, Unix time measured)``, the freshest estimate of the link
            to ``peer`` (a monitor agent's :meth:`~monitor.agent.MonitorAgent.uplink`), or None.
        history: Decisions kept.
        on_decision: Called with each decision (e.g. Prometheus metrics), on the receive thread.
    """

    def __init__(self, node: str, presence: Presence,
                 uplink: Callable[[str], tuple[float | None, float | None]] | None = None,
                 history: int = 10_000, on_decision: Callable[[SourceDecision], None] | None = None) -> None:
        self.node = node
        self.on_decision = on_decision
        self.presence = presence
        self.uplink = uplink
        self.rule: RuleMessage | None = None
        self.runner: ActorRunner | None = None
        self.default: PlanMessage | None = None
        self.decisions: deque[SourceDecision] = deque(maxlen=history)
        self.dropped = 0
        self._edge_free = 0.0  # monotonic s: when the work admitted so far leaves the source's compute
        self._uplink_bits = 0.0  # admitted and not yet sent at the estimated rate (for admission)
        self._uplink_at = 0.0  # monotonic s of the last drain
        self._lock = threading.Lock()

    def set_rule(self, rule: RuleMessage, runner: ActorRunner | None = None) -> None:
        """Adopt a validated rule (newer ones only); a ``policy`` rule comes with its runner."""
        with self._lock:
            if self.rule is None or rule.rank >= self.rule.rank:
                if runner is not None and self.runner is not None:
                    runner.carry_over(self.runner)
                self.rule, self.runner = rule, runner

    def set_default(self, plan: PlanMessage) -> None:
        """Adopt the controller's default plan (used while no rule is known)."""
        with self._lock:
            if self.default is None or plan.rank >= self.default.rank:
                self.default = plan

    def decide(self, frame: Frame) -> Decided:
        """The request with its plan; or no frame and why: nothing to go by yet, or dropped."""
        with self._lock:
            rule, runner, default = self.rule, self.runner, self.default
        now = time.time()
        estimate, age = None, None
        row: RulePlan | None = None
        if rule is not None and len(rule.devices) > 1:
            if self.uplink is not None:
                estimate, measured = self.uplink(rule.devices[1])
                age = now - measured if measured is not None else None
            if not estimate:
                plan = default or rule.plan(0)
            elif runner is not None:
                plan = rule.plan(runner.decide(now, estimate, self._alive))
            else:
                j = self._from_rule(rule, estimate)
                plan, row = rule.plan(j), rule.plans[j]
        elif rule is not None:
            plan = rule.plan(0)
        elif default is not None:
            plan = default
        else:
            return Decided(None, f"source {self.node} has no decision rule and no default plan yet")
        late = self._admit(rule, row, estimate) if row is not None and rule is not None else ""
        decision = SourceDecision(now, estimate, age, plan.splits, plan.version, bool(late))
        self.decisions.append(decision)
        if self.on_decision is not None:
            self.on_decision(decision)
        if late:
            self.dropped += 1
            return Decided(None, late, dropped=True)
        section = Section(*plan.section) if plan.section else None
        return Decided(replace(frame, version=plan.version, model=plan.model, devices=plan.devices,
                               splits=plan.splits, codecs=plan.codecs, section=section), "")

    def _admit(self, rule: RuleMessage, row: RulePlan, estimate: float | None) -> str:
        """"" to admit a request on ``row`` (and count its work ahead of later ones), else why not."""
        service = row.latency_at(estimate) if estimate else row.predicted_ms
        if rule.deadline_ms is None or service is None:
            return ""
        now = time.monotonic()
        if estimate:  # the uplink drained at the rate it has now since the last request
            self._uplink_bits = max(self._uplink_bits - (now - self._uplink_at) * estimate * 1e6, 0.0)
            self._uplink_at = now
        sends = bool(row.uplink_bits) and bool(estimate)
        wait_s = max(self._edge_free - now, 0.0)
        if sends:
            assert estimate is not None
            wait_s += self._uplink_bits / (estimate * 1e6)
        predicted = service + 1e3 * wait_s
        if predicted > rule.deadline_ms:
            return (f"dropped at source {self.node}: predicted {predicted:.0f} ms "
                    f"(of which {1e3 * wait_s:.0f} ms queued ahead) > deadline {rule.deadline_ms:g} ms")
        self._edge_free = max(self._edge_free, now) + (row.edge_ms or 0.0) / 1e3
        if sends:
            self._uplink_bits += row.uplink_bits or 0.0
        return ""

    def _alive(self, node: str) -> bool:
        return node == self.node or self.presence.online(node)

    def _from_rule(self, rule: RuleMessage, estimate: float) -> int:
        k = rule.index(estimate)
        order = sorted(range(len(rule.plans)), key=lambda j: (abs(j - k), j > k))  # k, then nearest
        for j in order:
            if all(n == self.node or self.presence.online(n) for n in rule.plan(j).working_nodes()):
                return j
        return k

    def ages(self) -> list[float]:
        """Ages of the estimates behind every decision so far, s."""
        return [d.age_s for d in list(self.decisions) if d.age_s is not None]


def check_rule(rule: RuleMessage, node: str, model: str, num_blocks: int) -> str:
    """Why this node cannot apply ``rule`` ("" if it can)."""
    if rule.source != node:
        return f"rule is for source '{rule.source}', this node is '{node}'"
    if rule.model != model:
        return f"rule is for model '{rule.model}' but this node holds '{model}'"
    if rule.num_blocks != num_blocks:
        return f"rule says the model has {rule.num_blocks} blocks but this node's has {num_blocks}"
    return ""


class ActorRunner:
    """A ``policy`` rule made ready to evaluate per request (construction validates the network).

    Per request it fills the prefilled observation's fast entries the way the environment does
    (:class:`adaptive.model.observation.ObservationSpec`):

    * the uplink's history: the newest estimate at or before each of the last ``history`` steps of
      ``step_s``, oldest first (the oldest estimate known stands in before the first);
    * each candidate's predicted latency at the estimate, interpolated in log–log between the
      controller's grid points (1.0, "unfit", where either neighbour does not fit);
    * the plan this source chose last, one-hot, and how many steps ago it changed.

    The mask is the rule's ``allowed`` row at the grid point nearest the estimate (in log scale),
    less plans that give work to a node the source knows to be offline.

    Raises:
        AdaptiveError: The network is malformed or does not match the observation and plans.
    """

    def __init__(self, rule: RuleMessage) -> None:
        actor = rule.actor
        if actor is None:
            raise AdaptiveError("not a policy rule")
        self.net = MlpPolicyNet.from_json(actor.network, "rule: actor.network")
        self.spec = ObservationSpec(**actor.observation)
        P = len(rule.plans)
        if self.net.num_inputs != self.spec.size or self.net.num_actions != P:
            raise AdaptiveError(f"rule: actor.network takes {self.net.num_inputs} inputs and gives "
                                f"{self.net.num_actions} actions; the rule has {self.spec.size} and {P}")
        D, H = self.spec.num_devices, self.spec.history
        if len(rule.devices) != D:
            raise AdaptiveError(f"rule: actor.observation has {D} devices, the rule {len(rule.devices)}")
        self.step_s = actor.step_s
        self.template = np.asarray(actor.template, np.float32)
        self.hist_at = 2 * D  # the uplink is link 0: its history comes first
        self.pred_at = 2 * D + (D - 1) * H + 1
        self.plan_at = self.pred_at + P
        # per request everything is scalar math or one short numpy op: the Pi's CPU is slow
        self.log_grid = [math.log(g) for g in actor.grid_mbps]
        pred = np.array([[np.nan if v is None else max(v, 1e-6) for v in row] for row in actor.predicted_ms])
        unfit = np.isnan(pred)
        log_pred = np.log(np.where(unfit, 1.0, pred)) - math.log(self.spec.ref_latency_ms)
        self.log_pred, self.log_step = log_pred[:-1], np.diff(log_pred, axis=0)  # per grid interval
        self.unfit = unfit[:-1] | unfit[1:]  # a prediction between an unfit point and another is unfit
        self.allowed = np.array([[c == "1" for c in row] for row in actor.allowed])
        self.bw_min, self.bw_max = self.spec.bw_min_mbps, self.spec.bw_max_mbps
        self.lo, self.span = math.log10(self.bw_min), math.log10(self.bw_max) - math.log10(self.bw_min)
        working = [set(rule.plan(p).working_nodes()) - {rule.source} for p in range(P)]
        self.nodes = sorted(set().union(*working))
        self.uses = np.array([[n in w for n in self.nodes] for w in working]).reshape(P, len(self.nodes))
        self.current = 0
        self.switched_at = 0.0
        self.history: deque[tuple[float, float]] = deque(maxlen=64)  # (time, estimate)

    def carry_over(self, previous: ActorRunner) -> None:
        """Keep the plan in force, its dwell and the uplink history across a new rule."""
        if previous.uses.shape[0] == self.uses.shape[0]:  # the same action set
            self.current, self.switched_at = previous.current, previous.switched_at
        self.history = previous.history

    def observation(self, now: float, estimate: float) -> tuple[np.ndarray, np.ndarray]:
        """``(observation, mask from the grid)`` for a decision at ``now`` on ``estimate``."""
        if not self.history or self.history[-1][1] != estimate:
            self.history.append((now, estimate))
        H, history = self.spec.history, self.history
        obs = self.template.copy()
        k = len(history) - 1
        for h in range(H - 1, -1, -1):  # newest step first, walking back through the history
            at = now - (H - 1 - h) * self.step_s
            while k > 0 and history[k][0] > at:
                k -= 1
            value = min(max(history[k][1], self.bw_min), self.bw_max)
            obs[self.hist_at + h] = (math.log10(value) - self.lo) / self.span
        x = math.log(estimate)
        grid = self.log_grid
        g = min(max(bisect.bisect_right(grid, x) - 1, 0), len(grid) - 2)
        w = min(max((x - grid[g]) / (grid[g + 1] - grid[g]), 0.0), 1.0)
        feature = np.tanh(self.log_pred[g] + w * self.log_step[g])
        feature[self.unfit[g]] = 1.0
        obs[self.pred_at : self.plan_at] = feature
        obs[self.plan_at + self.current] = 1.0
        obs[-1] = min((now - self.switched_at) / self.step_s / self.spec.dwell_norm, 1.0)
        return obs, self.allowed[g + (w > 0.5)]

    def decide(self, now: float, estimate: float, alive: Callable[[str], bool]) -> int:
        """The actor's plan index for a request at ``now`` with uplink ``estimate`` (> 0)."""
        obs, mask = self.observation(now, estimate)
        dead = [i for i, n in enumerate(self.nodes) if not alive(n)]
        if dead:
            living = ~self.uses[:, dead].any(axis=1)  # device-only always lives
            mask = mask & living
            if not mask.any():  # everything the rule allows needs a dead node: anything alive
                mask = living
        action = self.net.act(obs, mask)
        if action != self.current:
            self.current, self.switched_at = action, now
        return action

