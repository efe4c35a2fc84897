"""Free TCP ports for one-machine clusters, chosen where the kernel will not hand them out itself.

A port found free by binding to port 0 comes from the kernel's ephemeral range, the same range it
uses for every other port-0 bind and every outgoing connection: between finding it and a child
process binding it, another socket may take it. Ports below that range are never given out
implicitly, so a port picked there and checked free stays free unless someone asks for it by
number.
"""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path

__all__ = ["free_port", "wait_port"]

_FLOOR = 10_000


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def free_port(host: str = "127.0.0.1", attempts: int = 200) -> int:
    """A TCP port on ``host`` that is free now and below the ephemeral range.

    Raises:
        OSError: No free port found in ``attempts`` tries.
    """
    top = _ephemeral_start()
    rng = random.SystemRandom()
    for _ in range(attempts):
        port = rng.randrange(_FLOOR, top) if top > _FLOOR + 100 else 0
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError(f"no free TCP port below {top} on {host}")


def wait_port(port: int, timeout_s: float = 10.0, host: str = "127.0.0.1") -> None:
    """Wait until something accepts connections on ``host:port``; ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s:g} s")
