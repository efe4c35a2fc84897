"""Prometheus metrics of the live system: node, controller and client, off unless asked for.

Each process gets its own :class:`Metrics` registry and serves it on ``--metrics-port``
(``/metrics``, the Prometheus text format). The series are listed in ``docs/live.md``;
``docs/deploy/grafana-dashboard.json`` is a dashboard built on them. A plan is labelled by its
splits (``"3,7"``), so the number of label values is bounded by the candidate plans.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from adaptive.errors import AdaptiveError

__all__ = ["ClientMetrics", "ControllerMetrics", "Metrics", "NodeMetrics", "plan_label"]

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)
AGE_BUCKETS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0)


def plan_label(splits: Any) -> str:
    """The label of a plan: its splits, comma-separated (``""`` for a single device)."""
    return ",".join(str(int(s)) for s in splits)


class Metrics:
    """One process's registry and, once :meth:`serve` is called, its HTTP endpoint."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.port: int | None = None
        self._server: Any = None

    def serve(self, port: int, bind: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on ``bind:port`` from a daemon thread.

        Raises:
            AdaptiveError: The port cannot be bound.
        """
        try:
            self._server, _ = start_http_server(port, addr=bind, registry=self.registry)
        except OSError as exc:
            raise AdaptiveError(f"cannot serve metrics on {bind}:{port}: {exc.strerror or exc}") from None
        self.port = self._server.server_port

    def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def node(self, node: str) -> NodeMetrics:
        """The series of a node runtime."""
        return NodeMetrics(self.registry, node)

    def controller(self) -> ControllerMetrics:
        """The series of the controller."""
        return ControllerMetrics(self.registry)

    def client(self) -> ClientMetrics:
        """The series of a client (call it with each record)."""
        return ClientMetrics(self.registry)


class NodeMetrics:
    """A node runtime's series (every one labelled with ``node``)."""

    def __init__(self, registry: CollectorRegistry, node: str) -> None:
        self.node = node
        r = registry
        self.frames = Counter("adaptive_node_frames", "Frames handled, by outcome (processed, rejected, "
                              "error)", ["node", "outcome"], registry=r)
        self.stage = Histogram("adaptive_node_stage_seconds", "Time of this node's stage of a request "
                               "(batch included), by plan", ["node", "plan"], buckets=LATENCY_BUCKETS,
                               registry=r)
        self.request = Histogram("adaptive_node_request_seconds", "Request latency from the client's send "
                                 "to the result leaving this node (the chain's last working node), by plan",
                                 ["node", "plan"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("adaptive_node_queue_wait_seconds", "Time a frame waited in this node's "
                                    "queue", ["node"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("adaptive_node_batch_size", "Requests per executed batch", ["node"],
                               buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("adaptive_node_queue_depth", "Frames waiting for this node's work thread",
                                 ["node"], registry=r)
        self.plan_version = Gauge("adaptive_node_plan_version", "Newest plan version accepted", ["node"],
                                  registry=r)
        self.plan_switches = Counter("adaptive_node_plan_switches", "Plans accepted", ["node"], registry=r)
        self.plans_rejected = Counter("adaptive_node_plans_rejected", "Plans refused on the ack topic",
                                      ["node"], registry=r)
        self.peers_online = Gauge("adaptive_node_peers_online", "Peers online with a data endpoint",
                                  ["node"], registry=r)
        self.uplink = Gauge("adaptive_node_uplink_bytes_per_second", "Emulated uplink rate (emulated "
                            "clusters only)", ["node"], registry=r)
        self.estimate_age = Histogram("adaptive_node_estimate_age_seconds", "Age of the uplink estimate "
                                      "behind each plan this node picked as a source", ["node"],
                                      buckets=AGE_BUCKETS, registry=r)
        for outcome in ("processed", "rejected", "error"):  # every series present from the start, at 0
            self.frames.labels(node, outcome)
        for series in (self.queue_wait, self.batch, self.plan_version, self.plan_switches,
                       self.plans_rejected, self.estimate_age):
            series.labels(node)

    def watch(self, queue_depth: Callable[[], float], peers: Callable[[], float],
              uplink: Callable[[], float] | None) -> None:
        """Read the gauges from these callables at every scrape."""
        self.queue_depth.labels(self.node).set_function(queue_depth)
        self.peers_online.labels(self.node).set_function(peers)
        if uplink is not None:
            self.uplink.labels(self.node).set_function(lambda: uplink() * 1e6 / 8)  # Mbit/s to bytes/s

    def frame(self, outcome: str, n: int = 1) -> None:
        """Count ``n`` frames with ``outcome``."""
        self.frames.labels(self.node, outcome).inc(n)

    def executed(self, plan: str, stage_s: float, waits_s: list[float]) -> None:
        """One batch of ``len(waits_s)`` requests ran this node's stage of ``plan`` in ``stage_s``."""
        self.stage.labels(self.node, plan).observe(stage_s)
        self.batch.labels(self.node).observe(len(waits_s))
        for w in waits_s:
            self.queue_wait.labels(self.node).observe(w)
        self.frame("processed", len(waits_s))

    def finished(self, plan: str, sent_at: float) -> None:
        """A result left this node for a request the client sent at ``sent_at`` (Unix s)."""
        self.request.labels(self.node, plan).observe(max(time.time() - sent_at, 0.0))

    def decided(self, decision: Any) -> None:
        """This node, as a source, stamped a plan (:class:`adaptive.runtime.source.SourceDecision`)."""
        if decision.age_s is not None:
            self.estimate_age.labels(self.node).observe(max(decision.age_s, 0.0))

    def plan(self, version: int, ok: bool) -> None:
        """A plan arrived and was accepted (``ok``) or refused."""
        if ok:
            self.plan_version.labels(self.node).set(version)
            self.plan_switches.labels(self.node).inc()
        else:
            self.plans_rejected.labels(self.node).inc()


class ControllerMetrics:
    """The controller's series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.switches = Counter("adaptive_controller_plan_switches", "Plans published", registry=r)
        self.version = Gauge("adaptive_controller_plan_version", "Version of the plan in force", registry=r)
        self.predicted = Gauge("adaptive_controller_predicted_latency_seconds", "Predicted latency of the "
                               "plan in force when it was chosen", registry=r)
        self.decisions = Counter("adaptive_controller_decisions", "Decision rounds run", registry=r)
        self.bandwidth = Gauge("adaptive_controller_bandwidth_bytes_per_second", "Bandwidth estimate the "
                               "controller uses per link", ["link"], registry=r)
        self.bandwidth_age = Gauge("adaptive_controller_bandwidth_age_seconds", "Age of that estimate's "
                                   "newest measurement", ["link"], registry=r)
        self.node_up = Gauge("adaptive_controller_node_up", "1 if the node is online with fresh telemetry",
                             ["node"], registry=r)
        self.scale = Gauge("adaptive_controller_calibration_scale", "Fitted measured/predicted compute "
                           "time of the node", ["node"], registry=r)
        self.connected = Gauge("adaptive_controller_broker_connected", "1 while both broker sessions are up",
                               registry=r)

    def observed(self, bandwidth: dict[str, tuple[float, float | None]], up: dict[str, bool],
                 scales: dict[str, float], connected: bool) -> None:
        """One decision round's inputs: ``bandwidth[link] = (mbps, age_s)``."""
        self.decisions.inc()
        self.connected.set(1 if connected else 0)
        for link, (mbps, age) in bandwidth.items():
            self.bandwidth.labels(link).set(mbps * 1e6 / 8)
            if age is not None:
                self.bandwidth_age.labels(link).set(age)
        for node, ok in up.items():
            self.node_up.labels(node).set(1 if ok else 0)
        for node, k in scales.items():
            self.scale.labels(node).set(k)

    def switched(self, version: int, predicted_ms: float) -> None:
        """A new plan was published."""
        self.switches.inc()
        self.version.set(version)
        if predicted_ms == predicted_ms:  # not NaN
            self.predicted.set(predicted_ms / 1e3)


class ClientMetrics:
    """A client's series; call it with each :class:`~adaptive.runtime.client.RequestRecord`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.latency = Histogram("adaptive_client_request_seconds", "End-to-end latency of answered "
                                 "requests, retries included, by plan", ["plan"], buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.requests = Counter("adaptive_client_requests", "Requests completed, by outcome", ["outcome"],
                                registry=r)
        self.retries = Counter("adaptive_client_retries", "Attempts sent again after a node failed them",
                               registry=r)

    def __call__(self, record: Any) -> None:
        """Count one completed request."""
        self.requests.labels(record.outcome).inc()
        if record.retries:
            self.retries.inc(record.retries)
        if record.outcome == "ok" and record.latency_ms is not None:
            self.latency.labels(record.plan).observe(record.latency_ms / 1e3)
