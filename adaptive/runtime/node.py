"""The node runtime: holds a full model replica, runs its stage of each request, forwards the rest.

Control has two levels (seed 001 Sec. 3.2): the controller (:mod:`adaptive.control`, slow,
central) publishes a decision rule per source node, and the source node — the edge device where a
client's input enters — picks each request's plan from that rule and its own fresh uplink estimate
(:mod:`adaptive.runtime.source`, the fast level) as the request arrives. Every node runs this
runtime; a node is a source for the requests that enter at it.

Control plane (MQTT): the node announces itself on its retained status topic (with its data
endpoint) and learns its peers' endpoints from theirs; it validates the rule the controller
publishes for it and every default plan, and answers each on its ack topic (the audit trail):
:mod:`adaptive.runtime.node_control`.
Data plane (ZeroMQ): frames (:mod:`adaptive.runtime.wire`) arrive on a PULL socket, each carrying
its request's own plan (stamped at its source); the node validates that plan (its model, splits in
range and non-decreasing, every node known and every node with work online), runs blocks
``[s_m, s_{m+1})`` of it, then pushes the activation to the next node with a non-empty stage, or
the result back to the client. Any node runs any valid plan with no handshake, so a switch costs
nothing and requests in flight are unaffected by construction.
Malformed, truncated or oversized frames, and frames with an invalid plan, are answered with an
error frame when the client can be identified, and dropped; nothing a peer sends can stop the node.

Emulation for one-machine clusters: torch threads, a compute slowdown (``slowdown``) or padding to
a device profile's predicted stage time (``emulate``), and an uplink shaper whose rate can replay a
bandwidth trace (:mod:`adaptive.runtime.emulation`). Imports torch; import lazily.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
import zmq

from adaptive.errors import AdaptiveError
from adaptive.model.lop import efficiency_curve
from adaptive.model.profiles import DeviceProfile, ModelProfile
from adaptive.nn.partition import partition
from adaptive.nn.zoo import build_model, default_input_shape
from adaptive.protocol.messages import (
    Message,
    PlanMessage,
    StageTiming,
    StatsMessage,
    TransferTiming,
    stats_topic,
)
from adaptive.runtime.emulation import ComputeEmulation, PartCosts, UplinkEmulation
from adaptive.runtime.links import Outbox
from adaptive.runtime.node_control import NodeControlPlane
from adaptive.runtime.route import check_plan, check_route
from adaptive.runtime.sections import SectionPath
from adaptive.runtime.shaping import LinkShaper
from adaptive.runtime.source import SourceDecider
from adaptive.runtime.wire import DEFAULT_MAX_PAYLOAD, Frame, WireError, decode_frame, tensor_frame
from monitor.presence import Presence
from monitor.transport import BrokerAddress

__all__ = ["NodeConfig", "NodeRuntime", "attach_monitor", "check_plan", "check_route"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeConfig:
    """Configuration of one node runtime.

    Attributes:
        node: Node id.
        model: Zoo model name (every node of a cluster holds the same model).
        cluster: Cluster id.
        input_shape: Model input shape (default: the model's).
        weights: Local ``state_dict`` file (default: random initialisation).
        bind: Address of the data socket.
        port: Port of the data socket (0: any free port).
        advertise: Host name peers use to reach the data socket.
        threads: torch intra-op threads.
        device: Device profile name announced in the status.
        emulate: Per-block latency to pad each stage to (a device's latencies from a model profile).
        emulate_correction: With ``emulate``, the device's summation correction ``(c0_ms, c1_ms)``:
            a stage of ``n`` blocks takes ``sum − (c0_ms·n + c1_ms)``, as the model predicts.
        emulate_batch: With ``emulate``, a batch of ``b`` takes ``T(1)·(1 + emulate_batch·(b−1))``
            (the device profile's ``batching.per_extra_item``).
        emulate_parts: With ``emulate``, what a part of a parallel section costs on the device
            (:func:`emulated_parts`; default: time proportional to its rows).
        slowdown: Multiply the stage time by this (≥ 1) by sleeping: the measured compute time, or
            with ``emulate`` the emulated device's (a device this much slower than its profile).
        batch_window_ms: Time to wait for more requests of the same stage to batch together.
        max_batch: Largest batch.
        max_payload_bytes: Largest activation accepted.
        uplink_mbps: Emulated uplink rate (None: no shaping).
        uplink_delay_ms: Emulated one-way delay on the uplink.
        uplink_trace: Bandwidth series (Mbit/s per ``trace_dt_s``) the uplink replays in a loop.
        trace_dt_s: Step of ``uplink_trace``, s.
        result_delay_ms: Emulated propagation delay of a result on its way back to its client (the
            links between this node and the source), ms: its link to the client delivers them this
            much later, in order, without holding back the ones behind.
        stats_interval_s: Period of stats messages, s.
        max_links: Outbound links (to peers and clients) open at most.
        link_idle_s: An outbound link that carried nothing this long is closed, s.
    """

    node: str
    model: str
    cluster: str = "default"
    input_shape: tuple[int, ...] | None = None
    weights: str | None = None
    bind: str = "127.0.0.1"
    port: int = 0
    advertise: str = "127.0.0.1"
    threads: int = 1
    device: str = ""
    emulate: tuple[float, ...] | None = None
    emulate_correction: tuple[float, float] = (0.0, 0.0)
    emulate_batch: float = 1.0
    emulate_parts: PartCosts | None = None
    slowdown: float = 1.0
    batch_window_ms: float = 0.0
    max_batch: int = 8
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD
    uplink_mbps: float | None = None
    uplink_delay_ms: float = 0.0
    uplink_trace: tuple[float, ...] = ()
    trace_dt_s: float = 1.0
    result_delay_ms: float = 0.0
    stats_interval_s: float = 1.0
    max_links: int = 32
    link_idle_s: float = 30.0


class NodeStats:
    """Stage and transfer times since the last stats message (the controller calibrates on them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stages: dict[tuple[Any, ...], list[float]] = defaultdict(list)
        self._transfers: dict[str, list[tuple[int, float]]] = defaultdict(list)

    def stage(self, versions: set[int], start: int, stop: int, batch: int, ms: float,
              section: tuple[int, float, int] | None = None) -> None:
        """Blocks ``[start, stop)`` of a batch took ``ms`` (filed under each plan version in it).

        ``section``: the time is this node's share of that parallel section of ``[start, stop)``.
        """
        with self._lock:
            for version in versions:
                self._stages[(version, start, stop, batch, section)].append(ms)

    def transfer(self, peer: str, nbytes: int, ms: float) -> None:
        """``nbytes`` went to ``peer`` in ``ms``."""
        with self._lock:
            self._transfers[peer].append((nbytes, ms))

    def take(self, node: str) -> StatsMessage | None:
        """The medians since the last call, as a message (None if nothing happened); starts afresh."""
        with self._lock:
            stages, self._stages = self._stages, defaultdict(list)
            transfers, self._transfers = self._transfers, defaultdict(list)
        if not stages and not transfers:
            return None
        timings = tuple(StageTiming(v, a, b, n, len(ms), round(statistics.median(ms), 3), sec)
                        for (v, a, b, n, sec), ms in list(stages.items())[:64])
        sent = tuple(TransferTiming(peer, len(x), int(statistics.median(b for b, _ in x)),
                                    round(statistics.median(m for _, m in x), 3))
                     for peer, x in list(transfers.items())[:64] if peer != "unknown")
        return StatsMessage(node, round(time.time(), 3), timings, sent)


def bind_data_socket(context: zmq.Context, cfg: NodeConfig, curve: Any) -> tuple[zmq.Socket, int]:
    """The node's PULL socket, bound where ``cfg`` says (CURVE-served if keys are given), and its port."""
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 1000)
    if curve is not None:  # only authorised keys complete the handshake; others never reach us
        curve.start_authenticator(context)
        curve.serve(pull)
    # hard guard against memory exhaustion; sizes below it are checked with an error reply
    pull.setsockopt(zmq.MAXMSGSIZE, 2 * cfg.max_payload_bytes + 8192)
    try:
        port = pull.bind_to_random_port(f"tcp://{cfg.bind}") if cfg.port == 0 else cfg.port
        if cfg.port:
            pull.bind(f"tcp://{cfg.bind}:{cfg.port}")
    except zmq.ZMQError as exc:
        pull.close(linger=0)
        if curve is not None:
            curve.stop_authenticator()
        where = f"{cfg.bind}:{cfg.port or 'any port'}"
        raise AdaptiveError(f"cannot bind the data socket on {where}: {exc}") from None
    return pull, port


class NodeRuntime:
    """One node of the cluster (see the module docstring).

    Args:
        config: Node configuration.
        broker: MQTT broker.
        agent: Optional in-process monitor agent told about every transfer (passive bandwidth).
        ca_file: CA bundle for an ``mqtts://`` broker.
        curve: CURVE keys (:class:`adaptive.runtime.security.CurveKeys`) for an authenticated,
            encrypted data plane; None for plain TCP.
        metrics: Prometheus metrics (:class:`adaptive.control.metrics.NodeMetrics`), or None.
        verifier: What the node takes as the controller's word
            (:class:`adaptive.runtime.signing.Verifier`; default: the unsigned lab mode).
    """

    def __init__(self, config: NodeConfig, broker: BrokerAddress, agent: Any = None,
                 ca_file: str | None = None, curve: Any = None, metrics: Any = None,
                 verifier: Any = None) -> None:
        self.config = config
        self.curve = curve
        self.metrics = metrics
        self.broker = broker
        self.ca_file = ca_file
        self.agent = agent
        self.shaper = (LinkShaper(config.uplink_mbps or config.uplink_trace[0], config.uplink_delay_ms)
                       if (config.uplink_mbps or config.uplink_trace) else None)
        self.presence = Presence()  # peers' statuses and data endpoints
        self.source = SourceDecider(config.node, self.presence, self._uplink,
                                    on_decision=metrics.decided if metrics is not None else None)
        self.endpoint = ""
        self.processed = 0
        self.dropped_frames = 0  # frames refused on the data plane
        self._lock = threading.Lock()
        self._work: queue.Queue[tuple[float, Frame]] = queue.Queue(maxsize=1000)  # (arrival, frame)
        self._stop = threading.Event()
        self.stats = NodeStats()
        self.compute = ComputeEmulation(config.emulate, config.emulate_correction, config.emulate_batch,
                                        config.slowdown, config.emulate_parts)
        self.uplink = UplinkEmulation(self.shaper, config.uplink_trace, config.trace_dt_s)
        self.control = NodeControlPlane(config, broker, self.presence, self.source, self.uplink,
                                        ca_file=ca_file, metrics=metrics, verifier=verifier)
        self.threads: list[threading.Thread] = []  # the loops: the node has failed if one ends
        self.failed = threading.Event()
        self.unanswerable = 0  # answers dropped: their reply_to was no endpoint, or its queue was full
        self._context: zmq.Context | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, wait_s: float | None = 10.0) -> NodeRuntime:
        """Load the model, bind the data socket, join the control plane, start the threads."""
        cfg = self.config
        torch.set_num_threads(cfg.threads)
        shape = cfg.input_shape or default_input_shape(cfg.model)
        self.part = partition(build_model(cfg.model, cfg.weights), shape, name=cfg.model)
        with torch.inference_mode():  # first runs allocate; keep that out of request latency
            for x in self.part.activations(torch.zeros(shape)):
                del x
        self.section_path = SectionPath(self.part, cfg.node, self._send_to, self._reply, self._emit,
                                        self.compute.pad, self._count, self.compute.pad_part,
                                        record=self.stats.stage)
        self.control.check_section = self.section_path.check
        self._context = zmq.Context()
        try:
            self._pull, port = bind_data_socket(self._context, cfg, self.curve)
        except AdaptiveError:
            self._context.term()
            self._context = None
            raise
        self.endpoint = f"tcp://{cfg.advertise}:{port}"
        self.outbox = Outbox(self._context, self.shaper, self._on_sent, self._on_send_failed, self.curve,
                             on_chunk=self._on_chunk, result_delay_ms=cfg.result_delay_ms,
                             max_links=cfg.max_links, idle_s=cfg.link_idle_s)
        self.control.start(self.endpoint, self.part.num_blocks, wait_s)
        if self.metrics is not None:
            shaper = self.shaper
            self.metrics.watch(self._work.qsize, lambda: len(self.presence.endpoints()),
                               (lambda: shaper.rate_mbps) if shaper is not None else None)
        loops = [(self._receive_loop, "receive"), (self._work_loop, "work"), (self._stats_loop, "stats")]
        if self.uplink.trace_mbps and self.shaper is not None:
            loops.append((self._trace_loop, "trace"))
        for target, name in loops:
            t = threading.Thread(target=target, name=f"{cfg.node}-{name}", daemon=True)
            t.start()
            self.threads.append(t)
        threading.Thread(target=self._watchdog, name=f"{cfg.node}-watchdog", daemon=True).start()
        return self

    def _watchdog(self) -> None:
        """A loop that ends while the node runs would leave it online and deaf: declare it failed instead.

        Sets :attr:`failed` and publishes ``offline``; ``adaptive node`` then exits non-zero so its
        supervisor (systemd) restarts it.
        """
        while not self._stop.wait(0.5):
            dead = [t.name for t in self.threads if not t.is_alive()]
            if dead and not self._stop.is_set():
                log.critical("node %s: the %s thread died; going offline", self.config.node, ", ".join(dead))
                self.failed.set()
                self.control.publish(self.control.status("offline"))
                return

    def close(self) -> None:
        """Stop, publish ``offline``, close sockets."""
        self._stop.set()
        for t in self.threads:
            t.join(timeout=5)
        self.control.close()
        if self._context is not None:
            self.outbox.close()
            self._pull.close(linger=0)
            if self.curve is not None:
                self.curve.stop_authenticator()
            self._context.term()

    def _uplink(self, peer: str) -> tuple[float | None, float | None]:
        """The in-process monitor's estimate of the link to ``peer`` (passive, else probes), capped."""
        estimate = self.agent.uplink(peer) if self.agent is not None else (None, None)
        endpoint = self.presence.endpoint(peer)
        crossing = self.outbox.in_progress(endpoint) if endpoint and self._context is not None else None
        return capped_estimate(estimate, crossing)

    @property
    def plan(self) -> PlanMessage | None:
        """The newest default plan accepted (the audit trail; requests carry their own)."""
        return self.control.plan

    @property
    def rejected(self) -> int:
        """Frames and control messages refused."""
        return self.dropped_frames + self.control.rejected

    # ------------------------------------------------------------------ data plane

    def _receive_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            parts = self._pull.recv_multipart(copy=False)
            buffers = [p.buffer for p in parts]
            try:
                frame = decode_frame(buffers, self.config.max_payload_bytes)
            except WireError as exc:
                self.dropped_frames += 1
                if self.metrics is not None:
                    self.metrics.frame("rejected")
                reply_to_malformed(self.outbox, self.config.node, buffers, str(exc))
                continue
            except Exception:  # a decoder bug must not stop the node: drop the frame, keep serving
                self.dropped_frames += 1
                log.exception("dropped a frame that broke the decoder")
                continue
            if self.curve is not None and (why := self.curve.check_sender(parts[0], frame)):
                self.dropped_frames += 1  # no answer: whoever sent it is not who it claims
                log.warning("dropped %s", why)
                continue
            try:
                self._admit(frame)
            except Exception:
                self.dropped_frames += 1
                log.exception("dropped a frame that could not be admitted")

    def _admit(self, frame: Frame) -> None:
        """Queue a decoded frame for the work loop (deciding its plan first if it enters here)."""
        if frame.kind != "work":
            self.dropped_frames += 1
            return
        if not frame.devices:  # entering at its source without a plan: decide it here, now
            decided = self.source.decide(frame)
            if decided.frame is None:  # dropped at admission (final), or no rule yet (transient)
                self._reply(frame.error_reply(decided.why, retry=not decided.dropped,
                                              dropped=decided.dropped))
                return
            frame = decided.frame
        try:
            self._work.put_nowait((time.monotonic(), frame))
        except queue.Full:
            self._reply(frame.error_reply(f"node {self.config.node} is overloaded", retry=True))

    def _reply(self, frame: Frame) -> None:
        """Answer a client, or drop the answer and count it: never raises (the loops call it last)."""
        if self.metrics is not None and frame.kind == "error":
            self.metrics.frame("error")
        try:
            sent = (frame.reply_to.startswith("tcp://")
                    and self.outbox.send(frame.reply_to, frame, frame.client))
        except Exception:
            log.exception("answering %r failed", frame.reply_to[:140])
            sent = False
        if not sent:
            self.unanswerable += 1
            log.warning("dropped the answer to %r: not a reachable endpoint, or its queue is full",
                        frame.reply_to[:140])

    def _on_send_failed(self, frame: Frame, reason: str) -> None:
        if frame.kind == "work":
            self._reply(frame.error_reply(reason, retry=True))
        else:  # an answer that could not be delivered
            self.unanswerable += 1

    def _on_sent(self, endpoint: str, frame: Frame, nbytes: int, seconds: float,
                 wire_s: float | None) -> None:
        peer = frame.client if frame.kind != "work" else self._node_at(endpoint)
        self.stats.transfer(peer, nbytes, seconds * 1e3)

    def _on_chunk(self, endpoint: str, frame: Frame, nbytes: int, wire_s: float) -> None:
        """A chunk of an activation crossed the emulated uplink: a passive sample for the monitor."""
        if self.agent is None:
            return
        # the emulated uplink paces everything this node sends: credit it to the chain successor
        peer = successor(frame, self.config.node) or self._node_at(endpoint)
        self.agent.observe_transfer(peer, nbytes, wire_s, link_level=True)

    def _node_at(self, endpoint: str) -> str:
        return next((n for n, ep in self.presence.endpoints().items() if ep == endpoint), "unknown")

    def _work_loop(self) -> None:
        """Take frames in arrival order; batch those of the same stage that arrive within the window."""
        while not self._stop.is_set():
            self.section_path.expire()  # answer sections whose pieces did not all arrive in time
            try:
                first = self._work.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = [first]
            key = _batch_key(first[1])
            deadline = time.monotonic() + self.config.batch_window_ms / 1e3
            while len(batch) < self.config.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    nxt = self._work.get(timeout=remaining) if remaining > 0 else self._work.get_nowait()
                except queue.Empty:
                    break
                if _batch_key(nxt[1]) == key:
                    batch.append(nxt)
                else:
                    self._guarded([nxt])
            self._guarded(batch)

    def _guarded(self, arrivals: list[tuple[float, Frame]]) -> None:
        """:meth:`_process`, answering every request with an error if something unexpected breaks."""
        try:
            self._process(arrivals)
        except Exception as exc:  # never lose a request silently, never stop the work thread
            log.exception("stage failed unexpectedly")
            for _, f in arrivals:
                self._reply(f.error_reply(f"node {self.config.node} failed: {exc.__class__.__name__}"))

    def _process(self, arrivals: list[tuple[float, Frame]]) -> None:
        """Run one batch: frames of the same stage, each forwarded along its own plan.

        Frames from different plans (several clients, each with its own) batch together when this
        node runs the same blocks of them; each then goes on to its own next node with its own codec.
        """
        started = time.monotonic()
        L = self.part.num_blocks
        known, online = self.control.route_view()
        runnable: list[tuple[float, Frame]] = []
        for arrival in arrivals:
            f = arrival[1]
            error, transient = check_route(f.model, f.devices, f.splits, self.config.model, L, known, online)
            if error:
                self._reply(f.error_reply(f"node {self.config.node} refused the request's plan: {error}",
                                          retry=transient))
            elif in_section(f):
                self.section_path.take(f, started - arrival[0])
            elif f.devices[f.hop] != self.config.node or f.position != _bounds(f, L)[f.hop]:
                self._reply(f.error_reply(f"misrouted: node {self.config.node} got hop {f.hop} at "
                                          f"position {f.position} of plan {list(f.splits)}"))
            else:
                runnable.append(arrival)
        if not runnable:
            return
        batch = [f for _, f in runnable]
        queued_ms = [round((started - t) * 1e3, 3) for t, _ in runnable]
        head = batch[0]
        start, stop = _bounds(head, L)[head.hop], _bounds(head, L)[head.hop + 1]
        try:
            x = np.concatenate([f.tensor() for f in batch], axis=0)
            t0 = time.perf_counter()
            y = self.part.run(start, stop, torch.from_numpy(x)).numpy() if stop > start else x
            compute = time.perf_counter() - t0
        except (WireError, RuntimeError, ValueError) as exc:
            for f in batch:
                self._reply(f.error_reply(f"node {self.config.node} failed on blocks [{start}, {stop}): "
                                          f"{str(exc).splitlines()[0][:200]}"))
            return
        spent = self.compute.pad(start, stop, len(batch), compute)
        self.stats.stage({f.version for f in batch}, start, stop, len(batch), spent * 1e3)
        for i, f in enumerate(batch):
            self._emit(f, y[i : i + 1] if len(batch) > 1 else y, stop, queued_ms[i], spent, len(batch))

    def _count(self) -> None:
        with self._lock:
            self.processed += 1

    def _send_to(self, node: str, frame: Frame) -> bool:
        endpoint = self.presence.endpoint(node)
        return endpoint is not None and self.outbox.send(endpoint, frame, node)

    def _emit(self, f: Frame, out: np.ndarray, stop: int, queued_ms: float, spent: float, batch: int) -> None:
        """Send a request's activation after blocks ``[…, stop)`` on to its next node, or its result home."""
        L = self.part.num_blocks
        self._count()
        label = ",".join(str(s) for s in f.splits)
        if self.metrics is not None:
            self.metrics.executed(label, spent, [queued_ms / 1e3])
        trace = (*f.trace, (self.config.node, queued_ms, round(spent * 1e3, 3), batch))
        bounds = _bounds(f, L)
        nxt = next((j for j in range(f.hop + 1, len(f.devices)) if bounds[j + 1] > bounds[j]), None)
        if nxt is None:
            self._reply(tensor_frame(f, out, kind="result", position=L, trace=trace, part=None))
            if self.metrics is not None:
                self.metrics.finished(label, f.sent_at)
            return
        codec = f.codecs[nxt - 1] if f.codecs else "none"
        frame = tensor_frame(f, out, codec, hop=nxt, position=stop, trace=trace, part=None)
        if not self._send_to(f.devices[nxt], frame):
            self._reply(f.error_reply(f"next node {f.devices[nxt]} is unreachable", retry=True))

    # ------------------------------------------------------------------ periodic

    def _stats_loop(self) -> None:
        cfg = self.config
        while not self._stop.wait(cfg.stats_interval_s):
            self.outbox.sweep()  # close the links idle for long
            msg = self.stats.take(cfg.node)
            if msg is not None:
                self.control.publish(Message(stats_topic(cfg.cluster, cfg.node), msg.encode(), qos=1))

    def _trace_loop(self) -> None:
        self.uplink.replay(self._stop)


def capped_estimate(estimate: tuple[float | None, float | None],
                    crossing: tuple[int, float] | None) -> tuple[float | None, float | None]:
    """A link estimate ``(Mbit/s, Unix time)`` capped by a transfer still crossing the link.

    A frame of N bytes that has been on the link for e seconds (``crossing``: N and its
    ``time.monotonic()`` start) says the link is now at most N/e fast: after a drop the source
    learns it while the first slow transfer is still under way, not seconds later when it ends.
    """
    mbps, at = estimate
    if crossing is not None:
        nbytes, started = crossing
        elapsed = time.monotonic() - started
        bound = nbytes * 8 / elapsed / 1e6 if elapsed > 0.005 else None
        if bound is not None and (mbps is None or bound < mbps):
            return bound, time.time()
    return mbps, at


def successor(frame: Frame, node: str) -> str | None:
    """The node after ``node`` on the frame's plan (None if it is the last or not on it)."""
    chain = frame.devices
    me = chain.index(node) if node in chain else -1
    return chain[me + 1] if 0 <= me < len(chain) - 1 else None


def reply_to_malformed(outbox: Outbox, node: str, parts: list[memoryview], message: str) -> None:
    """Best effort: answer the client named in a header that parses, even if the frame is bad."""
    log.warning("dropped frame: %s", message)
    try:
        h = json.loads(bytes(parts[0])) if parts and len(parts[0]) <= 4096 else None
    except ValueError:
        return
    if not isinstance(h, dict) or not isinstance(h.get("reply_to"), str) or not h["reply_to"]:
        return
    try:
        frame = Frame(kind="error", request_id=str(h.get("id", "?"))[:64],
                      client=str(h.get("client", "?"))[:64], reply_to=h["reply_to"][:128],
                      version=0, hop=0, position=0, shape=(0,),
                      error=f"node {node} rejected a frame: {message}")
        if h["reply_to"].startswith("tcp://"):
            outbox.send(frame.reply_to, frame, frame.client)
    except (TypeError, ValueError):
        return


def in_section(frame: Frame) -> bool:
    """A frame the section path takes: a sectioned request at its source, or a piece of one."""
    return frame.section is not None and (frame.part is not None or frame.hop == 0)


def _bounds(frame: Frame, num_blocks: int) -> list[int]:
    """``[0, s1, …, sM, L]`` of a frame's plan."""
    return [0, *frame.splits, num_blocks]


def _batch_key(frame: Frame) -> tuple[Any, ...]:
    """Frames that may run as one batch: the same blocks on this node and the same tensor shape.

    Their plans may differ (several clients, each with its own): the blocks a frame runs here are
    ``[position, next split)``, so the key is the position and the next split; the model is part
    of it so that a frame for another model is refused on its own.
    """
    nxt = frame.splits[frame.hop] if frame.hop < len(frame.splits) else -1
    if in_section(frame):  # a section's request or piece runs alone
        return (frame.client, frame.request_id, frame.part)
    return (frame.model, frame.position, nxt, frame.shape[1:])


def emulated_latency(profile: ModelProfile, device: str) -> tuple[float, ...]:
    """Per-block latency of ``device`` from a model profile, for :attr:`NodeConfig.emulate`."""
    return tuple(float(x) for x in profile.latency_for(device))


def emulated_parts(profile: ModelProfile, device: DeviceProfile) -> PartCosts:
    """What parts of sections cost on ``device``, for :attr:`NodeConfig.emulate_parts`."""
    xs, ys, op_ms = efficiency_curve(profile, device)
    return PartCosts(tuple(zip(xs[1:].tolist(), ys[1:].tolist(), strict=True)), op_ms,
                     tuple(b.ops for b in profile.blocks))


def load_trace_series(path: str | Path, dt_s: float,
                      scale_median_mbps: float | None = None) -> tuple[float, ...]:
    """A bandwidth trace file as one value per ``dt_s``, optionally scaled to a median."""
    from adaptive.model.traces import load_trace, resample

    values = resample(load_trace(path), dt_s)
    if scale_median_mbps:
        values = values * (scale_median_mbps / max(float(np.median(values[values > 0])), 1e-9))
    return tuple(float(v) for v in np.clip(values, 0.05, None))


class IdleDeviceSampler:
    """The resources of an emulated device: the host's readings, but no background CPU load.

    An emulated node pads its stages to its device's profile, so the host's other work (the
    other emulated nodes, a benchmark, a training run) does not slow the device it stands for;
    reporting the host's load would make the controller predict a slowdown that never happens.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def sample(self) -> Any:
        """The host's sample with CPU utilisation 0."""
        s = self.inner.sample()
        return replace(s, cpu_percent=0.0, per_core=tuple(0.0 for _ in s.per_core))


def attach_monitor(node: NodeRuntime, peers: dict[str, tuple[str, int]], *, probe_port: int = 0,
                   probe_interval_s: float = 2.0, interval_s: float = 1.0,
                   probe_max_share: float = 0.05) -> Any:
    """Run a node's monitor agent in the node's process; returns the started agent.

    Its probe sink binds where the data socket does and takes probes only from this machine, the
    peers it probes and the nodes that announced themselves on the broker. Its status announces the
    runtime's data endpoint, and its ``cpu_percent`` leaves out this
    process (the runtime's own inference is not background load). When the uplink is emulated,
    the agent's probes go through the node's shaper and the runtime reports every activation's wire
    time to it as a passive estimate (:meth:`monitor.agent.MonitorAgent.observe_transfer`); on a real
    link the agent reads the kernel's estimates as usual.
    """
    from monitor.agent import AgentConfig, MonitorAgent
    from monitor.sampler import PsutilSampler

    cfg = node.config
    limiters = dict.fromkeys(peers, node.shaper) if node.shaper is not None else {}
    emulated = node.shaper is not None  # the kernel cannot see an emulated link; keep probes small on it
    extra: dict[str, Any] = {"probe_bytes": 250_000} if emulated else {}
    sampler: Any = PsutilSampler(exclude_pid=os.getpid())
    if cfg.emulate is not None:
        sampler = IdleDeviceSampler(sampler)
    agent = MonitorAgent(AgentConfig(node=cfg.node, cluster=cfg.cluster, interval_s=interval_s, peers=peers,
                                     probe_port=probe_port, probe_interval_s=probe_interval_s,
                                     probe_max_share=probe_max_share,
                                     device=cfg.device, data_endpoint=node.endpoint, passive=not emulated,
                                     probe_bind=cfg.bind, **extra),
                         node.broker, limiters=limiters, sampler=sampler, ca_file=node.ca_file,
                         known_hosts=lambda: _hosts(node.presence.endpoints().values()))
    agent.start()
    node.agent = agent
    return agent


def _hosts(endpoints: Iterable[str]) -> set[str]:
    """The hosts of ``tcp://host:port`` endpoints."""
    return {host for e in endpoints if (host := urlsplit(e).hostname)}
