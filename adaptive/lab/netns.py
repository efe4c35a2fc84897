"""Real shaped links on one Linux machine: a network namespace, a veth pair and a ``tbf`` qdisc.

For experiments and tests that need traffic to cross an actual rate-limited link (``netem`` is not
needed). Requires root and iproute2. The namespace side gets ``peer_ip``; the root side ``host_ip``.
Both directions are shaped to the same rate (or, with ``uplink_only``, only what leaves the
namespace), which :meth:`ShapedLink.set_rate` changes live; :class:`RateSchedule` replays a
schedule of rates on a link from a thread::

    with ShapedLink("adp-test", rate_mbps=50) as link:
        link.popen(["python", "-m", "adaptive", "profile", "link-server", "--bind", link.peer_ip,
                    "--allow", link.host_ip])
        ...
        link.set_rate(10)
"""

from __future__ import annotations

import bisect
import itertools
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence

__all__ = ["RateSchedule", "ShapedLink", "netns_available"]


def netns_available() -> bool:
    """Root with iproute2 and tc present (namespaces may still be refused by the sandbox)."""
    return os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("tc") is not None


def _run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise OSError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.returncode}")


class ShapedLink:
    """A namespace connected to the root namespace by a shaped veth pair.

    Args:
        name: Namespace name (also the prefix of the veth names; at most 10 characters).
        rate_mbps: Initial rate of both directions, Mbit/s.
        subnet: The /30 network of the pair, as its first three octets and base (``"10.231.7"``).
        delay_ms: Queueing limit of the token bucket (``latency`` of tbf), ms.
        uplink_only: Shape only the traffic leaving the namespace (a device's uplink); what enters
            it crosses the pair unshaped.
        default_route: Route everything from the namespace through the pair, so that its
            processes reach every address of the root namespace (a broker, other nodes).
        local_subnet: If given (first three octets of a /30, like ``subnet``), a second, unshaped
            pair: its root-namespace end (:attr:`local_ip`) stands for processes that would run
            on the same device as the namespace's (a client beside its edge node), and its
            namespace end (:attr:`local_peer_ip`) is where they reach the namespace's; their
            traffic does not cross the shaped link.
    """

    def __init__(self, name: str, rate_mbps: float, subnet: str = "10.231.7", delay_ms: float = 50.0,
                 uplink_only: bool = False, default_route: bool = False,
                 local_subnet: str | None = None) -> None:
        if len(name) > 10:
            raise ValueError(f"namespace name must be at most 10 characters, found '{name}'")
        self.name = name
        self.rate_mbps = rate_mbps
        self.delay_ms = delay_ms
        self.uplink_only = uplink_only
        self.default_route = default_route
        self.host_if, self.peer_if = f"{name}-h", f"{name}-p"
        self.host_ip, self.peer_ip = f"{subnet}.1", f"{subnet}.2"
        self.local_subnet = local_subnet
        self.local_ip = f"{local_subnet}.1" if local_subnet else None
        self.local_peer_ip = f"{local_subnet}.2" if local_subnet else None
        self.local_if = f"{name}-l"
        self._up = False

    def start(self) -> ShapedLink:
        """Create the namespace, the pair and the qdiscs."""
        self.close()  # leftovers of an interrupted run
        _run("ip", "netns", "add", self.name)
        self._up = True
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if)
        _run("ip", "link", "set", self.peer_if, "netns", self.name)
        _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        _run("ip", "netns", "exec", self.name, "ip", "addr", "add", f"{self.peer_ip}/30", "dev", self.peer_if)
        _run("ip", "netns", "exec", self.name, "ip", "link", "set", self.peer_if, "up")
        _run("ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up")
        # One segment per packet: tbf never sends a packet larger than its bucket, and a GSO packet
        # queued under a high rate's bucket would wait forever behind a lower rate's smaller one.
        if not self.uplink_only:
            _run("ip", "link", "set", self.host_if, "gso_max_segs", "1")
        _run("ip", "netns", "exec", self.name, "ip", "link", "set", self.peer_if, "gso_max_segs", "1")
        if self.default_route:
            _run("ip", "netns", "exec", self.name, "ip", "route", "add", "default", "via", self.host_ip)
        if self.local_subnet:
            inner = f"{self.name}-m"
            _run("ip", "link", "add", self.local_if, "type", "veth", "peer", "name", inner)
            _run("ip", "link", "set", inner, "netns", self.name)
            _run("ip", "addr", "add", f"{self.local_ip}/30", "dev", self.local_if)
            _run("ip", "link", "set", self.local_if, "up")
            _run("ip", "netns", "exec", self.name, "ip", "addr", "add", f"{self.local_peer_ip}/30",
                 "dev", inner)
            _run("ip", "netns", "exec", self.name, "ip", "link", "set", inner, "up")
        self.set_rate(self.rate_mbps, add=True)
        return self

    def set_rate(self, rate_mbps: float, *, add: bool = False) -> None:
        """Change the rate of the shaped directions, Mbit/s."""
        if not rate_mbps > 0:
            raise ValueError(f"rate must be > 0 Mbit/s, found {rate_mbps}")
        self.rate_mbps = rate_mbps
        burst = max(3000, int(rate_mbps * 1e6 / 8 / 250))  # one 4 ms tick of tokens, >= 2 MTU
        spec = ["tbf", "rate", f"{rate_mbps}mbit", "burst", str(burst), "latency", f"{self.delay_ms}ms"]
        verb = "add" if add else "change"
        if not self.uplink_only:
            _run("tc", "qdisc", verb, "dev", self.host_if, "root", *spec)
        _run("ip", "netns", "exec", self.name, "tc", "qdisc", verb, "dev", self.peer_if, "root", *spec)

    def popen(self, cmd: Sequence[str], **kwargs: object) -> subprocess.Popen:
        """Start a process inside the namespace."""
        return subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kwargs)  # type: ignore[call-overload]

    def close(self) -> None:
        """Delete the namespace (which deletes the pair and the qdiscs)."""
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, check=False)
        if self.local_subnet:
            subprocess.run(["ip", "link", "del", self.local_if], capture_output=True, check=False)
        self._up = False

    def __enter__(self) -> ShapedLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class RateSchedule:
    """Replays ``[(time_s, Mbit/s), ...]`` (times increasing from 0) on a link, from a thread.

    Each rate holds from its time on, counted from :meth:`start`; the link changes only when the
    rate does (one ``tc qdisc change``, a few ms). :meth:`stop` ends the replay.
    """

    def __init__(self, link: ShapedLink, steps: Sequence[tuple[float, float]]) -> None:
        if not steps or steps[0][0] != 0 or any(b[0] <= a[0] for a, b in itertools.pairwise(steps)):
            raise ValueError("steps must be (time_s, mbps) pairs with times increasing from 0")
        self.link = link
        self.times = [float(t) for t, _ in steps]
        self.rates = [float(r) for _, r in steps]
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rate_at(self, t: float) -> float:
        """The schedule's rate ``t`` s after the start, Mbit/s."""
        return self.rates[max(bisect.bisect_right(self.times, t) - 1, 0)]

    def start(self, t0: float | None = None) -> RateSchedule:
        """Replay from ``t0`` (``time.monotonic()``; default now)."""
        self.stop()
        self._stop.clear()
        t0 = time.monotonic() if t0 is None else t0
        self._thread = threading.Thread(target=self._run, args=(t0,), daemon=True, name="rate-schedule")
        self._thread.start()
        return self

    def _run(self, t0: float) -> None:
        current = self.link.rate_mbps  # a link already at the first rate is not changed again
        i = 0
        while not self._stop.is_set():
            rate = self.rates[i]
            if rate != current:
                try:
                    self.link.set_rate(rate)
                    current = rate
                except (OSError, ValueError) as exc:  # keep replaying; the caller sees the errors
                    self.errors.append(str(exc))
            if i + 1 >= len(self.times):
                return
            self._stop.wait(max(t0 + self.times[i + 1] - time.monotonic(), 0.0))
            i += 1

    def stop(self) -> None:
        """End the replay (the link keeps its last rate)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
