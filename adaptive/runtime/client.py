"""The inference client (and load generator): sends inputs to the chain, collects results.

It learns the current plan and the first node's data endpoint from the retained MQTT topics,
stamps each request with the plan version it starts under, and receives results and error frames
on its own PULL socket. Every request ends as exactly one record: ``ok`` (a result), ``error``
(an explicit error frame) or ``timeout`` (nothing arrived). Use :meth:`InferenceClient.run` for
open-loop (``rate_hz``) or closed-loop load; :func:`write_records` saves CSV or JSONL.
"""

from __future__ import annotations

import csv
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zmq

from adaptive.errors import AdaptiveError
from adaptive.runtime.wire import (
    DEFAULT_MAX_PAYLOAD,
    Frame,
    WireError,
    decode_frame,
    encode_frame,
    tensor_frame,
)
from monitor.schema import PlanMessage, SchemaError, Status, parse_topic, plan_topic
from monitor.transport import BrokerAddress, MqttTransport

__all__ = ["InferenceClient", "RequestRecord", "write_records"]


@dataclass(frozen=True)
class RequestRecord:
    """The outcome of one request.

    Attributes:
        id: Request id.
        sent_at: Unix time it was sent, s.
        latency_ms: Until its result or error arrived, ms (None on timeout).
        version: Plan version it ran under.
        outcome: ``ok``, ``error`` or ``timeout``.
        error: Error message, if any.
        hops: Per node along the way ``node:EXEC_MS``, plus ``+qQUEUE_MS`` when the request waited
            there and ``xBATCH`` when it ran in a batch.
    """

    id: str
    sent_at: float
    latency_ms: float | None
    version: int
    outcome: str
    error: str = ""
    hops: str = ""


class InferenceClient:
    """Sends requests under the current plan and records what comes back.

    Args:
        client_id: Client id (letters, digits, ``._:-``).
        broker: MQTT broker (for the plan and the first node's endpoint).
        cluster: Cluster id.
        input_shape: Input tensor shape (batch first).
        codec: Codec for the input frame (the first node usually runs the first stage).
        bind: Address for the result socket.
        advertise: Host nodes use to reach the result socket.
        timeout_s: A request without an answer after this long is a ``timeout``.
        on_result: Called as ``on_result(frame)`` with every result frame (e.g. to check outputs).
        ca_file: CA bundle for an ``mqtts://`` broker.
    """

    def __init__(self, client_id: str, broker: BrokerAddress, cluster: str, input_shape: tuple[int, ...],
                 *, codec: str = "none", bind: str = "127.0.0.1", advertise: str = "127.0.0.1",
                 timeout_s: float = 10.0, on_result: Callable[[Frame], None] | None = None,
                 ca_file: str | None = None) -> None:
        self.client_id = client_id
        self.cluster = cluster
        self.input_shape = tuple(input_shape)
        self.codec = codec
        self.timeout_s = timeout_s
        self.on_result = on_result
        self.plan: PlanMessage | None = None
        self.endpoints: dict[str, str] = {}
        self.records: list[RequestRecord] = []
        self._pending: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        self._send_lock = threading.Lock()
        self._ids = itertools.count()
        self._context = zmq.Context()
        self._pull = self._context.socket(zmq.PULL)
        port = self._pull.bind_to_random_port(f"tcp://{bind}")
        self.reply_to = f"tcp://{advertise}:{port}"
        self._push: dict[str, zmq.Socket] = {}
        self._stop = threading.Event()
        self.transport = MqttTransport(broker, client_id=f"client-{cluster}-{client_id}",
                                       subscriptions=[(plan_topic(cluster), 1),
                                                      (f"adaptive/{cluster}/node/+/status", 1)],
                                       on_message=self._on_mqtt, ca_file=ca_file)
        self._receiver = threading.Thread(target=self._receive_loop, name="client-results", daemon=True)

    def start(self, wait_s: float = 10.0) -> InferenceClient:
        """Connect; wait until a plan and the first node's endpoint are known."""
        self.transport.start(wait_s)
        self._receiver.start()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not self.ready():
            time.sleep(0.05)
        if not self.ready():
            raise AdaptiveError(f"no plan, or no endpoint for its first node, on cluster '{self.cluster}' "
                                f"after {wait_s:g} s (is the controller running?)")
        return self

    def ready(self) -> bool:
        """A plan is known and its first node is online."""
        with self._lock:
            return self.plan is not None and self.plan.devices[0] in self.endpoints

    def close(self) -> None:
        """Stop; outstanding requests are recorded as timeouts."""
        self._stop.set()
        self._receiver.join(timeout=2)
        with self._lock:
            for rid, (sent, version) in self._pending.items():
                self.records.append(RequestRecord(rid, sent, None, version, "timeout"))
            self._pending.clear()
        self.transport.close()
        for sock in self._push.values():
            sock.close(linger=0)
        self._pull.close(linger=0)
        self._context.term()

    def __enter__(self) -> InferenceClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_mqtt(self, topic: str, payload: bytes) -> None:
        try:
            _, kind, node = parse_topic(topic)
            if kind == "plan" and payload:
                plan = PlanMessage.decode(payload)
                with self._lock:
                    if self.plan is None or plan.version > self.plan.version:
                        self.plan = plan
            elif kind == "status" and node is not None:
                status = Status.decode(payload)
                with self._lock:
                    if status.state == "online" and status.data_endpoint:
                        self.endpoints[node] = status.data_endpoint
                    elif status.state != "online":  # (an online status without endpoint: a monitor's)
                        self.endpoints.pop(node, None)
        except SchemaError:
            return

    # ------------------------------------------------------------------ requests

    def send(self, x: np.ndarray | None = None) -> str:
        """Send one request (random input by default); returns its id."""
        with self._lock:
            plan = self.plan
            endpoint = self.endpoints.get(plan.devices[0]) if plan else None
        if plan is None or endpoint is None:
            raise AdaptiveError("no plan or no endpoint for the first node")
        array = x if x is not None else np.random.default_rng().standard_normal(self.input_shape, np.float32)
        rid = f"{self.client_id}-{next(self._ids)}"
        sent = time.time()
        base = Frame(kind="work", request_id=rid, client=self.client_id, reply_to=self.reply_to,
                     version=plan.version, hop=0, position=0, shape=self.input_shape, sent_at=sent)
        frame = tensor_frame(base, np.asarray(array, np.float32), self.codec)
        with self._lock:
            self._pending[rid] = (sent, plan.version)
        with self._send_lock:  # ZeroMQ sockets are not thread-safe; send() may be called from several
            sock = self._push.get(endpoint)
            if sock is None:
                sock = self._push[endpoint] = self._context.socket(zmq.PUSH)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(endpoint)
            sock.send_multipart(encode_frame(frame), copy=False)
        return rid

    def _receive_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        while not self._stop.is_set():
            if poller.poll(50):
                parts = self._pull.recv_multipart(copy=False)
                try:
                    frame = decode_frame([p.buffer for p in parts], DEFAULT_MAX_PAYLOAD)
                except WireError:
                    continue
                self._answer(frame)
            self._expire()

    def _answer(self, frame: Frame) -> None:
        now = time.time()
        with self._answered:
            entry = self._pending.pop(frame.request_id, None)
            if entry is None:
                return  # late or foreign
            sent, version = entry
            hops = " ".join(f"{n}:{e:.1f}" + (f"+q{q:.1f}" if q >= 0.05 else "") + (f"x{b}" if b > 1 else "")
                            for n, q, e, b in frame.trace)
            outcome = "ok" if frame.kind == "result" else "error"
            if outcome == "ok" and self.on_result is not None:
                self.on_result(frame)
            self.records.append(RequestRecord(frame.request_id, sent, round((now - sent) * 1e3, 3), version,
                                              outcome, frame.error, hops))
            self._answered.notify_all()

    def _expire(self) -> None:
        now = time.time()
        with self._answered:
            for rid, (sent, version) in list(self._pending.items()):
                if now - sent > self.timeout_s:
                    del self._pending[rid]
                    self.records.append(RequestRecord(rid, sent, None, version, "timeout"))
                    self._answered.notify_all()

    def outstanding(self) -> int:
        """Requests sent and not yet answered."""
        with self._lock:
            return len(self._pending)

    def run(self, duration_s: float, *, rate_hz: float | None = None,
            concurrency: int = 1) -> list[RequestRecord]:
        """Send load for ``duration_s``, then wait for the stragglers; return this run's records.

        Open loop at ``rate_hz``, or closed loop with ``concurrency`` requests in flight.
        """
        first = len(self.records)
        end = time.monotonic() + duration_s
        if rate_hz:
            period, next_at = 1.0 / rate_hz, time.monotonic()
            while time.monotonic() < end and not self._stop.is_set():
                self.send()
                next_at += period
                time.sleep(max(0.0, next_at - time.monotonic()))
        else:
            while time.monotonic() < end and not self._stop.is_set():
                with self._answered:
                    while len(self._pending) >= concurrency and not self._stop.is_set():
                        self._answered.wait(0.1)
                if time.monotonic() < end:
                    self.send()
        deadline = time.monotonic() + self.timeout_s + 1
        while self.outstanding() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.records[first:]


def write_records(records: Iterable[RequestRecord], path: str | Path) -> None:
    """Save records as JSONL (``.jsonl``) or CSV (anything else)."""
    path = Path(path)
    rows = [asdict(r) for r in records]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(RequestRecord.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(rows)
