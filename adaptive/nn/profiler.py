"""Structured profiling (seed 000 Sec. IV-D) that writes ``adaptive.model/v1`` profiles.

For a model of ``N`` blocks we time the ``N`` blocks one by one and ``N + 1`` multi-block
segments (the full model among them): ``2N + 1`` configurations. Each configuration gets
warm-up calls, then repeated timed calls; we keep the median and the interquartile range.

The per-device correction of seed 000 Eqs. 1–2 is fitted by least squares on the segments:
``Σ t_i − t_segment = c0·n + c1`` for a segment of ``n`` blocks. The fit report gives the MAPE
of naive sums and of corrected sums against the measured segments, in-sample and on held-out
segments (2-fold), so the improvement is not an artefact of fitting.

Imports torch; import lazily.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from adaptive.model.codecs import BYTES_RATIO, decode, encode
from adaptive.model.lop import section_bands
from adaptive.nn.partition import Partition
from adaptive.nn.spatial import band_shares, block_rows, input_rows, run_rows, sections

__all__ = [
    "CorrectionFit",
    "RowEfficiencyFit",
    "Timing",
    "TimingConfig",
    "block_ops",
    "choose_segments",
    "fit_correction",
    "fit_linear",
    "machine_description",
    "model_profile_doc",
    "profile_codecs",
    "profile_data_movement",
    "profile_partition",
    "profile_row_efficiency",
    "time_call",
    "time_parts",
]


@dataclass(frozen=True)
class TimingConfig:
    """How to time a call.

    Attributes:
        warmup: Untimed calls (or passes) first: caches, allocator, lazy initialisation.
        repeats: Timed calls (or passes) per block; the median is reported.
        segment_repeats: Timed calls per multi-block segment.
        threads: torch intra-op threads while timing (1 emulates one core of an edge CPU).
        seed: Seed for the random input and the segment choice.
        block_timing: ``context`` times each block inside full forward passes, so caches hold
            what they hold in real execution; ``isolated`` repeats each block alone (seed 000's
            method), which keeps its weights hot in cache.
        segment_timing: ``context`` runs the blocks before a segment (untimed) before each timed
            call; ``isolated`` repeats the segment alone.
    """

    warmup: int = 5
    repeats: int = 21
    segment_repeats: int = 11
    threads: int = 1
    seed: int = 0
    block_timing: str = "context"
    segment_timing: str = "context"


class Timing(NamedTuple):
    """Median and interquartile range of repeated timings, ms."""

    median_ms: float
    iqr_ms: float


@dataclass(frozen=True)
class CorrectionFit:
    """Result of fitting ``Σ t_i − t_segment = c0·n + c1``.

    Attributes:
        c0_ms: Correction per block, ms.
        c1_ms: Constant correction per segment, ms.
        mape_naive_pct: MAPE of plain sums against measured segments, %.
        mape_corrected_pct: MAPE of corrected sums (fitted on all segments), %.
        mape_holdout_pct: MAPE of corrected sums on segments not used in the fit (2-fold), %.
        segments: Number of multi-block segments used.
    """

    c0_ms: float
    c1_ms: float
    mape_naive_pct: float
    mape_corrected_pct: float
    mape_holdout_pct: float
    segments: int


def time_call(fn: Callable[[], Any], warmup: int, repeats: int) -> Timing:
    """Time ``fn()`` ``repeats`` times after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = np.empty(repeats)
    for r in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        samples[r] = (time.perf_counter_ns() - t0) / 1e6
    q1, med, q3 = np.percentile(samples, [25, 50, 75])
    return Timing(float(med), float(q3 - q1))


def choose_segments(num_blocks: int, seed: int = 0) -> list[tuple[int, int]]:
    """``N + 1`` distinct multi-block segments ``[i, j)`` of ``N`` blocks.

    The full model, plus lengths spread over ``2..N-1`` at random positions (fewer when the
    model is too small to have that many).
    """
    L = num_blocks
    if L < 2:
        return []
    rng = np.random.default_rng(seed)
    chosen: list[tuple[int, int]] = [(0, L)]
    all_segments = [(i, j) for i in range(L) for j in range(i + 2, L + 1) if (i, j) != (0, L)]
    target = min(L + 1, len(all_segments) + 1)
    lengths = np.linspace(2, max(L - 1, 2), num=max(target - 1, 1)).round().astype(int)
    for n in lengths:
        if len(chosen) >= target:
            break
        options = [s for s in all_segments if s[1] - s[0] == n and s not in chosen]
        if not options:
            options = [s for s in all_segments if s not in chosen]
        chosen.append(options[int(rng.integers(len(options)))])
    return chosen


def fit_correction(block_ms: np.ndarray, segments: Sequence[tuple[int, int]],
                   measured_ms: Sequence[float]) -> CorrectionFit:
    """Fit the seed 000 correction on measured multi-block segments (relative least squares)."""
    block_ms = np.asarray(block_ms, dtype=float)
    measured = np.asarray(measured_ms, dtype=float)
    n = np.array([j - i for i, j in segments], dtype=float)
    sums = np.array([block_ms[i:j].sum() for i, j in segments])
    residual = sums - measured

    def solve(idx: np.ndarray) -> tuple[float, float]:
        # relative least squares: minimise Σ((residual − c0·n − c1) / measured)², matching MAPE
        w = 1.0 / measured[idx]
        if len(np.unique(n[idx])) >= 2:
            A = np.column_stack([n[idx], np.ones(len(idx))]) * w[:, None]
            (c0, c1), *_ = np.linalg.lstsq(A, residual[idx] * w, rcond=None)
            return float(c0), float(c1)
        if not len(idx):
            return 0.0, 0.0
        return 0.0, float(np.sum(residual[idx] * w * w) / np.sum(w * w))

    def mape(pred: np.ndarray, idx: np.ndarray) -> float:
        return float(np.mean(np.abs(pred[idx] - measured[idx]) / measured[idx]) * 100)

    everything = np.arange(len(segments))
    c0, c1 = solve(everything)
    corrected = sums - (c0 * n + c1)
    # 2-fold hold-out: fit on even-indexed segments, test on odd ones, and vice versa
    holdout = np.empty(len(segments))
    for train, test in ((everything[::2], everything[1::2]), (everything[1::2], everything[::2])):
        if len(train) and len(test):
            a, b = solve(train)
            holdout[test] = sums[test] - (a * n[test] + b)
        else:
            holdout[test] = corrected[test]
    return CorrectionFit(c0, c1, mape(sums, everything), mape(corrected, everything),
                         mape(holdout, everything), len(segments))


def fit_linear(kb: np.ndarray, ms: np.ndarray) -> tuple[float, float]:
    """Least-squares ``ms = per_kb_ms·KB + offset_ms`` (slope clipped at 0)."""
    A = np.column_stack([kb, np.ones_like(kb)])
    (slope, offset), *_ = np.linalg.lstsq(A, ms, rcond=None)
    return max(float(slope), 0.0), float(offset)


def profile_partition(part: Partition, cfg: TimingConfig, *, progress: bool = True
                      ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]], list[float], CorrectionFit]:
    """Time every block and ``N + 1`` segments; fit the correction.

    Returns:
        ``(block_median_ms, block_iqr_ms, segments, segment_median_ms, fit)``.
    """
    from tqdm.auto import tqdm

    for mode in (cfg.block_timing, cfg.segment_timing):
        if mode not in ("context", "isolated"):
            raise ValueError(f"timing mode must be 'context' or 'isolated', found '{mode}'")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        x0 = torch.randn(part.input_shape)
        acts = [a.clone() for a in part.activations(x0)]
        segments = choose_segments(part.num_blocks, cfg.seed)
        bar = tqdm(total=part.num_blocks + len(segments), desc=f"profiling {part.name}",
                   unit="cfg", disable=not progress)
        with torch.inference_mode():
            if cfg.block_timing == "context":
                med, iqr = _blocks_in_context(part, x0, cfg)
                bar.update(part.num_blocks)
            else:
                med, iqr = np.empty(part.num_blocks), np.empty(part.num_blocks)
                for i in range(part.num_blocks):
                    mod, x = part.segment(i, i + 1), acts[i]
                    med[i], iqr[i] = time_call(lambda mod=mod, x=x: mod(x), cfg.warmup, cfg.repeats)
                    bar.update()
            seg_ms = []
            for i, j in segments:
                seg_ms.append(_time_segment(part, i, j, x0, acts[i], cfg))
                bar.update()
        bar.close()
    finally:
        torch.set_num_threads(previous_threads)
    return med, iqr, segments, seg_ms, fit_correction(med, segments, seg_ms)


def _blocks_in_context(part: Partition, x0: torch.Tensor, cfg: TimingConfig
                       ) -> tuple[np.ndarray, np.ndarray]:
    mods = [part.segment(i, i + 1) for i in range(part.num_blocks)]
    samples = np.empty((cfg.repeats, len(mods)))
    for r in range(cfg.warmup + cfg.repeats):
        _timed_pass(mods, x0, samples[r - cfg.warmup] if r >= cfg.warmup else None)
    q1, med, q3 = np.percentile(samples, [25, 50, 75], axis=0)
    return med, q3 - q1


def _timed_pass(mods: Sequence[Callable[[Any], Any]], x0: torch.Tensor, out_ms: np.ndarray | None) -> None:
    """One forward pass block by block, each block's time written to ``out_ms`` (None: untimed)."""
    y = x0
    for i, mod in enumerate(mods):
        t0 = time.perf_counter_ns()
        y = mod(y)
        if out_ms is not None:
            out_ms[i] = (time.perf_counter_ns() - t0) / 1e6


def _time_segment(part: Partition, i: int, j: int, x0: torch.Tensor, x_i: torch.Tensor,
                  cfg: TimingConfig) -> float:
    seg = part.segment(i, j)
    warmup = max(2, cfg.warmup // 2)
    if cfg.segment_timing == "isolated" or i == 0:
        return time_call(lambda: seg(x_i), warmup, cfg.segment_repeats).median_ms
    prefix = part.segment(0, i)
    samples = []
    for r in range(warmup + cfg.segment_repeats):
        y = prefix(x0)
        t0 = time.perf_counter_ns()
        seg(y)
        if r >= warmup:
            samples.append((time.perf_counter_ns() - t0) / 1e6)
    return float(np.median(samples))


ROW_KNOTS = (0.125, 0.25, 0.5, 0.75, 1.0)


class RowEfficiencyFit(NamedTuple):
    """A device's part costs fitted by :func:`profile_row_efficiency`.

    Attributes:
        points: ``((rows_share, time_share), ...)`` at :data:`ROW_KNOTS`, ``(0, 0)`` implied.
        op_ms: Fixed cost of one operator in a part, ms.
        parts: The parts timed: ``(start, stop, rows)``.
        measured_ms: Median time of each part, ms.
        predicted_ms: The fitted model's time of each part, ms.
        mape_fitted_pct: MAPE of the fitted model over the parts, %.
        mape_linear_pct: MAPE of time proportional to rows (no fixed cost), %.
    """

    points: tuple[tuple[float, float], ...]
    op_ms: float
    parts: list[tuple[int, int, tuple[int, int]]]
    measured_ms: np.ndarray
    predicted_ms: np.ndarray
    mape_fitted_pct: float
    mape_linear_pct: float


def block_ops(part: Partition) -> list[int]:
    """Operators (module, function and method calls) in each block's traced graph."""
    return [sum(1 for n in part.segment(i, i + 1).graph.nodes if n.op.startswith("call"))
            for i in range(part.num_blocks)]


def _hats(rho: np.ndarray) -> np.ndarray:
    """``(..., K)`` piecewise-linear basis on ``(0,) + ROW_KNOTS``: ``h(ρ) = hats @ y``, ``h(0) = 0``."""
    xs = np.array((0.0, *ROW_KNOTS))
    eye = np.eye(len(xs))
    return np.stack([np.interp(rho, xs, eye[k]) for k in range(1, len(xs))], axis=-1)


def time_parts(part: Partition, jobs: Sequence[tuple[int, int, tuple[int, int]]], x0: torch.Tensor,
               cfg: TimingConfig) -> tuple[np.ndarray, np.ndarray]:
    """Median ms of each part ``(start, stop, rows)`` and of each block in forward passes.

    Each round runs one forward pass (timing every block in context, as ``block_timing='context'``)
    and then every part once from the input rows it needs, so parts and blocks share the machine's
    state; ``cfg.warmup`` untimed rounds first.
    """
    acts = [a.clone() for a in part.activations(x0)]
    calls = []
    for start, stop, rows in jobs:
        lo, hi = input_rows(part, start, stop, rows)
        band = acts[start][:, :, lo:hi].contiguous()
        calls.append(lambda s=start, e=stop, b=band, r=(lo, hi), o=rows: run_rows(part, s, e, b, r, o))
    mods = [part.segment(i, i + 1) for i in range(part.num_blocks)]
    blocks, parts = np.empty((cfg.repeats, len(mods))), np.empty((cfg.repeats, len(calls)))
    with torch.inference_mode():
        for r in range(cfg.warmup + cfg.repeats):
            _timed_pass(mods, x0, blocks[r - cfg.warmup] if r >= cfg.warmup else None)
            for k, fn in enumerate(calls):
                t0 = time.perf_counter_ns()
                fn()
                if r >= cfg.warmup:
                    parts[r - cfg.warmup, k] = (time.perf_counter_ns() - t0) / 1e6
    return np.median(parts, axis=0), np.median(blocks, axis=0)


def profile_row_efficiency(part: Partition, cfg: TimingConfig, block_ms: np.ndarray | None = None,
                           fractions: Sequence[float] = ROW_KNOTS[:-1]) -> RowEfficiencyFit:
    """Time parts of the sections at several row fractions; fit the device's row-efficiency curve.

    The parts are what a section's parts are at run time (:func:`adaptive.nn.spatial.run_rows`):
    the top and the bottom ``f`` of the output rows of every single local block and of runs of
    three, at each fraction ``f``, from the input rows (halo included) they need. The model prices
    a part as ``Σ [f_i + (t_i − f_i)·h(ρ_i)]`` over its blocks, with ``f_i = min(n_i·op_ms, t_i)``
    the fixed cost of block ``i``'s ``n_i`` operators and ``ρ_i`` the share of its output rows the
    part computes. ``h``, piecewise linear through :data:`ROW_KNOTS` with ``h(0) = 0``, is fitted
    by least squares on relative error for each ``op_ms`` of a grid; the best pair is kept. ``h(1)``
    is fitted too: it carries what running rows through the row interpreter costs beyond the
    traced block.

    Args:
        part: The partition.
        cfg: Timing (``repeats`` rounds after ``warmup``; ``threads``).
        block_ms: The profile's block times; default: measured in context here, in the same rounds.
        fractions: Row fractions to time.

    Raises:
        ValueError: A fraction outside (0, 1), or a model with no parallel section.
    """
    if not all(0 < f < 1 for f in fractions):
        raise ValueError(f"row fractions must be in (0, 1), found {list(fractions)}")
    jobs = []
    for sec in sections(part):
        ranges = [(i, min(i + k, sec.stop)) for k in (1, 3) for i in range(sec.start, sec.stop, k)]
        for start, stop in ranges:
            height = int(part.blocks[stop - 1].output_shape[2])
            for f in fractions:  # the bands a section of one part has: the top f, then the rest
                jobs += [(start, stop, band) for band in section_bands(height, f, 1) or ()]
    jobs = list(dict.fromkeys(jobs))  # a short output gives the same rows at several fractions
    if not jobs:
        raise ValueError(f"{part.name} has no parallel section: there are no parts to time")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        measured, context_ms = time_parts(part, jobs, torch.randn(part.input_shape), cfg)
    finally:
        torch.set_num_threads(previous_threads)
    t = np.asarray(block_ms if block_ms is not None else context_ms, float)
    ops = np.array(block_ops(part), float)
    shares = [np.array(band_shares(part, s, e, rows)) for s, e, rows in jobs]
    hats = [_hats(rho) for rho in shares]  # (blocks, knots) per part: h(ρ_i) = hats_i @ y

    def mape(pred: np.ndarray) -> float:
        return float(np.mean(np.abs(pred - measured) / measured) * 100)

    def fit(op_ms: float) -> tuple[np.ndarray, np.ndarray]:
        fixed = np.minimum(op_ms * ops, t)
        A = np.stack([((t - fixed)[s:e, None] * hat).sum(axis=0)
                      for (s, e, _), hat in zip(jobs, hats, strict=True)])
        c = np.array([fixed[s:e].sum() for s, e, _ in jobs])
        y, *_ = np.linalg.lstsq(A / measured[:, None], 1 - c / measured, rcond=None)
        y = np.round(np.maximum.accumulate(np.maximum(y, 1e-3)), 4)  # a wider band never costs less
        return y, A @ y + c

    # the fixed cost per operator: the best of a grid up to the cheapest block's time per operator
    local = np.zeros(len(t), bool)
    for sec in sections(part):
        local[sec.start : sec.stop] = True
    top = float(np.min(t[local] / np.maximum(ops[local], 1)))
    op_ms = min(np.round(np.linspace(0.0, top, 41), 6), key=lambda o: mape(fit(float(o))[1]))
    y, predicted = fit(float(op_ms))
    linear = np.array([float((t[s:e] * rho).sum()) for (s, e, _), rho in zip(jobs, shares, strict=True)])
    points = tuple((k, float(v)) for k, v in zip(ROW_KNOTS, y, strict=True))
    return RowEfficiencyFit(points, float(op_ms), jobs, measured, predicted, mape(predicted), mape(linear))


def profile_codecs(sizes_kb: Sequence[float] = (4, 16, 64, 256, 1024, 4096), repeats: int = 15
                   ) -> dict[str, dict[str, tuple[float, float]]]:
    """Fit encode/decode cost of each codec on this machine.

    Returns:
        ``{codec: {"encode": (per_kb_ms, offset_ms), "decode": (...)}}``, per KB of the
        uncompressed float32 activation.
    """
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for codec in ("fp16", "int8"):
        enc_ms, dec_ms = [], []
        for kb in sizes_kb:
            x = rng.standard_normal(int(kb * 1e3 / 4)).astype(np.float32)
            e = encode(codec, x)
            enc_ms.append(time_call(lambda x=x, c=codec: encode(c, x), 3, repeats).median_ms)
            dec_ms.append(time_call(lambda e=e, x=x, c=codec: decode(c, e.payload, e.params, x.shape),
                                    3, repeats).median_ms)
        kb = np.asarray(sizes_kb, dtype=float)
        out[codec] = {"encode": fit_linear(kb, np.array(enc_ms)),
                      "decode": fit_linear(kb, np.array(dec_ms))}
    return out


def machine_description() -> str:
    """One line naming this machine's CPU, core count, Python and torch versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os

    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def model_profile_doc(part: Partition, device: str, block_ms: np.ndarray, block_iqr_ms: np.ndarray,
                      fit: CorrectionFit | None, cfg: TimingConfig, *,
                      codecs: dict[str, dict[str, tuple[float, float]]] | None = None,
                      result_bytes: int | None = None) -> dict[str, Any]:
    """An ``adaptive.model/v1`` document for a partition measured on ``device``."""
    last = part.blocks[-1]
    rows = block_rows(part)
    doc: dict[str, Any] = {
        "schema": "adaptive.model/v1",
        "model": part.name,
        "input_shape": list(part.input_shape),
        "input_bytes": part.input_bytes(),
        "result_bytes": int(result_bytes if result_bytes is not None else last.output_bytes()),
        "activation_dtype": "float32",
        "blocks": [{"name": b.name, "output_bytes": b.output_bytes(torch.float32),
                    "param_bytes": b.param_bytes, "flops": b.flops,
                    "output_shape": list(b.output_shape), "kind": b.kind,
                    **({"rows": {"kernel": w.kernel, "stride": w.stride, "padding": w.padding}} if w else {}),
                    "ops": n}
                   for b, w, n in zip(part.blocks, rows, block_ops(part), strict=True)],
        "latency_ms": {device: [round(float(x), 6) for x in block_ms]},
        "latency_spread_ms": {device: [round(float(x), 6) for x in block_iqr_ms]},
    }
    if fit is not None:
        doc["correction"] = {device: {
            "c0_ms": round(fit.c0_ms, 6), "c1_ms": round(fit.c1_ms, 6),
            "mape_naive_pct": round(fit.mape_naive_pct, 3),
            "mape_corrected_pct": round(fit.mape_corrected_pct, 3), "segments": fit.segments}}
    if codecs:
        doc["codecs"] = {
            name: {"bytes_ratio": BYTES_RATIO[name], "layers": 0,
                   "encode": {device: {"per_kb_ms": round(c["encode"][0], 8),
                                       "offset_ms": round(max(c["encode"][1], 0.0), 6)}},
                   "decode": {device: {"per_kb_ms": round(c["decode"][0], 8),
                                       "offset_ms": round(max(c["decode"][1], 0.0), 6)}}}
            for name, c in codecs.items()}
    when = time.strftime("%Y-%m-%d")
    fit_note = ""
    if fit is not None:
        fit_note = (f" Correction fitted on {fit.segments} multi-block segments: MAPE naive sum "
                    f"{fit.mape_naive_pct:.2f}%, corrected {fit.mape_corrected_pct:.2f}% "
                    f"(held-out 2-fold {fit.mape_holdout_pct:.2f}%).")
    doc["notes"] = (f"Measured by 'adaptive profile model' on {when}: {machine_description()}; "
                    f"{cfg.threads} torch thread(s), batch 1, random weights and input, "
                    f"blocks timed {cfg.block_timing} ({cfg.warmup} warm-up + {cfg.repeats} timed; "
                    f"median, latency_spread_ms is the IQR), segments timed {cfg.segment_timing} "
                    f"({cfg.segment_repeats} timed).{fit_note}")
    return doc


def profile_data_movement(sizes_kb: Sequence[float] = (1, 4, 16, 64, 256, 1024, 4096, 16384),
                          repeats: int = 15) -> tuple[dict[str, tuple[float, float]], str]:
    """Fit inbound/outbound data movement on this machine.

    With CUDA: host→GPU copy (inbound) and GPU→host copy (outbound), synchronised. Without:
    the runtime's (de)serialisation of a float32 tensor — outbound is tensor → contiguous bytes,
    inbound is bytes → tensor (a copy, so the node owns its memory).

    Returns:
        ``({"inbound": (per_kb_ms, offset_ms), "outbound": (...)}, method description)``.
    """
    cuda = torch.cuda.is_available()
    ins, outs = [], []
    for kb in sizes_kb:
        n = max(1, int(kb * 1e3 / 4))
        t = torch.randn(n)
        if cuda:
            dev = torch.device("cuda")
            g = t.to(dev)

            def inbound(t: torch.Tensor = t, dev: torch.device = dev) -> None:
                t.to(dev)
                torch.cuda.synchronize()

            def outbound(g: torch.Tensor = g) -> None:
                g.cpu()
                torch.cuda.synchronize()
        else:
            raw = t.numpy().tobytes()

            def inbound(raw: bytes = raw) -> None:
                torch.from_numpy(np.frombuffer(raw, dtype=np.float32).copy())

            def outbound(t: torch.Tensor = t) -> None:
                t.contiguous().numpy().tobytes()
        ins.append(time_call(inbound, 3, repeats).median_ms)
        outs.append(time_call(outbound, 3, repeats).median_ms)
    kb = np.asarray(sizes_kb, dtype=float)
    method = ("host<->GPU copies with torch.cuda.synchronize()" if cuda else
              "float32 tensor (de)serialisation: tensor->bytes out, bytes->tensor (copy) in")
    return {"inbound": fit_linear(kb, np.array(ins)), "outbound": fit_linear(kb, np.array(outs))}, method
