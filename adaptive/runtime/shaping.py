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

    The link is a fluid queue: every sender's bytes join it in order and it carries them at the
    rate in force at each moment, so a rate change acts at once on the bytes already waiting (a
    message queued at 0.1 Mbit/s does not keep the link at 0.1 Mbit/s once a trace steps back up).

    Args:
        rate_mbps: Link rate, Mbit/s (> 0).
        delay_ms: One-way propagation delay added to every message, ms (≥ 0).
        burst_bytes: Bytes that may pass at once after an idle period; none by default: every byte
            takes its time at the rate, as the latency model charges it. (A 4,000-byte burst, the
            default until 2026-12-03, carried a 4 KB activation in 2 ms instead of 82 at 0.4
            Mbit/s: ``test_an_idle_link_lends_no_burst_by_default`` fails with it.)
    """

    POLL_S = 0.02  # a waiting sender looks at the rate this often

    def __init__(self, rate_mbps: float, delay_ms: float = 0.0, burst_bytes: int = 0) -> None:
        self._lock = threading.Lock()
        self.set_rate(rate_mbps)
        self.delay_ms = delay_ms
        self.burst_bytes = burst_bytes
        self._queued = 0.0  # bits ever handed to the link
        self._carried = 0.0  # bits the link has carried (ahead of _queued by at most a burst)
        self._at = time.monotonic()

    @property
    def rate_mbps(self) -> float:
        """Current rate, Mbit/s."""
        return self._rate

    def set_rate(self, rate_mbps: float) -> None:
        """Change the rate, for the bytes waiting too."""
        if not rate_mbps > 0:
            raise ValueError(f"link rate must be > 0 Mbit/s, found {rate_mbps}")
        with self._lock:
            if hasattr(self, "_at"):
                self._advance(time.monotonic())
            self._rate = float(rate_mbps)

    def _advance(self, now: float) -> None:
        """Carry bits at the current rate up to ``now`` (the caller holds the lock)."""
        idle_credit = self.burst_bytes * 8  # an idle link lends up to one burst
        self._carried = min(self._carried + (now - self._at) * self._rate * 1e6, self._queued + idle_credit)
        self._at = now

    def backlog_bits(self) -> float:
        """Bits handed to the link and not yet carried."""
        with self._lock:
            self._advance(time.monotonic())
            return max(self._queued - self._carried, 0.0)

    def acquire(self, nbytes: int, delay: bool = True) -> float:
        """Block until ``nbytes`` have crossed the link, plus the delay.

        With ``delay`` False the delay is left to the caller: a sender that pipelines its messages
        applies it itself (:class:`adaptive.runtime.links.OutLink`).

        Returns the message's wire time: the seconds its bytes occupy the link at the rate in
        force when it is through, excluding queueing behind earlier messages and the delay. That is
        what a link-level delivery-rate estimate (the kernel's ``tcp_info`` on a real link) sees,
        so the runtime reports it to the monitor as the passive bandwidth sample of an emulated link.
        """
        bits = nbytes * 8
        with self._lock:
            self._advance(time.monotonic())
            self._queued += bits
            target = self._queued
        while True:
            with self._lock:
                self._advance(time.monotonic())
                remaining, rate = target - self._carried, self._rate
            if remaining <= 0:
                break
            time.sleep(min(remaining / (rate * 1e6), self.POLL_S))
        if delay and self.delay_ms > 0:
            time.sleep(self.delay_ms / 1e3)
        return bits / (rate * 1e6)

    def __call__(self, nbytes: int) -> None:
        """Same as :meth:`acquire` (so a shaper is a plain ``limiter(nbytes)`` callable)."""
        self.acquire(nbytes)
