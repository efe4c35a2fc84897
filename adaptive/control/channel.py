"""A controller's MQTT side: one version counter, plans and rules out, acks and stats in.

Every controller speaks to the cluster through a :class:`ControlChannel`:

* **versions**: plans and rules share one counter. On subscribe it learns the newest version an
  earlier controller left (retained plan and rule topics), so nodes, which ignore anything older
  than what they hold, accept what this one publishes;
* **publishing**: the default plan (``adaptive/<cluster>/plan``) and each source's decision rule
  (``adaptive/<cluster>/node/<source>/rule``), retained, QoS 1; the newest of each is published
  again on every reconnect (a restarted broker forgot them);
* **receiving**: acks and node stats, validated (an ack or stats message on another node's topic is
  refused) and handed to the controller's callbacks; a bad message is logged and dropped;
* **rule acks**: the newest rule version sent to each source and the newest it applied, so a caller
  can wait until every source follows its newest rule (:meth:`wait_rules`).
"""

from __future__ import annotations

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
    version_of,
)
from adaptive.protocol.rules import RuleMessage, rule_topic
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
    """

    def __init__(self, broker: BrokerAddress, cluster: str, *, on_ack: Callable[[Ack], None],
                 on_stats: Callable[[StatsMessage], None], ca_file: str | None = None,
                 client_id: str | None = None) -> None:
        self.cluster = cluster
        self.on_ack = on_ack
        self.on_stats = on_stats
        self.version = 0
        self.rules: deque[RuleMessage] = deque(maxlen=1000)  # newest last; bounded: a daemon runs for months
        self._lock = threading.Lock()
        self._acked = threading.Condition(self._lock)
        self._last_plan: Message | None = None
        self._last_rules: dict[str, Message] = {}  # per source, its newest rule
        self._rule_sent: dict[str, int] = {}  # per source, the newest rule version sent to it
        self._rule_acked: dict[str, int] = {}  # ... and the newest it applied
        self._retained_seen = threading.Event()
        self.transport = MqttTransport(
            broker, client_id=client_id or f"controller-{cluster}",
            subscriptions=[(plan_topic(cluster), 1), (f"adaptive/{cluster}/node/+/ack", 1),
                           (f"adaptive/{cluster}/node/+/stats", 1), (f"adaptive/{cluster}/node/+/rule", 1)],
            on_message=self.handle, ca_file=ca_file, on_connect_messages=self._retained)

    def start(self, wait_s: float = 10.0) -> ControlChannel:
        """Connect, then give a retained plan from an earlier run a moment to arrive."""
        self.transport.start(wait_s)
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
        """The version of the next plan or rule."""
        with self._lock:
            self.version += 1
            return self.version

    # ------------------------------------------------------------------ out

    def publish_plan(self, plan: PlanMessage) -> None:
        """Publish the default plan, retained (and again on every reconnect)."""
        message = Message(plan_topic(self.cluster), plan.encode(), qos=1, retain=True)
        with self._lock:
            self._last_plan = message
        self.transport.publish(message)

    def publish_rule(self, rule: RuleMessage) -> None:
        """Publish a source's decision rule, retained (and again on every reconnect)."""
        message = Message(rule_topic(self.cluster, rule.source), rule.encode(), qos=1, retain=True)
        with self._lock:
            self._last_rules[rule.source] = message
            self._rule_sent[rule.source] = rule.version
            self.rules.append(rule)
        self.transport.publish(message)

    def _retained(self) -> list[Message]:
        with self._lock:
            return [m for m in (self._last_plan, *self._last_rules.values()) if m is not None]

    # ------------------------------------------------------------------ in

    def handle(self, topic: str, payload: bytes) -> None:
        """One message from the broker: learn versions, route acks and stats; drop a bad one."""
        try:
            _, kind, node = parse_topic(topic)
            if kind == "plan":
                if payload:
                    self._learn(PlanMessage.decode(payload).version)
                self._retained_seen.set()
            elif kind == "rule":
                version = version_of(payload) if payload else None
                if version is not None:
                    self._learn(version)
            elif kind == "ack":
                ack = Ack.decode(payload)
                if ack.node != node:
                    raise SchemaError(f"ack names node '{ack.node}' on the topic of '{node}'")
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

    def _learn(self, version: int) -> None:
        with self._lock:
            self.version = max(self.version, version)

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
