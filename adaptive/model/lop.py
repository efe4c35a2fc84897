"""Local operation parallelism (Intra-DP, seed 001 Sec. 4) in the model: sections and their rows.

Numpy-free and torch-free: the row map of every local block is in the model profile
(``blocks[].rows``, written by ``adaptive profile model`` from :func:`adaptive.nn.spatial.block_rows`).
Names map to the seed's terms: a *local operator* is a block with a row map; a *parallel section*
(:func:`parallel_sections`) is a run of them; an *operation* is the computation of one band of a
section's output rows from the band of input rows it needs (:func:`input_band`), the halo included
(the seed's *replication*: rows both sides compute or send).
"""

from __future__ import annotations

from adaptive.errors import PlanError
from adaptive.model.profiles import ModelProfile

__all__ = ["block_heights", "input_band", "parallel_sections"]


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
