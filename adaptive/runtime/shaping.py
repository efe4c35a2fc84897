"""Application-level link emulation: a token bucket with a live-changeable rate, plus delay.

For clusters emulated on one machine (no root, no qdisc). A sender calls :meth:`LinkShaper.acquire`
with the message size before sending; it blocks for the time the bytes need at the current rate.
One shaper per destination and direction, shared by everything that sends there (activations and
the monitor's probes), so the emulated link is the same for data and measurement.
"""

from __future__ import annotations

import threading
import time

__all__ = ["LinkShaper"]


class LinkShaper:
    """A FIFO link of ``rate_mbps`` with a burst allowance and a fixed one-way delay.

    Args:
        rate_mbps: Link rate, Mbit/s (> 0).
        delay_ms: One-way propagation delay added to every message, ms (≥ 0).
        burst_bytes: Bytes that may pass at once after an idle period.
    """

    def __init__(self, rate_mbps: float, delay_ms: float = 0.0, burst_bytes: int = 4_000) -> None:
        self._lock = threading.Lock()
        self.set_rate(rate_mbps)
        self.delay_ms = delay_ms
        self.burst_bytes = burst_bytes
        self._next_free = time.monotonic()  # when the link finishes what was queued before

    @property
    def rate_mbps(self) -> float:
        """Current rate, Mbit/s."""
        return self._rate

    def set_rate(self, rate_mbps: float) -> None:
        """Change the rate; messages already waiting finish at the old one."""
        if not rate_mbps > 0:
            raise ValueError(f"link rate must be > 0 Mbit/s, found {rate_mbps}")
        with self._lock:
            self._rate = float(rate_mbps)

    def acquire(self, nbytes: int) -> float:
        """Block until ``nbytes`` have crossed the link (plus the delay).

        Returns the message's wire time: the seconds its bytes occupy the link at the rate in
        force, excluding queueing behind earlier messages and the delay. That is what a link-level
        delivery-rate estimate (the kernel's ``tcp_info`` on a real link) sees, so the runtime
        reports it to the monitor as the passive bandwidth sample of an emulated link.
        """
        start = time.monotonic()
        with self._lock:
            duration = nbytes * 8 / (self._rate * 1e6)
            credit = self.burst_bytes * 8 / (self._rate * 1e6)
            begin = max(self._next_free, start - credit)  # an idle link lends up to one burst
            self._next_free = begin + duration
            done = self._next_free + self.delay_ms / 1e3
        wait = done - start
        if wait > 0:
            time.sleep(wait)
        return duration

    def __call__(self, nbytes: int) -> None:
        """Same as :meth:`acquire` (so a shaper is a plain ``limiter(nbytes)`` callable)."""
        self.acquire(nbytes)
