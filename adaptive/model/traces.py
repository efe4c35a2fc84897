"""Bandwidth traces: measured CSV files and synthetic generators.

A trace file is CSV ``time_s,bandwidth_mbps``; each row holds from its time until the next row's
(a step function), the last row for one median interval. :func:`resample` turns it into one value
per environment step of ``dt_s``.

Real traces span three orders of magnitude (3G under 1 Mbit/s, 5G hundreds), so the environment
maps each one onto the user's link class with :class:`TraceScaling`: multiply so that the trace's
median equals a target (drawn per episode from a log-uniform range for domain randomisation), then
clip.

Synthetic generators (:func:`synthetic`) serve tests and domain randomisation: ``steps`` (piecewise
constant with random levels), ``random_walk`` (in log space), ``markov`` (two-state on/off link).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adaptive.errors import AdaptiveError, read_input

__all__ = ["Trace", "TraceScaling", "load_trace", "load_traces", "resample", "synthetic"]


@dataclass(frozen=True)
class Trace:
    """A bandwidth trace.

    Attributes:
        name: File stem or generator name.
        time_s: Start time of each sample, s (first 0, increasing).
        bandwidth_mbps: Value of each sample, Mbit/s (≥ 0).
    """

    name: str
    time_s: np.ndarray
    bandwidth_mbps: np.ndarray

    @property
    def duration_s(self) -> float:
        """Length including the last sample's median interval, s."""
        step = float(np.median(np.diff(self.time_s))) if len(self.time_s) > 1 else 1.0
        return float(self.time_s[-1]) + step


def load_trace(path: str | Path) -> Trace:
    """Read one ``time_s,bandwidth_mbps`` CSV; raises :class:`AdaptiveError` naming the problem."""
    path = Path(path)
    times, values = [], []
    reader = csv.reader(io.StringIO(read_input(path, "a trace (CSV with time_s,bandwidth_mbps)"), newline=""))
    try:
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["time_s", "bandwidth_mbps"]:
            raise AdaptiveError(f"{path}: expected header 'time_s,bandwidth_mbps'")
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                t, b = float(row[0]), float(row[1])
            except (ValueError, IndexError):
                found = str(row)[:80]
                raise AdaptiveError(f"{path}: line {lineno}: expected two numbers, found {found}") from None
            if not (np.isfinite(t) and np.isfinite(b)) or b < 0:
                raise AdaptiveError(f"{path}: line {lineno}: expected finite time and bandwidth >= 0")
            times.append(t)
            values.append(b)
    except csv.Error as exc:
        raise AdaptiveError(f"{path}: not a CSV trace ({exc})") from None
    if len(times) < 2:
        raise AdaptiveError(f"{path}: a trace needs at least 2 samples")
    t = np.asarray(times)
    if np.any(np.diff(t) <= 0):
        raise AdaptiveError(f"{path}: time_s must increase")
    return Trace(path.stem, t - t[0], np.asarray(values))


def load_traces(sources: Sequence[str | Path]) -> list[Trace]:
    """Traces from files and directories (every ``*.csv`` except ``manifest.csv``), sorted by name."""
    files: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            files += sorted(f for f in p.glob("*.csv") if f.name != "manifest.csv")
        else:
            files.append(p)
    if not files:
        raise AdaptiveError(f"no trace files in {[str(s) for s in sources]}")
    return [load_trace(f) for f in files]


def resample(trace: Trace, dt_s: float) -> np.ndarray:
    """One value per step of ``dt_s`` over the trace, holding each sample (step function)."""
    n = max(int(trace.duration_s // dt_s), 1)
    grid = np.arange(n) * dt_s
    idx = np.searchsorted(trace.time_s, grid, side="right") - 1
    return trace.bandwidth_mbps[np.clip(idx, 0, len(trace.time_s) - 1)]


@dataclass(frozen=True)
class TraceScaling:
    """How a trace is mapped onto a link class.

    Attributes:
        target_median_mbps: ``(low, high)``: each episode draws a target median log-uniformly in
            this range and multiplies the trace so its median matches it (low = high: fixed).
            ``None`` keeps the trace's own values.
        min_mbps: Floor after scaling (a dead link still trickles), Mbit/s.
        max_mbps: Ceiling after scaling, Mbit/s.
    """

    target_median_mbps: tuple[float, float] | None = (3.0, 30.0)
    min_mbps: float = 0.05
    max_mbps: float = 1000.0

    def apply(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Scale one trace's values."""
        out = np.asarray(values, float)
        if self.target_median_mbps is not None:
            lo, hi = self.target_median_mbps
            target = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else lo
            median = float(np.median(out[out > 0])) if np.any(out > 0) else 1.0
            out = out * (target / median)
        return np.clip(out, self.min_mbps, self.max_mbps)


def synthetic(kind: str, steps: int, rng: np.random.Generator, *, low_mbps: float = 1.0,
              high_mbps: float = 100.0, dt_s: float = 1.0) -> np.ndarray:
    """A synthetic bandwidth series of ``steps`` values, Mbit/s, within ``[low, high]``.

    Args:
        kind: ``steps`` (levels held 5–30 s), ``random_walk`` (log-space, 10% per step), or
            ``markov`` (good/bad link: high ↔ low with mean sojourn 20 s good, 5 s bad).
        steps: Number of values.
        rng: Random generator (the env's ``np_random``).
        low_mbps: Lowest value.
        high_mbps: Highest value.
        dt_s: Step length, s (sojourn times are in seconds).
    """
    lo, hi = np.log(low_mbps), np.log(high_mbps)
    if kind == "steps":
        out = np.empty(steps)
        i = 0
        while i < steps:
            hold = max(1, int(rng.uniform(5, 30) / dt_s))
            out[i : i + hold] = np.exp(rng.uniform(lo, hi))
            i += hold
        return out
    if kind == "random_walk":
        walk = np.cumsum(rng.normal(0.0, 0.1, steps)) + rng.uniform(lo, hi) - lo
        span = hi - lo
        folded = np.mod(walk, 2 * span)  # reflect at both bounds: fold the walk into [0, span]
        folded = np.where(folded > span, 2 * span - folded, folded)
        return np.exp(lo + folded)
    if kind == "markov":
        # a switch after each step with probability dt / mean sojourn: the sojourns are geometric
        good = bool(rng.random() < 0.8)
        state = np.empty(steps, bool)
        i = 0
        while i < steps:
            hold = int(rng.geometric(min(dt_s / (20.0 if good else 5.0), 1.0)))
            state[i : i + hold] = good
            i += hold
            good = not good
        return np.where(state, high_mbps, low_mbps) * np.exp(rng.normal(0, 0.05, steps))
    raise AdaptiveError(f"unknown synthetic trace '{kind}' (expected steps, random_walk, markov)")
