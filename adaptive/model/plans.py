"""Split plans: validation and vectorised enumeration.

A chain of devices ``[d0, …, dM]`` (d0 holds the input) runs a model of ``L`` blocks. A plan is
``splits = [s1, …, sM]`` with ``0 ≤ s1 ≤ … ≤ sM ≤ L``; device ``m`` runs blocks
``[s_m, s_{m+1})`` with ``s_0 = 0`` and ``s_{M+1} = L``. An empty stage skips its device.
``[L, …, L]`` is device-only; ``[0, …, 0]`` offloads everything past d0.

Each split may carry an activation codec (index 0 is ``"none"``). The codec at split ``m``
applies to the activation sent *into* device ``m``; it only matters when device ``m`` runs a
non-empty stage, so enumeration keeps it at 0 otherwise (one canonical plan per behaviour).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from math import comb

import numpy as np

from adaptive.errors import PlanError

__all__ = [
    "Plan",
    "PlanArray",
    "count_plans",
    "count_splits",
    "enumerate_plans",
    "enumerate_splits",
    "parse_plan_label",
    "plan_label",
    "validate_splits",
]


@dataclass(frozen=True)
class Plan:
    """One split plan.

    Attributes:
        splits: ``[s1, …, sM]``, non-decreasing, each in ``0..L``.
        codecs: Codec name per split (``"none"`` for raw activations); empty means all none.
    """

    splits: tuple[int, ...]
    codecs: tuple[str, ...] = ()

    def stages(self, num_blocks: int) -> list[tuple[int, int]]:
        """Block range ``[start, stop)`` of every device, d0 first."""
        bounds = [0, *self.splits, num_blocks]
        return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


@dataclass(frozen=True)
class PlanArray:
    """Many plans as arrays, for vectorised evaluation.

    Attributes:
        splits: ``(P, M)`` integer array of split positions.
        codecs: ``(P, M)`` integer array of codec indices (0 = none).
    """

    splits: np.ndarray
    codecs: np.ndarray

    def __post_init__(self) -> None:
        if self.splits.shape != self.codecs.shape or self.splits.ndim != 2:
            raise PlanError(
                f"splits and codecs must both be (P, M) arrays, found {self.splits.shape} "
                f"and {self.codecs.shape}"
            )

    def __len__(self) -> int:
        return int(self.splits.shape[0])

    @classmethod
    def from_splits(cls, splits: np.ndarray | Sequence[Sequence[int]]) -> PlanArray:
        """Plans without codecs from an ``(P, M)`` array-like of split positions."""
        s = np.atleast_2d(np.asarray(splits, dtype=np.int64))
        return cls(s, np.zeros_like(s))

    def take(self, index: np.ndarray | int) -> PlanArray:
        """Subset of the plans (keeps 2-D shape)."""
        idx = np.atleast_1d(index)
        return PlanArray(self.splits[idx], self.codecs[idx])


def validate_splits(splits: Sequence[int], num_blocks: int, num_devices: int) -> tuple[int, ...]:
    """Check a split vector and return it as a tuple of ints.

    Raises:
        PlanError: Wrong length, a value outside ``0..num_blocks``, or a decreasing pair.
    """
    m = num_devices - 1
    values = tuple(int(s) for s in splits)
    if len(values) != m:
        raise PlanError(
            f"expected {m} split(s) for {num_devices} devices, found {len(values)}: {list(values)}"
        )
    for i, s in enumerate(values):
        if not 0 <= s <= num_blocks:
            raise PlanError(f"split {i + 1} = {s} is out of range 0..{num_blocks}")
    for i in range(1, m):
        if values[i] < values[i - 1]:
            raise PlanError(f"splits must be non-decreasing, found {values[i - 1]} then {values[i]}")
    return values


def count_splits(num_blocks: int, num_splits: int) -> int:
    """Number of non-decreasing split vectors: ``C(L + M, M)``."""
    return comb(num_blocks + num_splits, num_splits)


def count_plans(num_blocks: int, num_devices: int, codec_allowed: np.ndarray | None = None) -> int:
    """Number of plans :func:`enumerate_plans` yields, computed without enumerating them.

    Counts backwards over splits: ``f_m(v)`` is the number of ways to choose splits ``m..M``
    with ``s_m = v``; a split feeding a non-empty stage has one option per allowed codec.
    """
    m_splits = num_devices - 1
    if m_splits == 0:
        return 1
    L = num_blocks
    options = [1] * (L + 1) if codec_allowed is None else [int(x) for x in codec_allowed.sum(axis=0)]
    f = [0] * (L + 1)
    f[L] = 1  # s_{M+1} = L
    for _ in range(m_splits):
        suffix, new = 0, [0] * (L + 1)
        for v in range(L, -1, -1):
            new[v] = f[v] + options[v] * suffix  # empty stage (next split = v), or later
            suffix += f[v]
        f = new
    return sum(f)


def enumerate_splits(num_blocks: int, num_splits: int) -> np.ndarray:
    """All non-decreasing ``(P, M)`` split vectors with values in ``0..L``, in lexicographic order.

    Built column by column with numpy (no Python loop over plans), so a few million plans
    take well under a second.
    """
    if num_splits == 0:
        return np.zeros((1, 0), dtype=np.int64)
    L = num_blocks
    out = np.arange(L + 1, dtype=np.int64)[:, None]
    for _ in range(num_splits - 1):
        last = out[:, -1]
        counts = L + 1 - last
        rows = np.repeat(np.arange(len(out)), counts)
        # within each repeated group, the new value runs last, last+1, …, L
        starts = np.cumsum(counts) - counts
        offsets = np.arange(len(rows)) - np.repeat(starts, counts)
        new = last[rows] + offsets
        out = np.column_stack([out[rows], new])
    return out


def enumerate_plans(
    num_blocks: int,
    num_devices: int,
    codec_allowed: np.ndarray | None = None,
) -> PlanArray:
    """Every canonical plan over a chain, optionally with a codec choice per used split.

    Args:
        num_blocks: ``L``, the number of blocks.
        num_devices: Chain length ``M + 1`` (at least 1).
        codec_allowed: Optional ``(K, L + 1)`` boolean array: codec ``k`` may be used at split
            position ``s``. Row 0 (no codec) must be all true. ``None`` means no codecs.

    Returns:
        All plans. Without codecs there are ``C(L + M, M)``; with codecs, each split that feeds a
        non-empty stage is expanded over the codecs allowed at its position.
    """
    splits = enumerate_splits(num_blocks, num_devices - 1)
    codecs = np.zeros_like(splits)
    if codec_allowed is None or codec_allowed.shape[0] <= 1 or splits.shape[1] == 0:
        return PlanArray(splits, codecs)
    bounds = np.column_stack([splits, np.full(len(splits), num_blocks)])
    feeds = bounds[:, 1:] > bounds[:, :-1]  # split m feeds a non-empty stage m
    for m in range(splits.shape[1]):
        options = codec_allowed[:, splits[:, m]].T & feeds[:, m : m + 1]  # (P, K)
        options[:, 0] = True
        reps = options.sum(axis=1)
        rows = np.repeat(np.arange(len(splits)), reps)
        choice = np.nonzero(options)[1]
        splits, codecs = splits[rows], codecs[rows]
        codecs[:, m] = choice
        feeds = feeds[rows]
    return PlanArray(splits, codecs)


def plan_label(splits: Iterable[int], codecs: Iterable[str] = ()) -> str:
    """A plan as one short string: ``3,7``, or ``3,7/int8,none`` when it compresses."""
    codecs = tuple(codecs)
    text = ",".join(str(x) for x in splits)
    return text + "/" + ",".join(codecs) if any(c != "none" for c in codecs) else text


def parse_plan_label(label: str, num_blocks: int, num_devices: int,
                     codec_names: Sequence[str] = ("none",)) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(splits, codec indices)`` of a :func:`plan_label` (``3,7`` or ``3,7/int8,none``).

    Raises:
        PlanError: Not a label, or not a valid plan of this model and chain.
    """
    head, _, tail = str(label).partition("/")
    try:
        splits = tuple(int(x) for x in head.split(","))
    except ValueError:
        raise PlanError(f"plan '{label}': expected splits like 3,7 or 3,7/int8,none") from None
    try:
        validate_splits(splits, num_blocks, num_devices)
    except PlanError as exc:
        raise PlanError(f"plan '{label}': {exc}") from None
    names = tuple(tail.split(",")) if tail else ("none",) * len(splits)
    if len(names) != len(splits) or any(n not in codec_names for n in names):
        raise PlanError(f"plan '{label}': expected {len(splits)} codecs of {', '.join(codec_names)}")
    return splits, tuple(codec_names.index(n) for n in names)
