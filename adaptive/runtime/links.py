"""Outgoing frames: one ZeroMQ PUSH socket per destination, each owned by its own thread.

Sockets queue only on a live connection (``ZMQ_IMMEDIATE``): a frame for a dead peer fails within
the send timeout, with everything queued behind it, and the node answers those requests with a
transient error. On an emulated uplink, frames are paced in 64 KB chunks and each chunk is reported,
so the sender's bandwidth estimate follows the link while a large activation crosses it.

ZeroMQ sockets must not be shared between threads, so every destination endpoint gets an
:class:`OutLink` with a queue, a thread that paces the frames through the link and puts them in
flight, and a carrier thread, the socket's only user, that hands each one over when the link's
propagation delay has passed (the link carries the next frame meanwhile). All of a node's links can share one
:class:`~adaptive.runtime.shaping.LinkShaper` (the node's uplink), which paces the activations it
sends to other nodes (results and errors to clients are not shaped).

Links are bounded: an :class:`Outbox` holds at most ``max_links`` of them and closes one that has
carried nothing for ``idle_s``; at the bound it closes the least recently used idle link to make
room, or refuses the frame (its sender counts it). Frames naming endpoints that lead nowhere cannot
grow a node's threads without end.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from adaptive.errors import AdaptiveError
from adaptive.runtime.shaping import LinkShaper
from adaptive.runtime.wire import Frame, encode_frame

__all__ = ["OutLink", "Outbox"]

log = logging.getLogger(__name__)

SentCallback = Callable[[str, Frame, int, float, float | None], None]
ChunkCallback = Callable[[str, Frame, int, float], None]
CHUNK_BYTES = 64 * 1024  # granularity at which an emulated link paces (and reports) a frame


class OutLink:
    """Frames to one endpoint, sent in order by a dedicated thread.

    Args:
        context: ZeroMQ context.
        endpoint: ``tcp://host:port`` of the receiver.
        shaper: Optional uplink emulation applied before each send.
        on_sent: ``on_sent(endpoint, frame, nbytes, seconds, wire_s)`` after each send: ``seconds``
            from dequeue to handing the frame to ZeroMQ (shaping and queueing included),
            ``wire_s`` the emulated link's wire time (None when not shaped).
        on_failed: ``on_failed(frame, reason)`` when a frame cannot be sent.
        max_queue: Frames waiting at most; beyond it :meth:`send` refuses.
        send_timeout_ms: A frame that cannot be handed to a connected peer within this fails, and
            so does every frame queued behind it (the peer is gone), ms.
        curve: CURVE keys (:class:`adaptive.runtime.security.CurveKeys`): the link authenticates as
            a client of ``peer``, whose public key it pins.
        peer: Id of the receiver (its key name), with ``curve``.
        on_chunk: ``on_chunk(endpoint, frame, nbytes, wire_s)`` after each chunk of a shaped frame
            crossed the emulated link (a live sample of its rate).
        result_delay_ms: Emulated delay of a result on its way back to its client, ms (the
            propagation of the links between the sender and the source).
    """

    def __init__(self, context: zmq.Context, endpoint: str, shaper: LinkShaper | None = None,
                 on_sent: SentCallback | None = None,
                 on_failed: Callable[[Frame, str], None] | None = None, max_queue: int = 1000,
                 send_timeout_ms: int = 1000, curve: Any = None, peer: str = "",
                 on_chunk: ChunkCallback | None = None, result_delay_ms: float = 0.0) -> None:
        self.endpoint = endpoint
        self.result_delay_ms = result_delay_ms
        self.on_chunk = on_chunk
        self.shaper = shaper
        self.on_sent = on_sent
        self.on_failed = on_failed
        self._queue: queue.Queue[Frame | None] = queue.Queue(maxsize=max_queue)
        self.last_used = time.monotonic()
        self._pending = 0  # frames taken and not yet delivered or failed
        self._pending_lock = threading.Lock()
        self.in_progress: tuple[int, float] | None = None  # (bytes, monotonic start) of a chunk on the link
        self._socket = context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.LINGER, 1000)
        self._socket.setsockopt(zmq.SNDHWM, 1000)
        # queue only on a live connection: frames for a dead peer fail (and are answered) instead of
        # waiting in ZeroMQ's buffer for a process that may never come back
        self._socket.setsockopt(zmq.IMMEDIATE, 1)
        self._socket.setsockopt(zmq.SNDTIMEO, send_timeout_ms)
        try:
            if curve is not None:
                curve.connect_to(self._socket, peer)  # AdaptiveError when the peer has no key: nothing sent
            self._socket.connect(endpoint)
        except (AdaptiveError, zmq.ZMQError) as exc:  # no key, or not an endpoint ("tcp://x")
            self._socket.close(linger=0)
            raise AdaptiveError(f"cannot connect to {endpoint[:140]!r}: {exc}") from None
        # frames in propagation, by due time (the counter keeps equal times in order)
        self._flight: list[tuple[float, int, Frame | None, list[bytes], int, float, float | None]] = []
        self._count = itertools.count()
        self._arrived = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"out-{endpoint}", daemon=True)
        self._carrier = threading.Thread(target=self._carry, name=f"carry-{endpoint}", daemon=True)
        self._thread.start()
        self._carrier.start()

    def send(self, frame: Frame) -> bool:
        """Queue a frame; False if the queue is full (the caller answers the client)."""
        self.last_used = time.monotonic()
        with self._pending_lock:
            try:
                self._queue.put_nowait(frame)
            except queue.Full:
                return False
            self._pending += 1
            return True

    @property
    def idle(self) -> bool:
        """Every frame taken has been handed to ZeroMQ or failed."""
        with self._pending_lock:
            return self._pending == 0

    def _done(self, frames: int = 1) -> None:
        with self._pending_lock:
            self._pending -= frames

    def close(self, wait: bool = True) -> None:
        """Send what is queued, then close (``wait``: until the threads are done)."""
        self._queue.put(None)
        if wait:
            self._thread.join(timeout=10)
            self._carrier.join(timeout=10)

    def _run(self) -> None:
        """Take frames in order, pace them through the shaper, and put them in flight."""
        link_delay_s = self.shaper.delay_ms / 1e3 if self.shaper is not None else 0.0
        while True:
            frame = self._queue.get()
            if frame is None:  # closing: what is in flight still arrives, then the carrier stops
                self._put_in_flight(None, [], 0, 0.0, None, 0.0)
                return
            parts = encode_frame(frame)
            nbytes = sum(len(p) for p in parts)
            started = time.monotonic()
            # the shaper emulates the link to the next node; results and errors go to the client,
            # which sits with the first node, so they are not shaped
            shaped = self.shaper is not None and frame.kind == "work"
            wire_s = self._shape(frame, nbytes) if shaped else None
            back_s = self.result_delay_ms / 1e3 if frame.kind == "result" else 0.0
            self._put_in_flight(frame, parts, nbytes, started, wire_s, link_delay_s if shaped else back_s)

    def _put_in_flight(self, frame: Frame | None, parts: list[bytes], nbytes: int, started: float,
                       wire_s: float | None, delay_s: float) -> None:
        with self._arrived:
            # the close marker goes after everything already in flight
            due = time.monotonic() + delay_s if frame is not None else max(
                [f[0] for f in self._flight] + [time.monotonic()])
            heapq.heappush(self._flight, (due, next(self._count), frame, parts, nbytes, started, wire_s))
            self._arrived.notify()

    def _carry(self) -> None:
        """Hand each frame to ZeroMQ when its propagation delay has passed (the socket's only user).

        A thread of its own, so that the link delivers a frame on time while it already carries the
        next: a sender that is never idle does not hold back what is in flight.
        """
        while True:
            with self._arrived:
                while not self._flight or self._flight[0][0] > time.monotonic():
                    self._arrived.wait(self._flight[0][0] - time.monotonic() if self._flight else None)
                _, _, frame, parts, nbytes, started, wire_s = heapq.heappop(self._flight)
            if frame is None:
                break
            if not self._deliver(frame, parts, nbytes, started, wire_s):
                break
        self._socket.close()

    def _deliver(self, frame: Frame, parts: list[bytes], nbytes: int, started: float,
                 wire_s: float | None) -> bool:
        """Hand a frame to ZeroMQ; False if the link was asked to close while failing it."""
        try:
            self._socket.send_multipart(parts, copy=False)
        except zmq.ZMQError as exc:
            log.warning("cannot send to %s: %s", self.endpoint, exc)
            return self._fail([frame], f"cannot reach {self.endpoint}: {exc}")
        self._done()
        if self.on_sent is not None:
            self.on_sent(self.endpoint, frame, nbytes, time.monotonic() - started, wire_s)
        return True

    def _shape(self, frame: Frame, nbytes: int) -> float:
        """Pace ``nbytes`` through the shaper in chunks, reporting each; returns the wire time, s.

        Chunks make the link observable while a large activation crosses it, as a kernel's
        delivery-rate counters are on a real link: after a bandwidth drop the sender learns the new
        rate within one chunk's time, not when the whole tensor is through.
        """
        assert self.shaper is not None
        total = 0.0
        for offset in range(0, nbytes, CHUNK_BYTES):
            size = min(CHUNK_BYTES, nbytes - offset)
            self.in_progress = (size, time.monotonic())
            wire = self.shaper.acquire(size, delay=False)  # the propagation delay is _run's
            total += wire
            if self.on_chunk is not None:
                self.on_chunk(self.endpoint, frame, size, wire)
        self.in_progress = None
        return total

    def _fail(self, frames: list[Frame], reason: str) -> bool:
        """Fail ``frames`` and everything queued behind them; False if :meth:`close` was asked."""
        with self._arrived:
            flight, self._flight = sorted(self._flight), []
        stop = any(f[2] is None for f in flight)
        frames += [f[2] for f in flight if f[2] is not None]
        while not stop:
            try:
                queued = self._queue.get_nowait()
            except queue.Empty:
                break
            if queued is None:  # the pacer must still see it, to stop
                self._queue.put(None)
                stop = True
            else:
                frames.append(queued)
        self._done(len(frames))
        if self.on_failed is not None:
            for f in frames:
                self.on_failed(f, reason)
        return not stop


class Outbox:
    """Lazily created :class:`OutLink` per endpoint, sharing one shaper, callbacks and CURVE keys.

    At most ``max_links`` links; one idle for ``idle_s`` is closed (see the module docstring).
    """

    def __init__(self, context: zmq.Context, shaper: LinkShaper | None = None,
                 on_sent: SentCallback | None = None,
                 on_failed: Callable[[Frame, str], None] | None = None, curve: Any = None,
                 on_chunk: ChunkCallback | None = None, result_delay_ms: float = 0.0,
                 max_links: int = 32, idle_s: float = 30.0) -> None:
        self.context = context
        self.max_links = max_links
        self.idle_s = idle_s
        self.refused = 0  # frames refused because every link was busy at the bound
        self.result_delay_ms = result_delay_ms
        self.curve = curve
        self.on_chunk = on_chunk
        self.shaper = shaper
        self.on_sent = on_sent
        self.on_failed = on_failed
        self._links: dict[str, OutLink] = {}
        self._lock = threading.Lock()

    def send(self, endpoint: str, frame: Frame, peer: str = "") -> bool:
        """Queue ``frame`` for ``endpoint``, where ``peer`` (a node or client id) listens."""
        with self._lock:
            self._close_idle(time.monotonic())
            link = self._links.get(endpoint)
            if link is None:
                if len(self._links) >= self.max_links and not self._evict():
                    self.refused += 1
                    log.warning("refused a frame for %s: %d links open, none idle", endpoint[:140],
                                len(self._links))
                    return False
                try:
                    link = OutLink(self.context, endpoint, self.shaper, self.on_sent, self.on_failed,
                                   curve=self.curve, peer=peer, on_chunk=self.on_chunk,
                                   result_delay_ms=self.result_delay_ms)
                except AdaptiveError as exc:
                    log.warning("cannot open a link to %s: %s", endpoint, exc)
                    return False
                self._links[endpoint] = link
        return link.send(frame)

    def sweep(self) -> None:
        """Close the links idle for ``idle_s`` (call it now and then; :meth:`send` does too)."""
        with self._lock:
            self._close_idle(time.monotonic())

    def _close_idle(self, now: float) -> None:
        """Close links idle for ``idle_s`` (with the lock held; they finish on their own threads)."""
        for endpoint, link in list(self._links.items()):
            if now - link.last_used > self.idle_s and link.idle:
                del self._links[endpoint]
                link.close(wait=False)

    def _evict(self) -> bool:
        """Close the least recently used idle link to make room; False if none is idle."""
        idle = [(link.last_used, ep) for ep, link in self._links.items() if link.idle]
        if not idle:
            return False
        endpoint = min(idle)[1]
        self._links.pop(endpoint).close(wait=False)
        return True

    @property
    def open_links(self) -> int:
        """Links open now."""
        with self._lock:
            return len(self._links)

    def in_progress(self, endpoint: str) -> tuple[int, float] | None:
        """``(bytes, monotonic start)`` of the chunk crossing the emulated link to ``endpoint`` now."""
        with self._lock:
            link = self._links.get(endpoint)
        return link.in_progress if link is not None else None

    def close(self) -> None:
        """Close every link."""
        with self._lock:
            links, self._links = list(self._links.values()), {}
        for link in links:
            link.close()
