"""A controller's MQTT side: one version counter, plans and rules out, acks and stats in.

Every controller speaks to the cluster through a :class:`ControlChannel`:

* **versions**: plans and rules carry this controller's epoch (its start, Unix ms) and one counter
  from 1. Nodes order them by ``(epoch, version)``, so a restarted controller's first plan
  supersedes its predecessor's newest; on subscribe the channel makes sure its epoch is newer than
  any an earlier controller left on the retained topics;
* **publishing**: the default plan (``adaptive/<cluster>/plan``) and each source's decision rule
  (``adaptive/<cluster>/node/<source>/rule``), retained, QoS 1, signed when the controller has a
  signing key (:mod:`adaptive.runtime.signing`); the newest of each is published again on every
  reconnect (a restarted broker forgot them), and when anyone else's message replaces it on the
  broker (logged: a second controller, or someone forging plans);
* **receiving**: acks and node stats, validated (an ack or stats message on another node's topic is
  refused) and handed to the controller's callbacks; acks of another epoch are not this
  controller's business; a bad message is logged and dropped;
* **rule acks**: the newest rule version sent to each source and the newest it applied, so a caller
  can wait until every source follows its newest rule (:meth:`wait_rules`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from adaptive.protocol.messages import (
    Ack,
    Message,
    PlanMessage,
    SchemaError,
    StatsMessage,
    parse_topic,
    plan_topic,
    rank_of,
)
from adaptive.protocol.rules import RuleMessage, rule_topic
from adaptive.runtime.node_control import MAX_EPOCH_AHEAD_S
from adaptive.runtime.signing import Signer
from monitor.transport import BrokerAddress, MqttTransport

__all__ = ["ControlChannel"]

log = logging.getLogger(__name__)


class ControlChannel:
    """The controller's MQTT session (see the module docstring).

    Args:
        broker: MQTT broker.
        cluster: Cluster id.
        on_ack: Called with each valid ack (from the transport's thread).
        on_stats: Called with each valid stats message.
        ca_file: CA bundle for an ``mqtts://`` broker.
        client_id: MQTT client id (default ``controller-<cluster>``).
        signer: The controller's signing key (:class:`adaptive.runtime.signing.Signer`); None: the
            unsigned lab mode (logged).
    """

    def __init__(self, broker: BrokerAddress, cluster: str, *, on_ack: Callable[[Ack], None],
                 on_stats: Callable[[StatsMessage], None], ca_file: str | None = None,
                 client_id: str | None = None, signer: Signer | None = None) -> None:
        self.cluster = cluster
        self.on_ack = on_ack
        self.on_stats = on_stats
        self.signer = signer
        self.epoch = int(time.time() * 1000)
        self.version = 0
        self.foreign = 0  # plans and rules on our topics that this controller did not publish
        self.rules: deque[RuleMessage] = deque(maxlen=1000)  # newest last; bounded: a daemon runs for months
        self._lock = threading.Lock()
        self._acked = threading.Condition(self._lock)
        self._last_plan: Message | None = None
        self._last_rules: dict[str, Message] = {}  # per source, its newest rule
        self._rule_sent: dict[str, int] = {}  # per source, the newest rule version sent to it
        self._rule_acked: dict[str, int] = {}  # ... and the newest it applied
        self._retained_seen = threading.Event()
        self._sent: dict[str, deque[bytes]] = {}  # per topic, the payloads this controller published lately
        self._healed: dict[str, float] = {}  # per topic, when ours was last published over a foreign one
        self.transport = MqttTransport(
            broker, client_id=client_id or f"controller-{cluster}",
            subscriptions=[(plan_topic(cluster), 1), (f"adaptive/{cluster}/node/+/ack", 1),
                           (f"adaptive/{cluster}/node/+/stats", 1), (f"adaptive/{cluster}/node/+/rule", 1)],
            on_message=self.handle, ca_file=ca_file, on_connect_messages=self._retained)

    def start(self, wait_s: float = 10.0) -> ControlChannel:
        """Connect, then give a retained plan from an earlier run a moment to arrive."""
        self.transport.start(wait_s)
        if self.signer is None:
            log.warning("controller for %s: plans and rules unsigned (lab mode); give it --sign-key and its "
                        "nodes --controller-key so that nodes can tell its word from anyone's", self.cluster)
        self._retained_seen.wait(1.0)
        return self

    def close(self) -> None:
        """Disconnect (the retained plan and rules stay in force)."""
        self.transport.close()

    @property
    def connected(self) -> bool:
        """The broker session is up."""
        return self.transport.connected

    def next_version(self) -> int:
        """The version of the next plan or rule (this epoch's counter)."""
        with self._lock:
            self.version += 1
            return self.version

    # ------------------------------------------------------------------ out

    def publish_plan(self, plan: PlanMessage) -> PlanMessage:
        """Publish the default plan in this epoch, retained (and again on every reconnect); returns it."""
        plan = dataclasses.replace(plan, epoch=self.epoch)
        topic = plan_topic(self.cluster)
        message = Message(topic, self._sign(topic, plan.encode()), qos=1, retain=True)
        with self._lock:
            self._last_plan = message
            self._sent.setdefault(topic, deque(maxlen=16)).append(message.payload)
        self.transport.publish(message)
        return plan

    def publish_rule(self, rule: RuleMessage) -> RuleMessage:
        """Publish a source's rule in this epoch, retained (and again on every reconnect); returns it."""
        rule = dataclasses.replace(rule, epoch=self.epoch)
        topic = rule_topic(self.cluster, rule.source)
        message = Message(topic, self._sign(topic, rule.encode()), qos=1, retain=True)
        with self._lock:
            self._last_rules[rule.source] = message
            self._rule_sent[rule.source] = rule.version
            self.rules.append(rule)
            self._sent.setdefault(topic, deque(maxlen=16)).append(message.payload)
        self.transport.publish(message)
        return rule

    def _sign(self, topic: str, body: bytes) -> bytes:
        return self.signer.sign(topic, body) if self.signer is not None else body

    def _retained(self) -> list[Message]:
        with self._lock:
            return [m for m in (self._last_plan, *self._last_rules.values()) if m is not None]

    # ------------------------------------------------------------------ in

    def handle(self, topic: str, payload: bytes) -> None:
        """One message from the broker: plans and rules on the broker, acks, stats; drop a bad one."""
        try:
            _, kind, node = parse_topic(topic)
            if kind in ("plan", "rule"):
                self._on_retained(topic, kind, payload)
            elif kind == "ack":
                ack = Ack.decode(payload)
                if ack.node != node:
                    raise SchemaError(f"ack names node '{ack.node}' on the topic of '{node}'")
                if ack.epoch and ack.epoch != self.epoch:
                    return  # an answer to another controller
                if not ack.ok and ack.kind == "rule":
                    log.warning("node %s refused rule %d: %s", ack.node, ack.version, ack.error)
                self.on_ack(ack)
                if ack.ok:
                    self._rule_applied(ack)
            elif kind == "stats":
                stats = StatsMessage.decode(payload)
                if stats.node != node:
                    raise SchemaError(f"stats name node '{stats.node}' on the topic of '{node}'")
                self.on_stats(stats)
        except SchemaError as exc:
            log.warning("dropped message on %s: %s", topic, exc)

    def _on_retained(self, topic: str, kind: str, payload: bytes) -> None:
        """A plan or rule on the broker: an earlier controller's (learn its epoch), ours, or a foreign one."""
        with self._lock:
            ours = self._last_plan if kind == "plan" else next(
                (m for m in self._last_rules.values() if m.topic == topic), None)
            echo = payload in self._sent.get(topic, ())
        if kind == "plan":
            self._retained_seen.set()
        if ours is None:  # nothing published here yet: an earlier controller's, whose epoch ours must pass
            if payload:
                self._learn(rank_of(payload))
            return
        if echo:
            return
        self.foreign += 1
        now = time.monotonic()
        if now - self._healed.get(topic, -1e9) >= 5.0:  # a second controller would fight: slowly, loudly
            self._healed[topic] = now
            log.warning("a %s on %s that this controller did not publish (a second controller, or a "
                        "forgery): publishing ours again; lock the topic with the broker's ACL and sign "
                        "with --sign-key", kind, topic)
            self.transport.publish(ours)

    def _learn(self, rank: tuple[int, int] | None) -> None:
        if rank is None:
            return
        epoch, _ = rank
        if epoch / 1e3 - time.time() > MAX_EPOCH_AHEAD_S:
            log.warning("ignored a retained epoch %d from the future (a forgery, or a clock out of sync)",
                        epoch)
            return
        with self._lock:
            if epoch >= self.epoch and self.version == 0:
                self.epoch = epoch + 1

    def _rule_applied(self, ack: Ack) -> None:
        with self._acked:
            if ack.node in self._rule_sent:
                self._rule_acked[ack.node] = max(self._rule_acked.get(ack.node, 0), ack.version)
                self._acked.notify_all()

    def wait_rules(self, timeout_s: float = 5.0) -> list[str]:
        """Wait until every source applied the newest rule sent to it; the sources that did not."""
        deadline = time.monotonic() + timeout_s
        with self._acked:
            while True:
                behind = [n for n, v in self._rule_sent.items() if self._rule_acked.get(n, 0) < v]
                left = deadline - time.monotonic()
                if not behind or left <= 0:
                    return behind
                self._acked.wait(left)

