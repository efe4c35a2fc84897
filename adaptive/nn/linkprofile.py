"""Fit a device's link coefficients (seed 000 Eq. 4, Sec. IV-B) from real socket transfers.

``T_FP`` is half the median round trip of a header-only ping; ``Q0`` and ``Q1`` come from a
least-squares fit of the sink's first-to-last-byte reception time over payload sizes (20 sizes
by default, log-spaced). No torch needed.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from monitor.probe import ProbeClient

__all__ = ["LinkFit", "default_sizes", "measure_link"]


@dataclass(frozen=True)
class LinkFit:
    """Fitted link coefficients and the quality of the fit.

    Attributes:
        first_packet_ms: T_FP, half the median ping round trip, ms.
        per_kb_ms: Q0, ms per KB (10^3 bytes) of reception.
        offset_ms: Q1, ms.
        effective_mbps: ``8 / Q0``: the rate the fit implies, Mbit/s.
        mape_pct: MAPE of the fitted reception time over the measured medians, %.
        sizes_bytes: Payload sizes measured.
        receive_ms: Median reception time per size, ms.
    """

    first_packet_ms: float
    per_kb_ms: float
    offset_ms: float
    effective_mbps: float
    mape_pct: float
    sizes_bytes: tuple[int, ...]
    receive_ms: tuple[float, ...]

    def link_section(self, ref_bandwidth_mbps: float | None = None, mtu_bytes: int = 1500) -> dict:
        """The ``link`` mapping of an ``adaptive.device/v1`` profile."""
        ref = ref_bandwidth_mbps or self.effective_mbps
        return {"first_packet_ms": round(self.first_packet_ms, 6),
                "per_kb_ms": round(self.per_kb_ms, 9), "offset_ms": round(self.offset_ms, 6),
                "ref_bandwidth_mbps": round(float(ref), 3), "mtu_bytes": mtu_bytes}


def default_sizes(count: int = 20, smallest: int = 1_500, largest: int = 4_000_000) -> list[int]:
    """``count`` log-spaced payload sizes (1 packet up to a few MB of activations)."""
    return sorted({int(x) for x in np.geomspace(smallest, largest, count)})


def measure_link(host: str, port: int, sizes: Sequence[int] | None = None, repeats: int = 7,
                 pings: int = 50) -> LinkFit:
    """Measure the link to a probe sink and fit T_FP, Q0, Q1."""
    sizes = list(sizes or default_sizes())
    with ProbeClient(host, port) as client:
        for _ in range(3):
            client.ping()
        rtt = statistics.median(client.ping() for _ in range(pings))
        medians = []
        for n in sizes:
            client.transfer(n)  # warm-up
            medians.append(statistics.median(client.transfer(n).receive_ms for _ in range(repeats)))
    kb = np.asarray(sizes, dtype=float) / 1e3
    ms = np.asarray(medians)
    A = np.column_stack([kb, np.ones_like(kb)])
    (q0, q1), *_ = np.linalg.lstsq(A, ms, rcond=None)
    q0 = max(float(q0), 1e-9)
    fitted = q0 * kb + q1
    big = ms > 0.05  # relative error is meaningless for sub-50 µs single-read transfers
    mape = float(np.mean(np.abs(fitted[big] - ms[big]) / ms[big]) * 100) if big.any() else float("nan")
    return LinkFit(rtt / 2, q0, float(q1), 8.0 / q0, mape, tuple(sizes), tuple(medians))
