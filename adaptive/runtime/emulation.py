"""Device and link emulation for clusters on one machine: a node that pretends to be a Pi or a Jetson.

* :class:`ComputeEmulation` pads each stage to the time the emulated device's profile predicts
  (``adaptive node --emulate DEVICE``), or slows this machine's own time (``--slowdown``); a part of
  a parallel section (a band of rows) is padded to the profile's part cost (:class:`PartCosts`);
* :class:`UplinkEmulation` drives the node's uplink shaper: a fixed rate, or a bandwidth trace
  replayed from a start time, and the cluster's emulation control messages
  (``adaptive/<cluster>/emulation``: ``{"v": 1, "trace_start": unix_s}`` restarts the replay,
  ``{"v": 1, "uplink_mbps": rate}`` pins a rate until the next start).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from adaptive.model.lop import part_ms
from adaptive.runtime.shaping import LinkShaper

__all__ = ["ComputeEmulation", "PartCosts", "UplinkEmulation"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartCosts:
    """What a part of a parallel section costs on a device (``docs/model.md``, "Parallel sections").

    A band computing share ``ρ`` of block ``i``'s output rows costs ``f_i + (t_i − f_i)·h(ρ)``, with
    ``f_i = min(ops_i · op_ms, t_i)``.

    Attributes:
        points: ``(rows_share, time_share)`` of ``h``, from ``(0, 0)`` (excluded) to rows share 1.
        op_ms: Fixed cost of one operator in a part, ms.
        ops: Operators in each block.
    """

    points: tuple[tuple[float, float], ...] = ((1.0, 1.0),)
    op_ms: float = 0.0
    ops: tuple[int, ...] = ()

    def time_ms(self, latency_ms: Sequence[float], start: int, shares: Sequence[float]) -> float:
        """A part computing ``shares`` of blocks ``start, start + 1, …`` with these block times, ms."""
        n = len(shares)
        lat = np.asarray(latency_ms[start : start + n], float)
        ops = np.array([self.ops[i] if i < len(self.ops) else 0 for i in range(start, start + n)], float)
        xs, ys = (0.0, *(p[0] for p in self.points)), (0.0, *(p[1] for p in self.points))
        return float(part_ms(lat, np.minimum(ops * self.op_ms, lat), np.asarray(shares, float), xs, ys).sum())


class ComputeEmulation:
    """Stage times of an emulated device.

    Args:
        latency_ms: The device's profiled per-block latency, ms (None: run at this machine's speed).
        correction: The profile's summation correction ``(c0_ms, c1_ms)`` (seed 000 Eq. 1–2).
        batch_per_extra_item: Batching cost of each extra request in a batch (the device's profile).
        slowdown: This machine's time, or the profile's, times this (≥ 1).
        parts: The device's part costs (default: time proportional to rows, no fixed cost).
    """

    def __init__(self, latency_ms: Sequence[float] | None, correction: tuple[float, float] = (0.0, 0.0),
                 batch_per_extra_item: float = 0.0, slowdown: float = 1.0,
                 parts: PartCosts | None = None) -> None:
        self.latency_ms = tuple(latency_ms) if latency_ms is not None else None
        self.correction = correction
        self.batch_per_extra_item = batch_per_extra_item
        self.slowdown = max(slowdown, 1.0)
        self.parts = parts or PartCosts()

    def part_target_s(self, start: int, shares: Sequence[float], compute_s: float) -> float:
        """How long a part computing ``shares`` of blocks ``start, start + 1, …`` takes here, s."""
        if self.latency_ms is None:
            return compute_s * self.slowdown
        return self.parts.time_ms(self.latency_ms, start, shares) / 1e3 * self.slowdown

    def pad_part(self, start: int, shares: Sequence[float], compute_s: float) -> float:
        """Sleep so the part takes what the emulated device would; return the part's time, s."""
        return _sleep_to(self.part_target_s(start, shares, compute_s), compute_s)

    def target_s(self, start: int, stop: int, batch: int, compute_s: float) -> float:
        """How long blocks ``[start, stop)`` of a batch take on the emulated device, s."""
        if self.latency_ms is not None and stop > start:
            c0, c1 = self.correction
            base = max(sum(self.latency_ms[start:stop]) - (c0 * (stop - start) + c1), 0.0)
            return base / 1e3 * (1 + self.batch_per_extra_item * (batch - 1)) * self.slowdown
        return compute_s * self.slowdown

    def pad(self, start: int, stop: int, batch: int, compute_s: float) -> float:
        """Sleep so the stage takes what the emulated device would; return the stage time, s."""
        return _sleep_to(self.target_s(start, stop, batch, compute_s), compute_s)


def _sleep_to(target_s: float, spent_s: float) -> float:
    """Sleep what is left of ``target_s`` after ``spent_s``; return the longer of the two, s."""
    if target_s > spent_s:
        time.sleep(target_s - spent_s)
        return target_s
    return spent_s


class UplinkEmulation:
    """A node's emulated uplink rate: fixed, or a trace replayed (see the module docstring).

    Args:
        shaper: The node's uplink shaper (None: a node whose uplink is not emulated accepts a
            ``trace_start`` and refuses a rate).
        trace_mbps: Rates to replay, one per ``dt_s`` (empty: a fixed rate).
        dt_s: Seconds per trace sample.
    """

    def __init__(self, shaper: LinkShaper | None, trace_mbps: Sequence[float] = (),
                 dt_s: float = 1.0) -> None:
        self.shaper = shaper
        self.trace_mbps = tuple(trace_mbps)
        self.dt_s = dt_s
        self.trace_start = time.time()
        self.pinned = False  # a rate pinned by a control message: the replay waits for the next start

    def handle(self, payload: bytes) -> bool:
        """Apply an emulation control message; False (and nothing changes) if it is not a valid one."""
        try:
            msg = json.loads(payload) if len(payload) < 256 else None
        except ValueError:
            msg = None

        def number(key: str) -> float | None:
            x = msg.get(key) if isinstance(msg, dict) and msg.get("v") == 1 else None
            ok = isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
            return float(x) if ok else None

        start, rate = number("trace_start"), number("uplink_mbps")
        if start is not None:
            self.pinned = False
            self.trace_start = start  # a time to come holds the trace's first rate until then
            return True
        if rate is not None and rate > 0 and self.shaper is not None:
            self.pinned = True
            self.shaper.set_rate(rate)
            return True
        return False

    def replay(self, stop: threading.Event) -> None:
        """Follow the trace until ``stop`` (returns at once without a trace)."""
        n = len(self.trace_mbps) if self.shaper is not None else 0
        while n and not stop.is_set():
            if not self.pinned:
                elapsed = time.time() - self.trace_start
                step = int(elapsed // self.dt_s) % n if elapsed > 0 else 0
                self.shaper.set_rate(max(self.trace_mbps[step], 0.01))  # type: ignore[union-attr]
            stop.wait(min(0.1, self.dt_s / 4))
