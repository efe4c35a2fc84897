"""Random episode ingredients shared by the environments: link series and node processes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from envs.config import EnvConfig, NodeProcess
from envs.traces import synthetic

__all__ = ["link_series", "node_process", "pinned_links"]


def link_series(traces: Sequence[np.ndarray], names: Sequence[str], cfg: EnvConfig, count: int, steps: int,
                rng: np.random.Generator, pinned: Sequence[int | float] | None = None,
                start: int | None = None) -> tuple[np.ndarray, list[str]]:
    """``(steps, count)`` true bandwidth of ``count`` links, Mbit/s, and what each one follows.

    Each link takes a random trace (already resampled to ``cfg.dt_s``) at a random offset, scaled
    by ``cfg.scaling``, or with probability ``cfg.synthetic_share`` a synthetic series.

    Args:
        traces: Bandwidth series to draw from, one sample per step.
        names: Their names.
        cfg: Scaling, synthetic kinds and step length.
        count: Links.
        steps: Samples per link.
        rng: Random source.
        pinned: Per link a trace index, or a fixed rate in Mbit/s as a float.
        start: First sample of each pinned trace (default: random).
    """
    out, used = np.empty((steps, count)), []
    for m in range(count):
        if pinned is None and cfg.synthetic and rng.random() < cfg.synthetic_share:
            kind = cfg.synthetic[int(rng.integers(len(cfg.synthetic)))]
            lo, hi = cfg.scaling.target_median_mbps or (1.0, 100.0)
            series = synthetic(kind, steps, rng, low_mbps=lo / 4, high_mbps=hi * 2, dt_s=cfg.dt_s)
            out[:, m] = np.clip(series, cfg.scaling.min_mbps, cfg.scaling.max_mbps)
            used.append(f"synthetic:{kind}")
            continue
        if pinned is not None and isinstance(pinned[m], float):
            out[:, m] = pinned[m]
            used.append(f"fixed:{pinned[m]:g}")
            continue
        k = int(rng.integers(len(traces))) if pinned is None else int(pinned[m])
        base = traces[k]
        first = int(rng.integers(len(base))) if start is None else start
        idx = (first + np.arange(steps)) % len(base)  # wrap around the trace
        out[:, m] = cfg.scaling.apply(base[idx], rng)
        used.append(names[k])
    return out, used


def node_process(proc: NodeProcess, count: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """``(steps, count)`` mean-reverting AR(1) demand per node, clipped to ``[low, high]``.

    ``proc.mean`` gives one mean per node (repeated cyclically when shorter).
    """
    mean = np.resize(np.asarray(proc.mean, float), count)
    keep = 1.0 - proc.reversion
    shocks = rng.normal(0, proc.sd * np.sqrt(1 - keep**2), (steps, count))
    first = rng.normal(0, proc.sd, count)
    decay = keep ** np.arange(steps)
    # x_t − mean = keep^t · first + Σ_k keep^(t−k) · shock_k: a convolution, by FFT for all nodes
    size = 1 << (2 * steps - 1).bit_length()
    dev = np.fft.irfft(np.fft.rfft(shocks, size, axis=0) * np.fft.rfft(decay, size)[:, None], size,
                       axis=0)[:steps]
    return np.clip(mean + first * decay[:, None] + dev, proc.low, proc.high)


def pinned_links(options: Mapping[str, Any] | None, names: Sequence[str], count: int,
                 what: str = "link") -> list[int | float] | None:
    """Per link, a trace index or a fixed rate, from reset ``options`` (evaluation, replays).

    ``{"trace": name or index}`` puts that trace on every link; ``{"links": [...]}`` gives each
    link a trace name or index, or a fixed rate in Mbit/s as a float. ``None``: draw at random.
    """
    if not options:
        return None
    if options.get("links") is not None:
        links = list(options["links"])
        if len(links) != count:
            raise ValueError(f"links: expected one entry per {what} ({count}), found {len(links)}")
        return [float(x) if isinstance(x, float) else _trace_index(x, names) for x in links]
    if options.get("trace") is None:
        return None
    return [_trace_index(options["trace"], names)] * count


def _trace_index(want: Any, names: Sequence[str]) -> int:
    if isinstance(want, int) and 0 <= want < len(names):
        return want
    if want in names:
        return list(names).index(want)
    raise ValueError(f"unknown trace {want!r} (have {len(names)}: {', '.join(names[:5])}, ...)")
