"""The fast level of control: a source node picks each request's plan from its rule and its uplink.

A request enters its source node without a plan; :class:`SourceDecider` stamps one on it at arrival,
with no network round trip: the plan of the controller's decision rule (:mod:`monitor.rules`) for
the freshest estimate of the source's uplink — the wire time of the node's own recent transfers, or
the monitor's probe when it sends nothing (a device-only plan moves no activations). Without a
rule it uses the controller's default plan. A plan that would give work to a node the source knows
to be offline is passed over for the nearest bin's plan that avoids it. Every decision is kept
(time, estimate, its age, plan) so that benchmarks can say how old the information was.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import NamedTuple

from adaptive.runtime.wire import Frame
from monitor.presence import Presence
from monitor.rules import RuleMessage
from monitor.schema import PlanMessage

__all__ = ["SourceDecider", "SourceDecision", "check_rule"]


class SourceDecision(NamedTuple):
    """One request's plan choice at the source.

    Attributes:
        at: Unix time, s.
        estimate_mbps: Uplink estimate used (None: none yet).
        age_s: Age of that estimate, s (None: none yet).
        splits: The plan chosen.
        version: Version of the rule (or default plan) it came from.
    """

    at: float
    estimate_mbps: float | None
    age_s: float | None
    splits: tuple[int, ...]
    version: int


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
        self.default: PlanMessage | None = None
        self.decisions: deque[SourceDecision] = deque(maxlen=history)
        self._lock = threading.Lock()

    def set_rule(self, rule: RuleMessage) -> None:
        """Adopt a validated rule (newer versions only)."""
        with self._lock:
            if self.rule is None or rule.version >= self.rule.version:
                self.rule = rule

    def set_default(self, plan: PlanMessage) -> None:
        """Adopt the controller's default plan (used while no rule is known)."""
        with self._lock:
            if self.default is None or plan.version >= self.default.version:
                self.default = plan

    def decide(self, frame: Frame) -> tuple[Frame | None, str]:
        """``(frame with its plan, "")``, or ``(None, why not)`` when there is nothing to go by."""
        with self._lock:
            rule, default = self.rule, self.default
        now = time.time()
        estimate, age = None, None
        if rule is not None and len(rule.devices) > 1:
            if self.uplink is not None:
                estimate, measured = self.uplink(rule.devices[1])
                age = now - measured if measured is not None else None
            plan = self._from_rule(rule, estimate, default) if estimate else default or rule.plan(0)
        elif rule is not None:
            plan = rule.plan(0)
        elif default is not None:
            plan = default
        else:
            return None, f"source {self.node} has no decision rule and no default plan yet"
        decision = SourceDecision(now, estimate, age, plan.splits, plan.version)
        self.decisions.append(decision)
        if self.on_decision is not None:
            self.on_decision(decision)
        return replace(frame, version=plan.version, model=plan.model, devices=plan.devices,
                       splits=plan.splits, codecs=plan.codecs), ""

    def _from_rule(self, rule: RuleMessage, estimate: float, default: PlanMessage | None) -> PlanMessage:
        k = rule.index(estimate)
        order = sorted(range(len(rule.plans)), key=lambda j: (abs(j - k), j > k))  # k, then nearest
        for j in order:
            plan = rule.plan(j)
            if all(n == self.node or self.presence.online(n) for n in plan.working_nodes()):
                return plan
        return rule.plan(k)

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

