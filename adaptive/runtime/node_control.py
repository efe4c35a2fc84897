"""A node's control plane (MQTT): presence, the controller's plans and rules, acks, status, emulation.

The node announces itself on its retained status topic (with its data endpoint; the Last Will
says ``offline``) and learns its peers' endpoints from theirs. It validates the decision rule the
controller publishes for it (:mod:`adaptive.runtime.source` applies it per request) and every
default plan, and answers each on its ack topic (the audit trail): a plan or rule it cannot run is
refused there, and the last good one stays. Emulation control messages
(:mod:`adaptive.runtime.emulation`) drive an emulated uplink. A bad message is logged, counted and
dropped.
"""

from __future__ import annotations

import logging
import threading
import time
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
    status_topic,
    version_of,
)
from adaptive.protocol.rules import RuleMessage, rule_topic
from adaptive.runtime.emulation import UplinkEmulation
from adaptive.runtime.route import check_plan
from adaptive.runtime.source import ActorRunner, SourceDecider, check_rule
from monitor.presence import Presence
from monitor.transport import BrokerAddress, MqttTransport

__all__ = ["NodeControlPlane"]

log = logging.getLogger(__name__)


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
    """

    def __init__(self, config: Any, broker: BrokerAddress, presence: Presence, source: SourceDecider,
                 uplink: UplinkEmulation, *, ca_file: str | None = None, metrics: Any = None) -> None:
        self.config = config
        self.broker = broker
        self.presence = presence
        self.source = source
        self.uplink = uplink
        self.ca_file = ca_file
        self.metrics = metrics
        self.plan: PlanMessage | None = None  # newest default plan accepted (audit; requests carry theirs)
        self.rejected = 0  # messages refused
        self.endpoint = ""
        self.num_blocks = 0
        self.transport: MqttTransport | None = None
        self._lock = threading.Lock()

    def bind(self, endpoint: str, num_blocks: int, transport: MqttTransport | None = None) -> MqttTransport:
        """Know the node's data endpoint and model; build (or take) the transport, not connected yet."""
        cfg = self.config
        self.endpoint, self.num_blocks = endpoint, num_blocks
        base = f"adaptive/{cfg.cluster}"
        self.transport = transport or MqttTransport(
            self.broker, client_id=f"node-{cfg.cluster}-{cfg.node}", will=self.status("offline"),
            on_connect_messages=lambda: [self.status("online")],
            subscriptions=[(plan_topic(cfg.cluster), 1), (f"{base}/node/+/status", 1),
                           (f"{base}/emulation", 1), (rule_topic(cfg.cluster, cfg.node), 1)],
            on_message=self.handle, ca_file=self.ca_file, on_disconnect=self.presence.disconnected)
        return self.transport

    def start(self, endpoint: str, num_blocks: int, wait_s: float | None = 10.0) -> None:
        """Join the control plane: announce ``online`` with ``endpoint``, subscribe, listen."""
        self.bind(endpoint, num_blocks).start(wait_s)

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
            elif kind == "plan" and payload:
                self._apply_plan(PlanMessage.decode(payload))
            elif kind == "rule" and node == self.config.node and payload:
                try:
                    rule = RuleMessage.decode(payload)
                except SchemaError as exc:  # refused on the ack when it says which version it was
                    version = version_of(payload)
                    if version is not None:
                        self._ack(version, str(exc))
                    raise
                self._apply_rule(rule)
        except SchemaError as exc:
            self.rejected += 1
            log.warning("dropped message on %s: %s", topic, exc)

    def _on_emulation(self, payload: bytes) -> None:
        """Emulation control for one-machine clusters (see :mod:`adaptive.runtime.emulation`)."""
        if not self.uplink.handle(payload):
            self.rejected += 1
            log.warning("dropped emulation control message (expected trace_start or uplink_mbps > 0 "
                        "on a node with an emulated uplink)")

    def _apply_plan(self, plan: PlanMessage) -> None:
        cfg = self.config
        online = set(self.presence.endpoints()) | {cfg.node}
        known = self.presence.seen() | online
        error = check_plan(plan, cfg.model, self.num_blocks, known, online)
        if not error:
            with self._lock:
                if self.plan is None or plan.version >= self.plan.version:
                    self.plan = plan
            if plan.devices[0] == cfg.node:
                self.source.set_default(plan)
        else:
            log.warning("rejected plan %d: %s", plan.version, error)
        self._ack(plan.version, error)

    def _apply_rule(self, rule: RuleMessage) -> None:
        """Adopt a decision rule for requests entering here, or refuse it (the last good one stays)."""
        cfg = self.config
        error = check_rule(rule, cfg.node, cfg.model, self.num_blocks)
        runner = None
        if not error and rule.kind == "policy":
            try:
                runner = ActorRunner(rule)
            except AdaptiveError as exc:
                error = str(exc)
        if not error:
            self.source.set_rule(rule, runner)
        else:
            log.warning("rejected rule %d: %s", rule.version, error)
        self._ack(rule.version, error)

    def _ack(self, version: int, error: str) -> None:
        """Answer a plan or rule on this node's ack topic (and count it)."""
        cfg = self.config
        if self.metrics is not None:
            self.metrics.plan(version, not error)
        ack = Ack(node=cfg.node, version=version, ok=not error, ts=time.time(), error=error)
        self.publish(Message(ack_topic(cfg.cluster, cfg.node), ack.encode(), qos=1))
