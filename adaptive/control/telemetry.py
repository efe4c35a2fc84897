"""Subscriber side of the contract: the latest telemetry and status of every node of a cluster.

Every message is validated (:mod:`adaptive.protocol.messages`); a malformed one, or one whose payload names
another node than its topic, is logged and dropped and counted in :attr:`Collector.rejected`,
never raised. A node is *stale* when its newest telemetry is older than ``stale_after_s`` and
*offline* when its retained status says so (the Last Will) — callers such as the controller
plan around both. Statuses go through :class:`monitor.presence.Presence`, so the Last Wills a
broker publishes as it shuts down do not mark every node offline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from adaptive.protocol.messages import SchemaError, Status, Telemetry, check_id, parse_topic
from monitor.presence import Presence
from monitor.transport import BrokerAddress, MqttTransport

__all__ = ["Collector", "NodeView"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeView:
    """What the collector knows about one node.

    Attributes:
        node: Node id.
        telemetry: Newest valid telemetry, or None.
        received_at: Local time it arrived (``time.time()``), or None.
        status: Newest valid status, or None.
        telemetry_count: Valid telemetry messages received.
    """

    node: str
    telemetry: Telemetry | None = None
    received_at: float | None = None
    status: Status | None = None
    telemetry_count: int = 0

    def online(self) -> bool:
        """The retained status says online (unknown counts as online until told otherwise)."""
        return self.status is None or self.status.state == "online"

    def fresh(self, now: float, stale_after_s: float) -> bool:
        """Telemetry arrived within ``stale_after_s``."""
        return self.received_at is not None and now - self.received_at <= stale_after_s


class Collector:
    """Subscribes to ``adaptive/<cluster>/node/+/{telemetry,status}`` and keeps node views.

    Args:
        broker: The MQTT broker.
        cluster: Cluster id.
        client_id: MQTT client id.
        on_update: Called as ``on_update(node_view)`` after each valid message (paho thread).
        ca_file: CA bundle for ``mqtts://`` brokers (default: the system's).
        offline_hold_s: How long an ``offline`` status waits before it takes effect
            (:class:`~monitor.presence.Presence`), s.
    """

    def __init__(self, broker: BrokerAddress, cluster: str = "default", *, client_id: str | None = None,
                 on_update: Callable[[NodeView], None] | None = None, ca_file: str | None = None,
                 offline_hold_s: float = 0.5) -> None:
        self.cluster = check_id(cluster, "cluster")
        self.presence = Presence(offline_hold_s)
        self.on_update = on_update
        self.rejected = 0
        self._nodes: dict[str, NodeView] = {}
        self._lock = threading.Lock()
        base = f"adaptive/{cluster}/node/+/"
        self.transport = MqttTransport(
            broker, client_id=client_id or f"collector-{cluster}-{int(time.time() * 1e3) % 10**9}",
            subscriptions=[(base + "telemetry", 1), (base + "status", 1)], on_message=self.handle,
            ca_file=ca_file, on_disconnect=self.presence.disconnected)

    def start(self, wait_s: float | None = 10.0) -> Collector:
        """Connect and subscribe."""
        self.transport.start(wait_s)
        return self

    def close(self) -> None:
        """Disconnect."""
        self.transport.close()

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def handle(self, topic: str, payload: bytes) -> None:
        """Validate and store one message; anything invalid is logged and dropped."""
        try:
            cluster, kind, node = parse_topic(topic)
            if kind not in ("telemetry", "status"):
                # not subscribed: amqtt 0.12 delivers some retained messages of other topics to a
                # new subscription (a broker bug); nothing is wrong with the sender
                log.debug("ignored a %s message on %s: not subscribed", kind, topic[:120])
                return
            if cluster != self.cluster or node is None:
                raise SchemaError(f"unexpected topic {topic!r}")
            record: Telemetry | Status
            record = Telemetry.decode(payload) if kind == "telemetry" else Status.decode(payload)
            if record.node != node:
                raise SchemaError(f"{kind}: payload node {record.node!r} does not match topic node {node!r}")
        except SchemaError as exc:
            self.rejected += 1
            log.warning("dropped message on %s: %s", topic[:120], exc)
            return
        with self._lock:
            view = self._nodes.get(node, NodeView(node))
            if isinstance(record, Telemetry):
                view = NodeView(node, record, time.time(), None, view.telemetry_count + 1)
            else:
                self.presence.update(record)
            self._nodes[node] = view
        if self.on_update is not None:
            self.on_update(self._view(view))

    def _view(self, view: NodeView) -> NodeView:
        return NodeView(view.node, view.telemetry, view.received_at, self.presence.status(view.node),
                        view.telemetry_count)

    def nodes(self) -> dict[str, NodeView]:
        """A snapshot of every node seen, with its effective status."""
        with self._lock:
            views = list(self._nodes.values())
        return {v.node: self._view(v) for v in views}

    def reconnected_at(self) -> float:
        """Unix time our broker session last came back after a loss (0 if it never dropped)."""
        return self.transport.connected_at if self.transport.connects > 1 else 0.0

    def alive(self, view: NodeView | None, now: float, stale_after_s: float,
              reconnect_grace_s: float) -> bool:
        """A node's view shows it online with fresh telemetry.

        After our own broker session comes back, nodes get ``stale_after_s + reconnect_grace_s``
        to reconnect before they can look stale (the broker's outage is not theirs).
        """
        grace = now < self.reconnected_at() + stale_after_s + reconnect_grace_s
        return (view is not None and view.online() and view.telemetry is not None
                and (grace or view.fresh(now, stale_after_s)))

    @staticmethod
    def uplink(view: NodeView | None, peer: str, now: float) -> tuple[float | None, float | None]:
        """``(Mbit/s, age in s)`` of a node's newest estimate of its link to ``peer`` (None, None if none).

        Passive estimates (from the node's own transfers) win over probes; a passive one is as old
        as the telemetry that carried it, a probe as old as its measurement.
        """
        est = view.telemetry.links.get(peer) if view is not None and view.telemetry is not None else None
        value = (est.passive_mbps or est.bandwidth_mbps) if est is not None else None
        if not value:
            return None, None
        measured = view.telemetry.ts if est.passive_mbps else (est.measured_at or view.telemetry.ts)
        return float(value), max(now - measured, 0.0)

    def live_nodes(self, stale_after_s: float = 3.0, now: float | None = None) -> list[str]:
        """Nodes online with fresh telemetry."""
        now = time.time() if now is None else now
        return sorted(n for n, v in self.nodes().items() if v.online() and v.fresh(now, stale_after_s))
