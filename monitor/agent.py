"""The monitor agent: samples resources and links, publishes v1 telemetry over MQTT.

Threads: the publishing loop (one sample every ``interval_s``), the probe loop (each peer every
``probe_interval_s``), paho's network thread, and the probe sink's accept thread. Construction is
cheap; :meth:`MonitorAgent.start` opens sockets and starts threads; :meth:`MonitorAgent.close`
publishes a retained ``offline`` status and stops everything.
"""

from __future__ import annotations

import logging
import socket
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from adaptive.protocol.messages import LinkEstimate, Message, Status, Telemetry, status_topic, telemetry_topic
from monitor.probe import ProbeClient, ProbeError, ProbeServer, host_addresses
from monitor.sampler import PsutilSampler, ResourceSample, Sampler, passive_rates
from monitor.transport import BrokerAddress, MqttTransport

__all__ = ["AgentConfig", "MonitorAgent"]

log = logging.getLogger(__name__)

MIN_PROBE_MS = 10.0  # shorter transfers are too short to time reliably
PROBE_FLOOR_MS = 6 * MIN_PROBE_MS  # a probe lasts this long at the estimated rate, well past a shaper's burst
FIRST_PROBE_BYTES = 16_000  # on a link with no estimate yet (65 ms at 2 Mbit/s)
PAUSE_INTERVALS = 4  # longest wait between two probes of a peer, in probe intervals


@dataclass(frozen=True)
class AgentConfig:
    """Configuration of one agent.

    Attributes:
        node: This node's id.
        cluster: Cluster id (topic prefix ``adaptive/<cluster>/``).
        interval_s: Telemetry period, s (> 0).
        peers: Peer id → ``(host, probe port)`` to probe.
        probe_port: Port of this node's probe sink (0: pick a free one; None: no sink).
        probe_interval_s: Period between probes of one peer, s.
        probe_bytes: Largest probe transfer, bytes. The reported bandwidth is the median of the
            last three probes, which rejects single outliers (a probe over 2x away from it
            restarts the window: a step change).
        probe_max_share: Cap on the share of a link's estimated capacity that probing may use
            (averaged over time: a probe bigger than one interval's share delays the next probe
            of that peer), in (0, 1]. A peer is not probed while the node's
            own transfers to it measure the link (a passive sample within the last interval):
            on a slow link a probe's bytes would queue ahead of the data it measures.
        device: Device profile name announced in the status.
        accelerator: ``cpu`` or ``gpu``.
        data_endpoint: Runtime data endpoint announced in the status (may be empty).
        buffer_size: Telemetry messages kept while the broker is away.
        passive: Also read kernel delivery-rate estimates for connections to peers.
        probe_bind: Address the probe sink binds.
        probe_allow: Hosts that may probe this node, besides this machine and ``peers``; None lets
            anyone who reaches the port probe it.
        probe_max_bytes: Largest transfer the sink takes, bytes.
    """

    node: str
    cluster: str = "default"
    interval_s: float = 1.0
    peers: dict[str, tuple[str, int]] = field(default_factory=dict)
    probe_port: int | None = 7300
    probe_interval_s: float = 10.0
    probe_bytes: int = 1_000_000
    probe_max_share: float = 0.05
    device: str = ""
    accelerator: str = "cpu"
    data_endpoint: str = ""
    buffer_size: int = 600
    passive: bool = True
    probe_bind: str = "0.0.0.0"
    probe_allow: tuple[str, ...] | None = ()
    probe_max_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        if not self.interval_s > 0 or not self.probe_interval_s > 0:
            raise ValueError("interval and probe interval must be > 0 s")
        if not 0 < self.probe_max_share <= 1:
            raise ValueError(f"probe_max_share must be in (0, 1], found {self.probe_max_share}")
        if self.probe_bytes < 1500:
            raise ValueError(f"probe_bytes must be >= 1500, found {self.probe_bytes}")


class MonitorAgent:
    """Samples this node and publishes telemetry; probes its peers.

    Args:
        config: What to sample and where to publish.
        broker: The MQTT broker.
        sampler: Resource sampler (default :class:`PsutilSampler`).
        transport: Pre-built transport (tests); default builds one for ``broker``.
        limiters: Per peer, a ``limiter(nbytes)`` pacing probe traffic (application-level link
            emulation in one-machine clusters; shared with the runtime's data traffic).
        ca_file: CA bundle for an ``mqtts://`` broker.
        keepalive_s: MQTT keep-alive, s: the broker publishes the Last Will (``offline``) after
            1.5 times this without a word from the agent.
        known_hosts: Called when someone connects to the probe sink: more hosts allowed to probe
            (e.g. those of the nodes that announced themselves on the broker).
    """

    def __init__(self, config: AgentConfig, broker: BrokerAddress, *, sampler: Sampler | None = None,
                 transport: MqttTransport | None = None,
                 limiters: dict[str, Callable[[int], object]] | None = None, ca_file: str | None = None,
                 keepalive_s: int = 10, known_hosts: Callable[[], Iterable[str]] | None = None) -> None:
        self.config = config
        self.known_hosts = known_hosts
        self.sampler = sampler or PsutilSampler()
        self.limiters = dict(limiters or {})
        self._topic = telemetry_topic(config.cluster, config.node)
        self._status_topic = status_topic(config.cluster, config.node)
        self._links: dict[str, LinkEstimate] = {p: LinkEstimate() for p in config.peers}
        self._links_lock = threading.Lock()
        self._recent: dict[str, deque[float]] = {}  # last probe rates: the median is reported
        self._passive_at: dict[str, float] = {}  # when observe_transfer last updated a peer
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sink: ProbeServer | None = None
        self._seq = 0
        self._previous: ResourceSample | None = None
        self._memory_mb = 0.0
        self.transport = transport or MqttTransport(
            broker, client_id=f"monitor-{config.cluster}-{config.node}",
            on_connect_messages=lambda: [self._status("online")], buffer_size=config.buffer_size,
            ca_file=ca_file, keepalive_s=keepalive_s)

    # ------------------------------------------------------------------ lifecycle

    def start(self, wait_s: float | None = 10.0) -> MonitorAgent:
        """Start the probe sink, connect to the broker and start the loops."""
        cfg = self.config
        if cfg.probe_port is not None:
            allow = None
            if cfg.probe_allow is not None:
                fixed = host_addresses(["127.0.0.1", "::1", socket.gethostname(), *cfg.probe_allow,
                                        *(host for host, _ in cfg.peers.values())])
                more = self.known_hosts

                def allow(ip: str) -> bool:
                    return ip in fixed or (more is not None and ip in host_addresses(more()))

            self._sink = ProbeServer(cfg.probe_bind, cfg.probe_port, max_bytes=cfg.probe_max_bytes,
                                     allow=allow).start()
        self._previous = self.sampler.sample()
        self._memory_mb = self._previous.total_mb
        self.transport.will = self._status("offline")  # set before connecting, as paho requires
        try:
            self.transport.start(wait_s)
        except ConnectionError:
            if self._sink is not None:
                self._sink.close()
            raise
        for target, name in ((self._publish_loop, "telemetry"), (self._probe_loop, "probes")):
            t = threading.Thread(target=target, name=f"monitor-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def close(self) -> None:
        """Publish ``offline`` (retained), disconnect and stop the threads."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self.transport.close(final=[self._status("offline")])
        if self._sink is not None:
            self._sink.close()

    def __enter__(self) -> MonitorAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sink(self) -> ProbeServer | None:
        """The probe sink (after :meth:`start`; None without one)."""
        return self._sink

    @property
    def probe_port(self) -> int | None:
        """Port the probe sink listens on (after :meth:`start`)."""
        return self._sink.port if self._sink else None

    # ------------------------------------------------------------------ messages

    def _status(self, state: str) -> Message:
        sink = self._sink
        probe = f"{socket.gethostname()}:{sink.port}" if sink else ""
        status = Status(node=self.config.node, state=state, ts=time.time(), device=self.config.device,
                        accelerator=self.config.accelerator, memory_mb=round(self._memory_mb, 1),
                        data_endpoint=self.config.data_endpoint, probe_endpoint=probe)
        return Message(self._status_topic, status.encode(), qos=1, retain=True)

    def telemetry(self) -> Telemetry:
        """Take a sample and build the telemetry record (rates since the previous sample)."""
        now = self.sampler.sample()
        prev = self._previous or now
        dt = max(now.ts - prev.ts, 1e-6)
        tx = max(now.net_tx_bytes - prev.net_tx_bytes, 0) * 8 / dt
        rx = max(now.net_rx_bytes - prev.net_rx_bytes, 0) * 8 / dt
        self._previous = now
        with self._links_lock:
            links = dict(self._links)
        record = Telemetry(
            node=self.config.node, ts=round(now.ts, 3), seq=self._seq,
            cpu_percent=now.cpu_percent, per_core=now.per_core, load1=round(now.load1, 3),
            total_mb=round(now.total_mb, 1), available_mb=round(now.available_mb, 1),
            mem_percent=now.mem_percent, tx_bps=round(tx, 1), rx_bps=round(rx, 1), links=links,
            swap_total_mb=round(now.swap_total_mb, 1), swap_used_mb=round(now.swap_used_mb, 1),
            temp_c=now.temp_c, power_w=now.power_w)
        self._seq += 1
        return record

    # ------------------------------------------------------------------ loops

    def _publish_loop(self) -> None:
        period = self.config.interval_s
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                record = self.telemetry()
                self.transport.publish(Message(self._topic, record.encode(), qos=1))
            except (OSError, ValueError) as exc:
                log.warning("sample failed, skipped: %s", exc)
            next_at += period
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind (suspend, overload): realign instead of bursting
                next_at, delay = time.monotonic(), 0.0
            self._stop.wait(delay)

    def _probe_loop(self) -> None:
        peers = self.config.peers
        if not peers:
            return
        spacing = self.config.probe_interval_s / len(peers)  # spread peers over the interval
        due: dict[str, float] = {}  # a peer is probed again once its last round's bytes are paid for
        while not self._stop.is_set():
            for peer, (host, port) in peers.items():
                if self._stop.is_set():
                    return
                if time.monotonic() >= due.get(peer, 0.0) and not self._passive_fresh(peer):
                    started, before = time.monotonic(), self._capacity(peer)
                    sent = self._probe(peer, host, port)
                    # the faster of the capacities before and after: a round is not held against
                    # a link that changed under it (sized for 30 Mbit/s, it met 2 Mbit/s)
                    known = [c for c in (before, self._capacity(peer)) if c]
                    due[peer] = started + self.probe_pause(sent, max(known, default=None))
                self._stop.wait(spacing)

    def probe_pause(self, nbytes: int, capacity_mbps: float | None) -> float:
        """Seconds before a peer may be probed again after a round of ``nbytes``.

        ``capacity_mbps`` is the link's estimated capacity (None: unknown, no pause). Keeps
        probing under ``probe_max_share`` of that capacity: on a slow link the smallest probe
        worth timing is more than one interval's share, so rounds space out instead of shrinking
        below what can be timed. The pause is at most
        ``PAUSE_INTERVALS`` probe intervals, so that a link that got faster is seen soon (a
        probe sized for a link that has just got slower may take more than its share, once).
        """
        if not capacity_mbps or nbytes <= 0:
            return 0.0
        pause = nbytes * 8 / (self.config.probe_max_share * capacity_mbps * 1e6)
        return min(pause, PAUSE_INTERVALS * self.config.probe_interval_s)

    def _passive_fresh(self, peer: str) -> bool:
        """The node's own traffic measured the link to ``peer`` within the last probe interval."""
        with self._links_lock:
            return time.time() - self._passive_at.get(peer, 0.0) < self.config.probe_interval_s

    def observe_transfer(self, peer: str, nbytes: int, seconds: float, link_level: bool = False) -> None:
        """Record a transfer the node made to ``peer`` (e.g. an activation) as a passive estimate.

        Args:
            peer: Destination node.
            nbytes: Bytes sent.
            seconds: Time they took.
            link_level: ``seconds`` is the link's own wire time (an emulated link's shaper, a
                NIC counter), free of timing noise; otherwise transfers under ``MIN_PROBE_MS``
                are too short to time and are ignored. Transfers under 1500 bytes always are.
        """
        if nbytes < 1500 or seconds <= 0 or (not link_level and seconds * 1e3 < MIN_PROBE_MS):
            return
        with self._links_lock:
            old = self._links.get(peer, LinkEstimate())
            self._links[peer] = LinkEstimate(old.bandwidth_mbps, old.rtt_ms, old.measured_at,
                                             round(nbytes * 8 / seconds / 1e6, 3))
            self._passive_at[peer] = time.time()

    def uplink(self, peer: str, passive_horizon_s: float = 1.0) -> tuple[float | None, float | None]:
        """The freshest estimate of the link to ``peer``: ``(Mbit/s, Unix time measured)``.

        The passive estimate (the node's own transfers) while it is at most ``passive_horizon_s``
        old, else the newer of it and the probes' estimate; ``(None, None)`` before either exists.
        A source node decides each request's plan on this. A probe is stamped when it ends, but it
        measured the link over its whole duration, which can reach back to before a change a
        newer passive sample has already seen; so while the node is sending, its own transfers
        speak for the link.
        """
        with self._links_lock:
            link = self._links.get(peer, LinkEstimate())
            passive_at = self._passive_at.get(peer)
        if link.passive_mbps and passive_at is not None and time.time() - passive_at <= passive_horizon_s:
            return link.passive_mbps, passive_at
        candidates = [(at, mbps) for mbps, at in ((link.passive_mbps, passive_at),
                                                   (link.bandwidth_mbps, link.measured_at))
                      if mbps and at is not None]
        if not candidates:
            return None, None
        at, mbps = max(candidates)
        return mbps, at

    def _capacity(self, peer: str) -> float | None:
        """The link's newest capacity estimate, Mbit/s.

        A passive one from the last two probe intervals, else the probes'.
        """
        with self._links_lock:
            link = self._links.get(peer, LinkEstimate())
            recent_passive = time.time() - self._passive_at.get(peer, 0.0) < 2 * self.config.probe_interval_s
            return (link.passive_mbps if recent_passive else None) or link.bandwidth_mbps

    def probe_size(self, peer: str) -> int:
        """Bytes for the next probe of ``peer``.

        One interval's ``probe_max_share`` of its capacity, but at least ``PROBE_FLOOR_MS`` of
        transfer at that capacity (a shorter probe rides a shaper's burst or the clock's noise;
        :meth:`probe_pause` then spaces the rounds out), up to ``probe_bytes``. On an unknown
        link probing starts at 16 KB. A probe too short to time is resent bigger within the same
        round (see :meth:`_probe`).
        """
        est = self._capacity(peer)
        if not est:
            return min(self.config.probe_bytes, FIRST_PROBE_BYTES)
        budget = self.config.probe_max_share * est * 1e6 / 8 * self.config.probe_interval_s
        floor = est * 1e6 / 8 * PROBE_FLOOR_MS / 1e3
        return int(max(1500, min(self.config.probe_bytes, max(budget, floor))))

    def _probe(self, peer: str, host: str, port: int) -> int:
        """One probe round of ``peer``; updates its estimate and returns the payload bytes sent."""
        limit = self.config.probe_bytes
        sent = 0
        with self._links_lock:  # the round starts where the previous one ended
            started = self._links.get(peer, LinkEstimate()).measured_at or time.time()
        try:
            with ProbeClient(host, port, timeout_s=max(5.0, self.config.probe_interval_s),
                             limiter=self.limiters.get(peer)) as client:
                rtt = min(client.ping() for _ in range(3))
                size = self.probe_size(peer)
                sent += size
                result = client.transfer(size)
                for _ in range(3):  # too short to time: the link got faster; retry bigger at once
                    if result.receive_ms >= MIN_PROBE_MS or result.nbytes >= limit:
                        break
                    grow = min(16.0, max(2.0, 2 * MIN_PROBE_MS / max(result.receive_ms, 0.1)))
                    size = min(int(result.nbytes * grow), limit)
                    sent += size
                    result = client.transfer(size)
        except ProbeError as exc:
            log.info("probe of %s failed: %s", peer, exc)
            return sent
        rate = result.rate_mbps
        too_short = rate != rate or (result.receive_ms < MIN_PROBE_MS and result.nbytes < limit)
        if too_short:  # still too fast to time (or riding a shaper's burst): keep the old value
            rate = None
        passive = None
        if self.config.passive and peer not in self.limiters:  # the kernel cannot see an emulated link
            passive = passive_rates({peer: host}).get(peer, (None, None))[0]
        with self._links_lock:
            old = self._links.get(peer, LinkEstimate())
            if self._passive_at.get(peer, 0.0) >= started:
                # a transfer observed during this round: traffic is flowing, and its own rate beats a
                # probe competing with it (and ss's view); older observations are stale, dropped
                passive = old.passive_mbps
            recent = self._recent.setdefault(peer, deque(maxlen=3))
            if rate:
                if recent and not 0.5 <= rate / statistics.median(recent) <= 2.0:
                    recent.clear()  # a step change, not noise: report it now, not two probes later
                recent.append(rate)
            bandwidth = statistics.median(recent) if recent else old.bandwidth_mbps
            self._links[peer] = LinkEstimate(
                bandwidth_mbps=round(bandwidth, 3) if bandwidth else None,
                rtt_ms=round(rtt, 3), measured_at=round(time.time(), 3),
                passive_mbps=round(passive, 3) if passive else None)
        return sent
