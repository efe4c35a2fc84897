"""A node's control plane (MQTT): presence, the controller's plans and rules, acks, status, emulation.

The node announces itself on its retained status topic (with its data endpoint; the Last Will
says ``offline``) and learns its peers' endpoints from theirs. It validates the decision rule the
controller publishes for it (:mod:`adaptive.runtime.source` applies it per request) and every
default plan, and answers each on its ack topic (the audit trail): a plan or rule it cannot run is
refused there, and the last good one stays.

**Authority.** Given the controller's public key, the node takes plans and rules only signed with it
(:mod:`adaptive.runtime.signing`); without one (the lab mode) it says so in its log. Plans and rules
supersede each other in ``(epoch, version)`` order (:class:`VersionGate`): nothing older, nothing
implausibly far ahead. The node reads every source's rule, not only its own, to know which nodes
the controller named: work goes only through those (:meth:`NodeControlPlane.route_view`), never to a
node that merely announced itself. Emulation control messages
(:mod:`adaptive.runtime.emulation`) drive an emulated uplink. A bad message is logged, counted and
dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from adaptive.errors import AdaptiveError
from adaptive.protocol.messages import (
    Ack,
    Message,
    PlanMessage,
    SchemaError,
    Status,
    ack_topic,
    parse_topic,
    plan_topic,
    rank_of,
    status_topic,
)
from adaptive.protocol.rules import RuleMessage
from adaptive.runtime.emulation import UplinkEmulation
from adaptive.runtime.route import check_plan
from adaptive.runtime.signing import Verifier
from adaptive.runtime.source import ActorRunner, SourceDecider, check_rule
from monitor.presence import Presence
from monitor.transport import BrokerAddress, MqttTransport

__all__ = ["MAX_EPOCH_AHEAD_S", "MAX_VERSION_STEP", "NodeControlPlane", "VersionGate"]

log = logging.getLogger(__name__)

MAX_EPOCH_AHEAD_S = 3600.0  # a controller epoch further ahead of this node's clock is refused
MAX_VERSION_STEP = 1_000_000  # a counter jump past the one in force, within one epoch, that is refused


class NodeControlPlane:
    """One node's MQTT side (see the module docstring).

    Args:
        config: The node's configuration (:class:`adaptive.runtime.node.NodeConfig`).
        broker: MQTT broker.
        presence: Peers' statuses and data endpoints (shared with the data plane).
        source: The node's source decider (gets the rules and the default plan).
        uplink: The node's uplink emulation (gets the emulation control messages).
        ca_file: CA bundle for an ``mqtts://`` broker.
        metrics: Prometheus metrics (:class:`adaptive.control.metrics.NodeMetrics`), or None.
        verifier: What is taken as the controller's word (:class:`adaptive.runtime.signing.Verifier`);
            default: the unsigned lab mode.
    """

    def __init__(self, config: Any, broker: BrokerAddress, presence: Presence, source: SourceDecider,
                 uplink: UplinkEmulation, *, ca_file: str | None = None, metrics: Any = None,
                 verifier: Verifier | None = None) -> None:
        self.config = config
        self.broker = broker
        self.presence = presence
        self.source = source
        self.uplink = uplink
        self.ca_file = ca_file
        self.metrics = metrics
        self.verifier = verifier or Verifier()
        self.plan: PlanMessage | None = None  # newest default plan accepted (audit; requests carry theirs)
        self.rejected = 0  # messages refused
        self.endpoint = ""
        self.num_blocks = 0
        # why a plan's parallel section does not fit this node's model ("" if it does); set by the node
        self.check_section: Callable[[tuple[int, ...], tuple[int, float, int]], str] = lambda splits, sec: ""
        self.transport: MqttTransport | None = None
        self._lock = threading.Lock()
        self._gates: dict[str, VersionGate] = {}  # per plan or rule topic: what is in force
        self._named: dict[str, tuple[int, frozenset[str]]] = {}  # per topic: (epoch, nodes it names)

    def bind(self, endpoint: str, num_blocks: int, transport: MqttTransport | None = None) -> MqttTransport:
        """Know the node's data endpoint and model; build (or take) the transport, not connected yet."""
        cfg = self.config
        self.endpoint, self.num_blocks = endpoint, num_blocks
        base = f"adaptive/{cfg.cluster}"
        self.transport = transport or MqttTransport(
            self.broker, client_id=f"node-{cfg.cluster}-{cfg.node}", will=self.status("offline"),
            on_connect_messages=lambda: [self.status("online")],
            subscriptions=[(plan_topic(cfg.cluster), 1), (f"{base}/node/+/status", 1),
                           (f"{base}/emulation", 1), (f"{base}/node/+/rule", 1)],
            on_message=self.handle, ca_file=self.ca_file, on_disconnect=self.presence.disconnected)
        return self.transport

    def start(self, endpoint: str, num_blocks: int, wait_s: float | None = 10.0) -> None:
        """Join the control plane: announce ``online`` with ``endpoint``, subscribe, listen."""
        self.bind(endpoint, num_blocks).start(wait_s)
        if not self.verifier.required:
            log.warning("node %s: control plane unsigned (lab mode): whoever can publish on the broker's "
                        "plan and rule topics steers this node; pass --controller-key to accept only "
                        "the controller's signed plans and rules", self.config.node)

    def close(self) -> None:
        """Publish ``offline`` and disconnect."""
        if self.transport is not None:
            self.transport.close(final=[self.status("offline")])

    def publish(self, message: Message) -> None:
        """Publish on the node's session (buffered while the broker is away)."""
        if self.transport is not None:
            self.transport.publish(message)

    def status(self, state: str) -> Message:
        """The node's retained status message."""
        cfg = self.config
        msg = Status(node=cfg.node, state=state, ts=time.time(), device=cfg.device,
                     accelerator="cpu", memory_mb=0.0, data_endpoint=self.endpoint)
        return Message(status_topic(cfg.cluster, cfg.node), msg.encode(), qos=1, retain=True)

    # ------------------------------------------------------------------ control plane

    def handle(self, topic: str, payload: bytes) -> None:
        """One message from the broker; a bad one is logged, counted and dropped."""
        if topic.endswith("/emulation"):
            self._on_emulation(payload)
            return
        try:
            _, kind, node = parse_topic(topic)
            if kind == "status" and node is not None:
                self.presence.receive(node, payload)
            elif kind in ("plan", "rule") and payload:
                self._from_controller(topic, kind, node, payload)
        except SchemaError as exc:
            self.rejected += 1
            log.warning("dropped message on %s: %s", topic, exc)

    def _from_controller(self, topic: str, kind: str, node: str | None, payload: bytes) -> None:
        """A plan, this node's rule, or another source's rule (which only says who is in the cluster)."""
        mine = kind == "plan" or node == self.config.node
        try:
            body = self.verifier.open(topic, payload)
            msg: PlanMessage | RuleMessage = (PlanMessage.decode(body) if kind == "plan"
                                              else RuleMessage.decode(body))
        except SchemaError as exc:  # refused on the ack when it says which version it was
            rank = rank_of(payload)
            if mine and rank is not None:
                self._ack(kind, rank, str(exc))
            raise
        with self._lock:
            gate = self._gates.setdefault(topic, VersionGate(kind))
            error = gate.check(msg.rank)
        if not mine:
            if error:
                raise SchemaError(f"{kind} refused: {error}")
            self._accepted(topic, gate, msg)
            return
        if not error:
            error = self._apply_plan(msg) if isinstance(msg, PlanMessage) else self._apply_rule(msg)
        if not error:
            self._accepted(topic, gate, msg)
        else:
            log.warning("refused %s (epoch %d, version %d): %s", kind, msg.epoch, msg.version, error)
        self._ack(kind, msg.rank, error)

    def _accepted(self, topic: str, gate: VersionGate, msg: PlanMessage | RuleMessage) -> None:
        with self._lock:
            gate.accept(msg.rank)
            self._named[topic] = (msg.epoch, frozenset(msg.devices))

    def members(self) -> frozenset[str] | None:
        """The nodes the controller named (in its newest epoch's plan and rules); None: no word yet.

        With a controller key, only signed messages name nodes, and before the first one the
        cluster is this node alone.
        """
        with self._lock:
            if not self._named:
                return frozenset() if self.verifier.required else None
            epoch = max(e for e, _ in self._named.values())
            return frozenset().union(*(d for e, d in self._named.values() if e == epoch))

    def route_view(self) -> tuple[set[str], set[str]]:
        """``(known, online)`` for :func:`~adaptive.runtime.route.check_route`.

        Known: nodes that announced themselves and that the controller named (once it has named
        any); online: those of them online. This node is always both.
        """
        me = self.config.node
        online = set(self.presence.endpoints()) | {me}
        known = self.presence.seen() | online
        members = self.members()
        if members is not None:
            known &= members | {me}
            online &= members | {me}
        return known, online

    def _on_emulation(self, payload: bytes) -> None:
        """Emulation control for one-machine clusters (see :mod:`adaptive.runtime.emulation`)."""
        if not self.uplink.handle(payload):
            self.rejected += 1
            log.warning("dropped emulation control message (expected trace_start or uplink_mbps > 0 "
                        "on a node with an emulated uplink)")

    def _apply_plan(self, plan: PlanMessage) -> str:
        """Adopt the cluster's default plan, or say why not (the last good one stays)."""
        cfg = self.config
        online = set(self.presence.endpoints()) | {cfg.node}
        error = check_plan(plan, cfg.model, self.num_blocks, self.presence.seen() | online, online)
        if not error and plan.section is not None:
            error = self.check_section(plan.splits, plan.section)
        if not error:
            with self._lock:
                self.plan = plan
            if plan.devices[0] == cfg.node:
                self.source.set_default(plan)
        return error

    def _apply_rule(self, rule: RuleMessage) -> str:
        """Adopt a decision rule for requests entering here, or say why not (the last good one stays)."""
        cfg = self.config
        error = check_rule(rule, cfg.node, cfg.model, self.num_blocks)
        for k, row in enumerate(rule.plans):
            why = self.check_section(row.splits, row.section) if not error and row.section else ""
            if why:
                error = f"plans[{k}]: {why}"
        runner = None
        if not error and rule.kind == "policy":
            try:
                runner = ActorRunner(rule)
            except AdaptiveError as exc:
                error = str(exc)
        if not error:
            self.source.set_rule(rule, runner)
        return error

    def _ack(self, kind: str, rank: tuple[int, int], error: str) -> None:
        """Answer a plan or rule on this node's ack topic (and count it)."""
        cfg = self.config
        epoch, version = rank
        if self.metrics is not None:
            self.metrics.plan(version, not error)
        ack = Ack(node=cfg.node, version=version, ok=not error, ts=time.time(), error=error, epoch=epoch,
                  kind=kind)
        self.publish(Message(ack_topic(cfg.cluster, cfg.node), ack.encode(), qos=1))


class VersionGate:
    """The newest ``(epoch, version)`` accepted on one topic, and what may follow it.

    A newer epoch (a restarted controller) or a higher version in the same epoch supersedes; the
    same one again (a redelivery, a reconnect) is taken again. Refused: anything older, an epoch
    more than :data:`MAX_EPOCH_AHEAD_S` ahead of this node's clock, or a version more than
    :data:`MAX_VERSION_STEP` past the one in force: a message that would pin the node so that the
    controller's next real ones look old.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.rank: tuple[int, int] | None = None

    def check(self, rank: tuple[int, int]) -> str:
        """Why a message of this rank may not supersede the one in force ("" if it may)."""
        epoch, version = rank
        ahead_s = epoch / 1e3 - time.time()
        if ahead_s > MAX_EPOCH_AHEAD_S:
            return (f"epoch {epoch} is {ahead_s:.0f} s ahead of this node's clock (a forged {self.kind}, "
                    "or clocks out of sync)")
        if self.rank is None:
            return ""
        if rank < self.rank:
            return f"older than the {self.kind} in force (epoch {self.rank[0]}, version {self.rank[1]})"
        if epoch == self.rank[0] and version - self.rank[1] > MAX_VERSION_STEP:
            return (f"version {version} jumps more than {MAX_VERSION_STEP} past {self.rank[1]} in force "
                    f"(a forged {self.kind}?)")
        return ""

    def accept(self, rank: tuple[int, int]) -> None:
        """``rank`` is now in force."""
        if self.rank is None or rank > self.rank:
            self.rank = rank
