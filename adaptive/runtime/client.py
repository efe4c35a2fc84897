"""The inference client (and load generator): sends inputs to the chain, collects results.

It learns the current plan and the nodes' data endpoints from the retained MQTT topics, stamps each
request with its own plan (and the version it came from), and receives results and error frames on
its own PULL socket. It never dies on a transient, and it loses no request:

* A request that cannot be routed (no plan yet, the first node unknown or not connected, or the
  plan gives work to a node that went offline) waits, and goes out as soon as a usable plan is known.
* A request whose node died is sent again under the current plan, at most ``max_retries`` times.
  The node is taken for dead when an error frame says the failure is transient (``retry``), when a
  node the request's plan gives work to goes offline, or when no answer comes within a deadline
  derived from the plan's predicted latency and the answers seen so far (as TCP derives its
  retransmission timeout from the round-trip times it measures).
* Every request ends as exactly one record, with its retry count: ``ok`` (a result), ``dropped``
  (its source dropped it at admission: the model predicted it past the deadline of the source's
  rule; a resend dropped there because the slow attempt before it is still queued waits for that
  one instead), ``error`` (an error frame that is not transient, or retries exhausted) or ``timeout``
  (nothing usable within ``timeout_s`` of the first send). The first result wins; later answers
  to the same request are ignored.

Use :meth:`InferenceClient.run` for open-loop (``rate_hz``) or closed-loop load; ``on_record`` (e.g.
a :class:`RecordWriter`) sees each record as it completes; :func:`write_records` saves a list.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from adaptive.errors import AdaptiveError
from adaptive.model.plans import Section, plan_label
from adaptive.protocol.messages import PlanMessage, SchemaError, check_id, parse_topic, plan_topic
from adaptive.runtime.wire import (
    DEFAULT_MAX_PAYLOAD,
    Frame,
    WireError,
    decode_frame,
    encode_frame,
    tensor_frame,
)
from monitor.presence import Presence
from monitor.transport import BrokerAddress, MqttTransport

__all__ = ["InferenceClient", "RecordWriter", "RequestRecord", "plan_label", "write_records"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestRecord:
    """The outcome of one request.

    Attributes:
        id: Request id.
        sent_at: Unix time it was first sent (or, if it never could be, created), s.
        latency_ms: From ``sent_at`` until its result or error arrived, retries included, ms (None on
            timeout).
        version: Plan version its last attempt ran under (0: never sent).
        outcome: ``ok``, ``dropped``, ``error`` or ``timeout``.
        error: Error message, if any (for a request that never went out: why).
        hops: Per node along the way ``node:EXEC_MS``, plus ``+qQUEUE_MS`` when the request waited
            there and ``xBATCH`` when it ran in a batch.
        retries: Times it was sent again after a node failed it.
        plan: The plan its last attempt ran under: its splits, comma-separated, then ``/`` and its
            codecs when it compresses an activation (e.g. ``3,7`` or ``3,7/int8,none``).
    """

    id: str
    sent_at: float
    latency_ms: float | None
    version: int
    outcome: str
    error: str = ""
    hops: str = ""
    retries: int = 0
    plan: str = ""


@dataclass
class _Request:
    rid: str
    array: np.ndarray
    created: float  # Unix s
    created_mono: float
    sent_at: float | None = None  # Unix s of the first send
    wire_id: str = ""  # id of the attempt in flight
    attempts: int = 0
    attempt_sent: float = 0.0  # monotonic s
    version: int = 0
    plan: str = ""
    nodes: tuple[str, ...] = ()  # nodes the attempt in flight gives work to
    fixed: PlanMessage | None = None  # a plan chosen by the caller for this request
    deadline: float = math.inf  # monotonic s: resend after this
    in_flight: bool = False
    overdue: bool = False  # an earlier attempt was only slow, not failed: it may still be answered
    not_before: float = 0.0  # monotonic s: back off before the next attempt
    reason: str = "not sent yet"

    def wire_ids(self) -> list[str]:
        """The ids of every attempt sent: ``rid``, then ``rid.1``, ``rid.2``, ..."""
        return [self.rid, *(f"{self.rid}.{k}" for k in range(1, self.attempts))]


class AttemptTimer:
    """How long an attempt gets before it is sent again: TCP's retransmission timeout on answer times.

    The deadline is the largest of ``min_s``, ``factor`` times the plan's predicted latency, and
    the smoothed answer time plus four deviations (RFC 6298's estimator, on answered attempts).
    """

    def __init__(self, min_s: float, factor: float) -> None:
        self.min_s = min_s
        self.factor = factor
        self.srtt: float | None = None  # smoothed answer time of ok attempts, s
        self.rttvar = 0.0

    def sample(self, seconds: float) -> None:
        """An attempt answered ``ok`` after ``seconds``."""
        if self.srtt is None:
            self.srtt, self.rttvar = seconds, seconds / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - seconds)
            self.srtt = 0.875 * self.srtt + 0.125 * seconds

    def deadline_s(self, predicted_ms: float | None) -> float:
        """The next attempt's deadline, s after it goes out."""
        measured = self.srtt + 4 * self.rttvar if self.srtt is not None else 0.0
        return max(self.min_s, self.factor * (predicted_ms or 0.0) / 1e3, measured)


class _PushSockets:
    """One PUSH socket per node endpoint: no connection, no queueing (a request waits in the client)."""

    def __init__(self, context: zmq.Context, curve: Any) -> None:
        self.context = context
        self.curve = curve
        self.sockets: dict[str, zmq.Socket] = {}

    def get(self, endpoint: str, node: str) -> zmq.Socket:
        """The socket to ``node`` at ``endpoint``, connected on first use."""
        sock = self.sockets.get(endpoint)
        if sock is None:
            sock = self.sockets[endpoint] = self.context.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            if self.curve is not None:
                self.curve.connect_to(sock, node)
            sock.connect(endpoint)
        return sock

    def close(self) -> None:
        """Close every socket."""
        for sock in self.sockets.values():
            sock.close(linger=0)
        self.sockets.clear()


def _receive(sock: zmq.Socket, curve: Any, presence: Presence) -> Frame | None:
    """One answer from the result socket; None if malformed or, with CURVE, not from a node (logged)."""
    parts = sock.recv_multipart(copy=False)
    try:
        frame = decode_frame([p.buffer for p in parts], DEFAULT_MAX_PAYLOAD)
        if curve is not None and (why := curve.check_sender(parts[0], frame, presence.seen())):
            raise WireError(why)
    except WireError as exc:
        log.warning("dropped frame: %s", exc)
        return None
    return frame


class InferenceClient:
    """Sends requests under the current plan and records what comes back (see the module docstring).

    Args:
        client_id: Client id (letters, digits, ``._:-``).
        broker: MQTT broker (for the plan and the nodes' endpoints).
        cluster: Cluster id.
        input_shape: Input tensor shape (batch first).
        codec: Codec for the input frame (the first node usually runs the first stage).
        bind: Address for the result socket.
        advertise: Host nodes use to reach the result socket.
        timeout_s: A request with no usable answer this long after it was created is a ``timeout``.
        on_result: Called as ``on_result(frame)`` with every result frame (e.g. to check outputs).
        on_record: Called as ``on_record(record)`` as each request completes (e.g. to append it to a
            file), from the client's threads.
        ca_file: CA bundle for an ``mqtts://`` broker.
        max_retries: Sends of a request after the first, at most, when a node fails it.
        min_deadline_s: An attempt is given at least this long before it is sent again, s.
        deadline_factor: ... and at least this many times the plan's predicted latency.
        curve: CURVE keys (:class:`adaptive.runtime.security.CurveKeys`) for an authenticated,
            encrypted data plane; None for plain TCP.
        source_decides: Send requests without a plan to the source node (the default plan's first
            node), which picks each one's plan from its decision rule and its fresh uplink estimate
            (:mod:`adaptive.runtime.source`); False stamps the current default plan here.
        source: The node this client's inputs enter at: its own edge device, when several clients
            share the accelerators, each from its own device. Requests go there without a plan
            (``source_decides`` must be True) and no default plan is needed. None: the default
            plan's first node.
    """

    def __init__(self, client_id: str, broker: BrokerAddress, cluster: str, input_shape: tuple[int, ...],
                 *, codec: str = "none", bind: str = "127.0.0.1", advertise: str = "127.0.0.1",
                 timeout_s: float = 10.0, on_result: Callable[[Frame], None] | None = None,
                 on_record: Callable[[RequestRecord], None] | None = None, ca_file: str | None = None,
                 max_retries: int = 3, min_deadline_s: float = 2.0, deadline_factor: float = 4.0,
                 curve: Any = None, source_decides: bool = True, source: str | None = None) -> None:
        if source is not None and not source_decides:
            raise AdaptiveError("a client with its own source node lets that node decide (source_decides)")
        if source is not None:
            try:
                check_id(source, "source")
            except SchemaError as exc:
                raise AdaptiveError(str(exc)) from None
        if max_retries < 0 or not min_deadline_s > 0 or not deadline_factor > 0 or not timeout_s > 0:
            raise AdaptiveError("max_retries must be >= 0; timeout_s, min_deadline_s and deadline_factor > 0")
        self.client_id = client_id
        self.cluster = cluster
        self.input_shape = tuple(input_shape)
        self.codec = codec
        self.timeout_s = timeout_s
        self.on_result = on_result
        self.on_record = on_record
        self.max_retries = max_retries
        self.min_deadline_s = min_deadline_s
        self.deadline_factor = deadline_factor
        self.curve = curve
        self.source_decides = source_decides
        self.source = source
        self.plan: PlanMessage | None = None
        self.presence = Presence()
        self.records: list[RequestRecord] = []
        self.requests = 0  # requests accepted by send(); each ends as exactly one record
        self._pending: dict[str, _Request] = {}
        self._wire: dict[str, str] = {}  # wire id of an attempt -> request id
        self._timer = AttemptTimer(min_deadline_s, deadline_factor)
        self._lock = threading.RLock()
        self._answered = threading.Condition(self._lock)
        self._ids = itertools.count()
        self._context = zmq.Context()
        self._pull = self._context.socket(zmq.PULL)
        if curve is not None:
            curve.start_authenticator(self._context)
            curve.serve(self._pull)
        port = self._pull.bind_to_random_port(f"tcp://{bind}")
        self.reply_to = f"tcp://{advertise}:{port}"
        self._push = _PushSockets(self._context, curve)
        self._stop = threading.Event()
        self._halt = threading.Event()
        self.transport = MqttTransport(broker, client_id=f"client-{cluster}-{client_id}",
                                       subscriptions=[(plan_topic(cluster), 1),
                                                      (f"adaptive/{cluster}/node/+/status", 1)],
                                       on_message=self._on_mqtt, ca_file=ca_file,
                                       on_disconnect=self.presence.disconnected)
        self._receiver = threading.Thread(target=self._receive_loop, name="client-results", daemon=True)

    def start(self, wait_s: float = 10.0) -> InferenceClient:
        """Connect and wait up to ``wait_s`` until a plan and its first node's endpoint are known.

        The connection is made in the background: a broker that is not up yet is a transient.

        Raises:
            AdaptiveError: Nothing usable within ``wait_s``, naming what is missing.
        """
        self.transport.start(None)
        self._receiver.start()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and self._route()[0] is None:
            time.sleep(0.05)
        plan, _, reason = self._route()
        if plan is None:
            self.close()
            why = (f"cannot reach broker {self.transport.address.url}" if not self.transport.connects
                   else reason)
            raise AdaptiveError(f"no usable plan on cluster '{self.cluster}' after {wait_s:g} s: {why} "
                                "(are the controller and nodes running?)")
        return self

    def ready(self) -> bool:
        """A plan is known and its first node is online with an endpoint."""
        return self._route()[0] is not None

    def close(self) -> None:
        """Stop; outstanding requests are recorded as timeouts (or errors if never sent)."""
        self._stop.set()
        if self._receiver.is_alive():
            self._receiver.join(timeout=2)
        with self._lock:
            for req in list(self._pending.values()):
                self._finish(req, "timeout" if req.sent_at is not None else "error", None,
                             "" if req.sent_at is not None else f"never sent: {req.reason}")
        self.transport.close()
        with self._lock:
            self._push.close()
        self._pull.close(linger=0)
        if self.curve is not None:
            self.curve.stop_authenticator()
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
                    if self.plan is None or plan.rank > self.plan.rank:
                        self.plan = plan
            elif kind == "status" and node is not None:
                self.presence.receive(node, payload)
        except SchemaError as exc:
            log.warning("dropped message on %s: %s", topic[:120], exc)

    # ------------------------------------------------------------------ requests

    def _route(self, plan: PlanMessage | None = None) -> tuple[PlanMessage | None, str, str]:
        """``(plan, first node's endpoint, "")`` if a request can go out now, else ``(None, "", why)``.

        ``plan`` defaults to the current one. A client with its own ``source`` needs no plan: it
        gets a placeholder naming only that node (the source stamps the real one).
        """
        explicit = plan is not None
        if plan is None and self.source is not None:
            plan = PlanMessage(version=0, model="", devices=(self.source,), splits=(), issued_at=0.0,
                               policy="source")
        if plan is None:
            with self._lock:
                plan = self.plan
        if plan is None:
            return None, "", "no plan yet"
        endpoint = self.presence.endpoint(plan.devices[0])
        if endpoint is None:
            return None, "", f"first node '{plan.devices[0]}' has no data endpoint (offline?)"
        if explicit or not self.source_decides:  # the source re-checks a plan it picks itself
            offline = [n for n in plan.working_nodes() if not self.presence.online(n)]
        else:
            offline = [n for n in plan.devices[:1] if not self.presence.online(n)]
        if offline:
            return None, "", f"plan {plan.version} gives work to offline node '{offline[0]}'"
        return plan, endpoint, ""

    def send(self, x: np.ndarray | None = None, plan: PlanMessage | None = None) -> str:
        """Send one request (random input by default); returns its id.

        The request carries its own plan: ``plan`` if given (every attempt uses it), else the
        current one when it goes out. Never raises on a transient: a request that cannot go out now
        waits for a usable plan (up to ``timeout_s``).
        """
        array = x if x is not None else np.random.default_rng().standard_normal(self.input_shape, np.float32)
        rid = f"{self.client_id}-{next(self._ids)}"
        req = _Request(rid, np.asarray(array, np.float32), time.time(), time.monotonic(), fixed=plan)
        with self._lock:
            self.requests += 1
            self._pending[rid] = req
            self._dispatch(req)
        return rid

    def _dispatch(self, req: _Request) -> None:
        """Send ``req``'s next attempt if a route exists (caller holds the lock)."""
        plan, endpoint, reason = self._route(req.fixed)
        if plan is None:
            req.in_flight, req.reason = False, reason
            return
        wire_id = req.rid if req.attempts == 0 else f"{req.rid}.{req.attempts}"
        now = time.time()
        base = Frame(kind="work", request_id=wire_id, client=self.client_id, reply_to=self.reply_to,
                     version=plan.version, hop=0, position=0, shape=self.input_shape,
                     sent_at=req.sent_at or now)
        auto = req.fixed is None and self.source_decides
        if not auto:  # else the source stamps the plan on arrival
            base = replace(base, model=plan.model, devices=plan.devices, splits=plan.splits,
                           codecs=plan.codecs, section=Section(*plan.section) if plan.section else None)
        parts = encode_frame(tensor_frame(base, req.array, self.codec))
        try:
            self._push.get(endpoint, plan.devices[0]).send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:
            req.in_flight, req.reason = False, f"cannot send to '{plan.devices[0]}': {exc}"
            return
        req.sent_at = req.sent_at or now
        req.attempts += 1
        req.wire_id = wire_id
        self._wire[wire_id] = req.rid
        req.version, req.nodes = plan.version, (plan.devices[:1] if auto else plan.working_nodes())
        req.plan = "" if auto else plan_label(plan.splits, plan.codecs,
                                              Section(*plan.section) if plan.section else None)
        req.attempt_sent = time.monotonic()
        req.deadline = req.attempt_sent + self._timer.deadline_s(plan.predicted_ms)
        req.in_flight = True

    def _retry(self, req: _Request, reason: str, backoff: bool = False) -> bool:
        """Send ``req`` again if it has retries left (caller holds the lock).

        With ``backoff`` (a node refused it for a reason that may pass) the next attempt waits
        0.25 s, then 0.5 s, 1 s, ...; after a death it goes out at once on the current plan.
        """
        if req.attempts > self.max_retries:
            return False
        req.in_flight, req.reason = False, reason
        if backoff:
            req.not_before = time.monotonic() + min(0.25 * 2 ** (req.attempts - 1), 2.0)
            return True
        self._dispatch(req)
        return True

    def _receive_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        while not self._stop.is_set():
            if poller.poll(50) and (frame := _receive(self._pull, self.curve, self.presence)) is not None:
                self._answer(frame)
            self._tick()

    def _answer(self, frame: Frame) -> None:
        now = time.time()
        with self._answered:
            req = self._pending.get(self._wire.get(frame.request_id, ""))
            if req is None:
                return  # late (already answered) or foreign
            if frame.kind != "result":
                if frame.request_id != req.wire_id:
                    return  # an earlier attempt failed; the one in flight may still succeed
                if frame.retry and self._retry(req, frame.error, backoff=True):
                    return
                if frame.dropped and req.overdue:
                    # the source dropped a resend because the attempt before it is still queued
                    # there: that one may yet be answered, so the request waits for it
                    req.in_flight, req.deadline = True, time.monotonic() + self.min_deadline_s
                    return
                self._finish(req, "dropped" if frame.dropped else "error",
                             round((now - (req.sent_at or now)) * 1e3, 3), frame.error, _hops(frame))
                return
            if frame.request_id == req.wire_id:
                self._timer.sample(time.monotonic() - req.attempt_sent)
            if frame.devices:  # the plan it really ran under (the source's choice)
                req.version, req.plan = frame.version, plan_label(frame.splits, frame.codecs, frame.section)
            if self.on_result is not None:
                self.on_result(frame)
            self._finish(req, "ok", round((now - (req.sent_at or now)) * 1e3, 3), "", _hops(frame))

    def _tick(self) -> None:
        """Expire, resend and send what waits (the receive thread, every 50 ms)."""
        now = time.monotonic()
        with self._answered:
            for req in list(self._pending.values()):
                if now - req.created_mono > self.timeout_s:
                    never = req.sent_at is None
                    self._finish(req, "error" if never else "timeout", None,
                                 f"never sent: {req.reason}" if never else "")
                elif not req.in_flight:
                    if now >= req.not_before:
                        self._dispatch(req)
                else:
                    gone = next((n for n in req.nodes if not self.presence.online(n)), None)
                    if gone is not None:
                        req.overdue = False
                        self._retry(req, f"node '{gone}' went offline")
                    elif now > req.deadline:
                        req.overdue = True
                        self._retry(req, "no answer within its deadline")

    def _finish(self, req: _Request, outcome: str, latency_ms: float | None, error: str,
                hops: str = "") -> None:
        """Record ``req`` once (caller holds the lock)."""
        del self._pending[req.rid]
        for w in req.wire_ids():
            self._wire.pop(w, None)
        record = RequestRecord(req.rid, req.sent_at or req.created, latency_ms, req.version, outcome, error,
                               hops, max(req.attempts - 1, 0), req.plan)
        self.records.append(record)
        if self.on_record is not None:
            try:
                self.on_record(record)
            except Exception:  # a sink's bug must not stop the client; the record stays in .records
                log.exception("on_record failed")
        self._answered.notify_all()

    def halt(self) -> None:
        """Make :meth:`run` stop sending (e.g. on a signal); what is in flight still completes."""
        self._halt.set()

    def outstanding(self) -> int:
        """Requests sent (or waiting to be) and not yet recorded."""
        with self._lock:
            return len(self._pending)

    def run(self, duration_s: float, *, rate_hz: float | None = None, concurrency: int = 1,
            inputs: Sequence[np.ndarray] | None = None) -> list[RequestRecord]:
        """Send load for ``duration_s``, then wait for the stragglers; return this run's records.

        Open loop at ``rate_hz``, or closed loop with ``concurrency`` requests in flight. Request
        ``n`` (the number in its id) sends ``inputs[n % len(inputs)]``, else a random input.
        """
        send = self.send if not inputs else lambda: self.send(inputs[self.requests % len(inputs)])
        first = len(self.records)
        end = time.monotonic() + duration_s
        if rate_hz:
            period, next_at = 1.0 / rate_hz, time.monotonic()
            while time.monotonic() < end and not self._halt.is_set():
                send()
                next_at += period
                time.sleep(max(0.0, next_at - time.monotonic()))
        else:
            while time.monotonic() < end and not self._halt.is_set():
                with self._answered:
                    while len(self._pending) >= concurrency and not self._halt.is_set():
                        self._answered.wait(0.1)
                if time.monotonic() < end and not self._halt.is_set():
                    send()
        deadline = time.monotonic() + self.timeout_s + 1
        while self.outstanding() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.records[first:]


def _hops(frame: Frame) -> str:
    return " ".join(f"{n}:{e:.1f}" + (f"+q{q:.1f}" if q >= 0.05 else "") + (f"x{b}" if b > 1 else "")
                    for n, q, e, b in frame.trace)


class RecordWriter:
    """Appends each record to a CSV or JSONL file as it completes.

    Each record is flushed, so a crash loses nothing already answered. Use as
    ``InferenceClient(on_record=writer)``; thread-safe.

    Args:
        path: ``.jsonl`` for JSON lines, anything else for CSV (a header is written first).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._fh: io.TextIOBase = self.path.open("w", newline="", encoding="utf-8")
        except OSError as exc:
            raise AdaptiveError(f"cannot write records to '{path}': {exc.strerror or exc}") from None
        self._jsonl = self.path.suffix == ".jsonl"
        self._csv = None if self._jsonl else csv.DictWriter(self._fh, fieldnames=_FIELDS)
        if self._csv is not None:
            self._csv.writeheader()
            self._fh.flush()
        self._lock = threading.Lock()

    def __call__(self, record: RequestRecord) -> None:
        """Append one record and flush it to the OS."""
        with self._lock:
            if self._jsonl:
                self._fh.write(json.dumps(asdict(record)) + "\n")
            else:
                assert self._csv is not None
                self._csv.writerow(asdict(record))
            self._fh.flush()

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._fh.close()


_FIELDS = list(RequestRecord.__dataclass_fields__)


def write_records(records: Iterable[RequestRecord], path: str | Path) -> None:
    """Save records as JSONL (``.jsonl``) or CSV (anything else), as :class:`RecordWriter` writes them."""
    writer = RecordWriter(path)
    try:
        for record in records:
            writer(record)
    finally:
        writer.close()
