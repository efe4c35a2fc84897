"""Real shaped links on one Linux machine: a network namespace, a veth pair and a ``tbf`` qdisc.

For experiments and tests that need traffic to cross an actual rate-limited link (``netem`` is not
needed). Requires root and iproute2. The namespace side gets ``peer_ip``; the root side ``host_ip``.
Both directions are shaped to the same rate, which :meth:`ShapedLink.set_rate` changes live (a
bandwidth trace can be replayed by calling it once per step)::

    with ShapedLink("adp-test", rate_mbps=50) as link:
        link.popen(["python", "-m", "adaptive", "profile", "link-server", "--bind", link.peer_ip])
        ...
        link.set_rate(10)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

__all__ = ["ShapedLink", "netns_available"]


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
    """

    def __init__(self, name: str, rate_mbps: float, subnet: str = "10.231.7", delay_ms: float = 50.0) -> None:
        if len(name) > 10:
            raise ValueError(f"namespace name must be at most 10 characters, found '{name}'")
        self.name = name
        self.rate_mbps = rate_mbps
        self.delay_ms = delay_ms
        self.host_if, self.peer_if = f"{name}-h", f"{name}-p"
        self.host_ip, self.peer_ip = f"{subnet}.1", f"{subnet}.2"
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
        self.set_rate(self.rate_mbps, add=True)
        return self

    def set_rate(self, rate_mbps: float, *, add: bool = False) -> None:
        """Change the rate of both directions, Mbit/s."""
        if not rate_mbps > 0:
            raise ValueError(f"rate must be > 0 Mbit/s, found {rate_mbps}")
        self.rate_mbps = rate_mbps
        burst = max(3000, int(rate_mbps * 1e6 / 8 / 250))  # one 4 ms tick of tokens, >= 2 MTU
        spec = ["tbf", "rate", f"{rate_mbps}mbit", "burst", str(burst), "latency", f"{self.delay_ms}ms"]
        verb = "add" if add else "change"
        _run("tc", "qdisc", verb, "dev", self.host_if, "root", *spec)
        _run("ip", "netns", "exec", self.name, "tc", "qdisc", verb, "dev", self.peer_if, "root", *spec)

    def popen(self, cmd: Sequence[str], **kwargs: object) -> subprocess.Popen:
        """Start a process inside the namespace."""
        return subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kwargs)  # type: ignore[call-overload]

    def close(self) -> None:
        """Delete the namespace (which deletes the pair and the qdiscs)."""
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, check=False)
        self._up = False

    def __enter__(self) -> ShapedLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
