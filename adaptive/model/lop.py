"""Local operation parallelism (Intra-DP, seed 001 Sec. 4) in the model: sections, rows and schedule.

Torch-free: the row map of every local block is in the model profile (``blocks[].rows``, written by
``adaptive profile model`` from :func:`adaptive.nn.spatial.block_rows`), and the time of a band of
rows is the block's profiled time scaled by the device's row-efficiency curve
(``row_efficiency`` in the profile, or :data:`DEFAULT_ROW_EFFICIENCY`).

Names map to the seed's terms: a *local operator* is a block with a row map; a *parallel section*
(:func:`parallel_sections`) is a run of them; an *operation* is the computation of one band of a
section's output rows from the band of input rows it needs (:func:`input_band`), the halo included
(the seed's *replication*: rows both sides compute, or rows sent to both bands' parts).
:class:`SectionCosts` sizes every band of a section and :func:`section_schedule` is the critical
path of one section (``docs/model.md``, "Parallel sections").
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from adaptive.errors import PlanError
from adaptive.model.plans import MAX_PARTS, SHARES, validate_section
from adaptive.model.profiles import DEFAULT_ROW_EFFICIENCY, DEFAULT_ROW_OP_MS, DeviceProfile, ModelProfile

__all__ = ["DEFAULT_ROW_EFFICIENCY", "DEFAULT_ROW_OP_MS", "SectionCosts", "SectionTimes", "add_sections",
           "block_heights", "check_sections", "efficiency_curve", "first_stage", "input_band",
           "parallel_sections", "part_ms", "section_bands", "section_bytes", "section_schedule"]



def efficiency_curve(profile: ModelProfile, device: DeviceProfile) -> tuple[np.ndarray, np.ndarray, float]:
    """``(rows_share, time_share)`` points of ``device``'s curve, ``(0, 0)`` first, and its cost per operator.

    The points end at rows share 1 (``(1, 1)`` is added when the profile's end before it).
    """
    points, op_ms = profile.row_costs(device)
    xs = [0.0, *(p[0] for p in points)]
    ys = [0.0, *(p[1] for p in points)]
    if xs[-1] < 1.0:
        xs.append(1.0)
        ys.append(1.0)
    return np.array(xs), np.array(ys), float(op_ms)


def part_ms(latency_ms: np.ndarray, fixed_ms: np.ndarray, shares: np.ndarray, xs: np.ndarray,
            ys: np.ndarray) -> np.ndarray:
    """Each block's time in a part: ``f + (t − f)·h(ρ)``, ms (``h`` through ``(xs, ys)``).

    ``latency_ms`` (``t``), ``fixed_ms`` (``f``, its operators' fixed cost) and ``shares`` (``ρ``,
    the share of its output rows the part computes) per block. The model and the emulated nodes
    (:class:`adaptive.runtime.emulation.ComputeEmulation`) both price parts with it.
    """
    return fixed_ms + (latency_ms - fixed_ms) * np.interp(shares, xs, ys)


def block_heights(profile: ModelProfile) -> list[int]:
    """Rows of the activation at each split position ``0..L`` (0 where it is not a 4-D tensor)."""
    shapes = [profile.input_shape, *(b.output_shape for b in profile.blocks)]
    return [int(s[2]) if len(s) == 4 else 0 for s in shapes]


def parallel_sections(profile: ModelProfile) -> list[tuple[int, int]]:
    """Maximal runs ``[start, stop)`` of blocks with a row map (empty: layer plans only)."""
    heights = block_heights(profile)
    local = [b.rows is not None and heights[i] > 0 and heights[i + 1] > 0
             for i, b in enumerate(profile.blocks)]
    found, i = [], 0
    while i < len(local):
        if local[i]:
            j = i
            while j < len(local) and local[j]:
                j += 1
            found.append((i, j))
            i = j
        else:
            i += 1
    return found


def input_band(profile: ModelProfile, start: int, stop: int, rows: tuple[int, int]) -> tuple[int, int]:
    """Input rows (at split position ``start``) that output rows ``rows`` of blocks ``[start, stop)`` read.

    Raises:
        PlanError: The blocks are not inside one parallel section, or the rows are out of range.
    """
    if not any(a <= start < stop <= b for a, b in parallel_sections(profile)):
        raise PlanError(f"blocks [{start}, {stop}) of {profile.model} are not inside one parallel section")
    heights = block_heights(profile)
    lo, hi = rows
    if not 0 <= lo < hi <= heights[stop]:
        raise PlanError(f"rows [{lo}, {hi}) are not within 0..{heights[stop]}")
    for i in range(stop - 1, start - 1, -1):
        kernel, stride, padding = profile.blocks[i].rows  # type: ignore[misc]
        lo, hi = max(lo * stride - padding, 0), min((hi - 1) * stride - padding + kernel, heights[i])
    return lo, hi


def _back(profile: ModelProfile, heights: list[int], start: int, stop: int,
          rows: tuple[int, int]) -> list[tuple[int, int]]:
    """Rows needed at each position ``start..stop`` for output rows ``rows`` (index 0: at ``start``)."""
    lo, hi = rows
    out = [(lo, hi)]
    for i in range(stop - 1, start - 1, -1):
        kernel, stride, padding = profile.blocks[i].rows  # type: ignore[misc]
        lo, hi = max(lo * stride - padding, 0), min((hi - 1) * stride - padding + kernel, heights[i])
        out.append((lo, hi))
    return out[::-1]


def section_bands(height: int, share: float, parts: int) -> list[tuple[int, int]] | None:
    """The accelerator's bands (top rows, in ``parts``) then the edge's band; None if a band is empty."""
    r = min(max(round(share * height), 1), height - 1)
    if parts > r:
        return None
    cuts = [round(r * c / parts) for c in range(parts + 1)]
    return [(cuts[c], cuts[c + 1]) for c in range(parts)] + [(r, height)]


class SectionConfig(NamedTuple):
    """The sizes of one section configuration (``C`` = :data:`MAX_PARTS`, unused parts zero).

    Attributes:
        edge_ms: ``(D,)`` d0's band on each device's profile (only d0's is used), ms.
        part_ms: ``(D, C)`` each accelerator band on each device's profile, ms.
        chunk_bytes: ``(C,)`` raw input bytes streamed for each accelerator band (new rows only).
        join_bytes: Raw bytes of d0's finished band at the section's end.
    """

    edge_ms: np.ndarray
    part_ms: np.ndarray
    chunk_bytes: np.ndarray
    join_bytes: float


class SectionCosts:
    """Band sizes and band times of a model's sections on a chain (Intra-DP's operations).

    Args:
        profile: Model profile with row maps.
        devices: The chain.
    """

    def __init__(self, profile: ModelProfile, devices: Sequence[DeviceProfile]) -> None:
        self.profile = profile
        self.heights = block_heights(profile)
        self.sections = parallel_sections(profile)
        self.split_bytes = profile.split_bytes()
        self._lat = np.stack([profile.latency_for(d.name) for d in devices])  # (D, L)
        self._curves = [efficiency_curve(profile, d) for d in devices]
        ops = np.array([b.ops for b in profile.blocks], float)
        self._fixed = np.minimum(np.stack([c[2] * ops for c in self._curves]), self._lat)  # (D, L)
        self._grid: tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], SectionConfig] | None = None

    def section_of(self, start: int, stop: int) -> tuple[int, int] | None:
        """The parallel section holding blocks ``[start, stop)``, or None."""
        return next(((a, b) for a, b in self.sections if a <= start < stop <= b), None)

    def _band_ms(self, back: list[tuple[int, int]], start: int, stop: int) -> np.ndarray:
        """``(D, stop − start)`` time of each block's needed rows, blocks ``start..stop-1``."""
        rows = np.array([hi - lo for lo, hi in back[1:]], float)
        rho = rows / np.array(self.heights[start + 1 : stop + 1], float)
        return np.stack([part_ms(self._lat[d, start:stop], self._fixed[d, start:stop], rho, xs, ys)
                         for d, (xs, ys, _) in enumerate(self._curves)])

    @functools.lru_cache(maxsize=65536)  # noqa: B019  (one instance per SplitModel, kept with it)
    def config(self, start: int, stop: int, share: float, parts: int) -> SectionConfig:
        """Sizes of blocks ``[start, stop)`` shared with the accelerator computing ``share`` of its rows.

        Raises:
            PlanError: The blocks are not one parallel section, or a band would be empty.
        """
        if self.section_of(start, stop) is None:
            raise PlanError(f"blocks [{start}, {stop}) of {self.profile.model} are not inside one parallel "
                            f"section (sections: {self.sections or 'none'})")
        bands = section_bands(self.heights[stop], share, parts)
        if bands is None:
            raise PlanError(f"{parts} parts of {share:g} of {self.heights[stop]} rows: a part would be empty")
        D = self._lat.shape[0]
        part_ms, chunk = np.zeros((D, MAX_PARTS)), np.zeros(MAX_PARTS)
        per_row = self.split_bytes[start] / self.heights[start]
        sent = 0
        for c, band in enumerate(bands[:-1]):
            back = _back(self.profile, self.heights, start, stop, band)
            part_ms[:, c] = self._band_ms(back, start, stop).sum(axis=1)
            chunk[c] = max(back[0][1] - max(back[0][0], sent), 0) * per_row
            sent = max(sent, back[0][1])
        edge_rows = _back(self.profile, self.heights, start, stop, bands[-1])
        edge = self._band_ms(edge_rows, start, stop).sum(axis=1)
        lo, hi = bands[-1]
        join = (hi - lo) / self.heights[stop] * self.split_bytes[stop]
        return SectionConfig(edge, part_ms, chunk, float(join))

    def grid(self) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], SectionConfig]:
        """Every configuration the planner tries, ``(start, stop, share, parts)``, and their sizes.

        Configurations with an empty band are left out. The rows a band needs are traced back from
        its stop once for every start (they do not depend on where the section starts).
        """
        if self._grid is not None:
            return self._grid
        keys: list[tuple[int, int, float, int]] = []
        edge, part, chunk, join = [], [], [], []
        D = self._lat.shape[0]
        for a, b in self.sections:
            for stop in range(a + 1, b + 1):
                if self.heights[stop] < 2:
                    continue
                per_row = self.split_bytes[a:stop] / np.array(self.heights[a:stop], float)  # (S,) by start
                for share in SHARES:
                    for parts in range(1, MAX_PARTS + 1):
                        bands = section_bands(self.heights[stop], share, parts)
                        if bands is None:
                            continue
                        traced = [_back(self.profile, self.heights, a, stop, band) for band in bands]
                        # time of blocks start..stop-1 for every start a..stop-1: a suffix sum
                        ms = [np.cumsum(self._band_ms(tr, a, stop)[:, ::-1], axis=1)[:, ::-1]
                              for tr in traced]
                        p_ms = np.zeros((stop - a, D, MAX_PARTS))
                        c_bytes = np.zeros((stop - a, MAX_PARTS))
                        sent = np.zeros(stop - a)
                        for c in range(parts):
                            p_ms[:, :, c] = ms[c].T
                            lo = np.array([r[0] for r in traced[c][: stop - a]])
                            hi = np.array([r[1] for r in traced[c][: stop - a]])
                            c_bytes[:, c] = np.maximum(hi - np.maximum(lo, sent), 0) * per_row
                            sent = np.maximum(sent, hi)
                        lo, hi = bands[-1]
                        keys += [(start, stop, share, parts) for start in range(a, stop)]
                        edge.append(ms[-1].T)
                        part.append(p_ms)
                        chunk.append(c_bytes)
                        joined = (hi - lo) / self.heights[stop] * self.split_bytes[stop]
                        join.append(np.full(stop - a, joined))
        arr = np.array(keys, float).reshape(-1, 4)
        cols = (arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2], arr[:, 3].astype(np.int64))
        if not keys:
            sizes = SectionConfig(np.zeros((0, D)), np.zeros((0, D, MAX_PARTS)), np.zeros((0, MAX_PARTS)),
                                  np.zeros(0))  # type: ignore[arg-type]
        else:
            sizes = SectionConfig(np.concatenate(edge), np.concatenate(part), np.concatenate(chunk),
                                  np.concatenate(join))  # type: ignore[arg-type]
        self._grid = (cols, sizes)
        return self._grid

    def gather(self, start: np.ndarray, stop: np.ndarray, share: np.ndarray, parts: np.ndarray
               ) -> SectionConfig:
        """:meth:`config` of many configurations as stacked arrays (a leading ``P`` axis)."""
        items = [self.config(int(a), int(b), float(f), int(c))
                 for a, b, f, c in zip(start, stop, share, parts, strict=True)]
        if not items:
            D = self._lat.shape[0]
            return SectionConfig(np.zeros((0, D)), np.zeros((0, D, MAX_PARTS)), np.zeros((0, MAX_PARTS)),
                                 np.zeros(0))  # type: ignore[arg-type]
        return SectionConfig(np.stack([x.edge_ms for x in items]), np.stack([x.part_ms for x in items]),
                             np.stack([x.chunk_bytes for x in items]),
                             np.array([x.join_bytes for x in items]))  # type: ignore[arg-type]


class SectionTimes(NamedTuple):
    """One section's schedule on ``(B, P)`` conditions × plans, ms.

    Attributes:
        latency: From the end of d0's own stage to device ``j`` holding the joined output.
        edge_exec: d0's band and the codec work on its side.
        edge_proc: d0's serialisation of the chunks and of its band.
        acc_exec: Device ``j``'s bands and its decoding.
        acc_proc: Device ``j``'s deserialisation.
        acc_comm: The transfers into device ``j`` (chunks and join).
    """

    latency: np.ndarray
    edge_exec: np.ndarray
    edge_proc: np.ndarray
    acc_exec: np.ndarray
    acc_proc: np.ndarray
    acc_comm: np.ndarray


def section_schedule(model: Any, cb: Any, j: int, codec: np.ndarray, cfg: SectionConfig, *,
                     breakdown: bool = True) -> SectionTimes:
    """Critical path of ``P`` sections between d0 and device ``j`` (``docs/model.md``, "Parallel sections").

    ``model`` is the :class:`~adaptive.model.latency.SplitModel` (its transfer and scaling terms) and
    ``cb`` a :class:`~adaptive.model.latency.ConditionBatch` of ``B`` conditions (that module uses
    this one).

    d0 encodes and serialises the chunks, then computes its band while the link carries the chunks
    in order; device ``j`` computes band ``c`` once chunk ``c`` has arrived and band ``c − 1`` is done;
    d0's band follows the last chunk over the link; device ``j`` holds the joined output once both
    its bands and d0's band are in. ``breakdown=False`` leaves the busy times zero.
    """
    scale, slow = model.exec_scale(cb), model.load_slowdown(cb)  # (B, D)
    P, C = cfg.chunk_bytes.shape
    used = cfg.chunk_bytes > 0  # (P, C): a band whose input rows all came with earlier chunks sends none
    chunks = model.transfer(0, j, cfg.chunk_bytes, np.broadcast_to(codec[:, None], (P, C)), cb, naive=False)
    join = model.transfer(0, j, cfg.join_bytes, codec, cb, naive=False)  # each (B, P)
    enc_c = np.where(used, chunks.enc_src, 0.0) * slow[:, 0, None, None]
    out_c = np.where(used, chunks.out_src, 0.0)
    ready = np.cumsum(enc_c + out_c, axis=2)
    comm = np.where(used, chunks.comm, 0.0)
    dec_c = np.where(used, chunks.dec_dst, 0.0) * slow[:, j, None, None]
    in_c = np.where(used, chunks.in_dst, 0.0)
    part = cfg.part_ms[:, j, :][None] * scale[:, j, None, None]
    sent = np.zeros((len(cb.clients), P))
    done = np.zeros_like(sent)
    for c in range(C):
        sent = np.maximum(sent, ready[:, :, c]) + comm[:, :, c]
        done = np.maximum(sent, done) + in_c[:, :, c] + dec_c[:, :, c] + part[:, :, c]
    edge_band = cfg.edge_ms[:, 0][None] * scale[:, 0, None]
    enc_j, dec_j = join.enc_src * slow[:, 0, None], join.dec_dst * slow[:, j, None]
    edge_ready = ready[:, :, -1] + edge_band + enc_j + join.out_src
    finish = np.maximum(np.maximum(edge_ready, sent) + join.comm, done) + join.in_dst + dec_j
    if not breakdown:  # the latency alone (the planner's latency objective): no busy-time sums
        zero = np.zeros(())
        return SectionTimes(finish, zero, zero, zero, zero, zero)
    return SectionTimes(
        latency=finish,
        edge_exec=edge_band + enc_c.sum(axis=2) + enc_j,
        edge_proc=out_c.sum(axis=2) + join.out_src,
        acc_exec=part.sum(axis=2) + dec_c.sum(axis=2) + dec_j,
        acc_proc=in_c.sum(axis=2) + join.in_dst,
        acc_comm=comm.sum(axis=2) + join.comm,
    )


def section_bytes(model: Any, start: int, section: Any) -> float:
    """Raw bytes a section sends from d0: its chunks (the accelerator's input rows) and the join."""
    cfg = model.section_costs.config(start, section.stop, section.share, section.parts)
    return float(cfg.chunk_bytes.sum() + cfg.join_bytes)


def first_stage(splits: Sequence[int] | np.ndarray, num_blocks: int) -> int:
    """The first device after d0 that runs a stage (0 if none does)."""
    bounds = [*(int(x) for x in splits), num_blocks]
    return next((m + 1 for m in range(len(bounds) - 1) if bounds[m + 1] > bounds[m]), 0)


def check_sections(model: Any, plans: Any) -> None:
    """Raise :class:`PlanError` unless every section of ``plans`` fits ``model`` (a ``SplitModel``).

    The section starts at d0's split and leaves device ``j`` a block, its blocks are one parallel
    section with no empty band, and its codec is available at both ends.
    """
    L = model.num_blocks
    for p in np.flatnonzero(plans.stop > 0):
        splits = [int(x) for x in plans.splits[p]]
        section = plans.section_of(int(p))
        validate_section(splits, section, L)
        model.section_costs.config(splits[0], section.stop, section.share, section.parts)
        k = int(plans.codecs[p, first_stage(splits, L) - 1])
        if k and not model.codec_allowed[k, section.stop]:
            raise PlanError(f"codec {model.codec_names[k]} is not available at the section's end "
                            f"({section.stop})")


def add_sections(model: Any, plans: Any, lop: np.ndarray, cb: Any, exec_ms: np.ndarray, proc: np.ndarray,
                 comm: np.ndarray) -> np.ndarray:
    """Add the schedules of plans ``lop`` to the ``(D, B, P)`` components; return their overlapping busy time.

    A plan's latency is its components' sum less that overlap: the section's critical path replaces
    the sum of its work.
    """
    overlap = np.zeros((len(cb.clients), lop.size))
    bounds = np.column_stack([plans.splits[lop], np.full(lop.size, model.num_blocks)])
    grows = np.diff(bounds, axis=1) > 0  # first_stage for every plan at once
    first = np.where(grows.any(axis=1), grows.argmax(axis=1) + 1, 0)
    parts = plans.parts[lop]
    for j, c in sorted({(int(a), int(b)) for a, b in zip(first, parts, strict=True)}):
        sel = np.flatnonzero((first == j) & (parts == c))  # one pass per device and band count:
        rows = lop[sel]  # no empty bands computed
        cfg = model.section_costs.gather(plans.splits[rows, 0], plans.stop[rows], plans.share[rows],
                                         plans.parts[rows])
        cfg = SectionConfig(cfg.edge_ms, cfg.part_ms[:, :, :c], cfg.chunk_bytes[:, :c], cfg.join_bytes)
        t = section_schedule(model, cb.plans(rows), j, plans.codecs[rows, j - 1], cfg)
        exec_ms[0][:, rows] += t.edge_exec
        proc[0][:, rows] += t.edge_proc
        exec_ms[j][:, rows] += t.acc_exec
        proc[j][:, rows] += t.acc_proc
        comm[j][:, rows] += t.acc_comm
        work = t.edge_exec + t.edge_proc + t.acc_exec + t.acc_proc + t.acc_comm
        overlap[:, sel] = work - t.latency
    return overlap
