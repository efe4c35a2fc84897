"""Split plans: validation and vectorised enumeration.

A chain of devices ``[d0, …, dM]`` (d0 holds the input) runs a model of ``L`` blocks. A plan is
``splits = [s1, …, sM]`` with ``0 ≤ s1 ≤ … ≤ sM ≤ L``; device ``m`` runs blocks
``[s_m, s_{m+1})`` with ``s_0 = 0`` and ``s_{M+1} = L``. An empty stage skips its device.
``[L, …, L]`` is device-only; ``[0, …, 0]`` offloads everything past d0.

Each split may carry an activation codec (index 0 is ``"none"``). The codec at split ``m``
applies to the activation sent *into* device ``m``; it only matters when device ``m`` runs a
non-empty stage, so enumeration keeps it at 0 otherwise (one canonical plan per behaviour).

A plan may also carry a *parallel section* (Intra-DP's local operation parallelism, seed 001
Sec. 4): blocks ``[s1, stop)`` right after d0's stage, computed by d0 and the first device after it
that runs a stage (device ``j``) at once, on bands of rows. Device ``j`` computes the top
``share`` of the section's output rows, in ``parts`` bands, from input rows d0 streams to it; d0
computes the rest and sends it at the section's end; device ``j`` then runs ``[stop, s_{j+1})``,
which must not be empty. The codec of the split into ``j`` applies to every transfer of the
section. Label: ``5-8@0.75,12`` (``5-8@0.75x2,12`` with two parts, ``/int8,none`` for codecs).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from math import comb

import numpy as np

from adaptive.errors import PlanError
from adaptive.protocol.fields import MAX_SECTION_PARTS, SchemaError, section_field, section_json

__all__ = [
    "PLAN_SCHEMA",
    "SHARES",
    "Plan",
    "PlanArray",
    "Section",
    "count_plans",
    "count_splits",
    "enumerate_plans",
    "enumerate_splits",
    "parse_plan",
    "parse_plan_label",
    "plan_label",
    "validate_section",
    "validate_splits",
]


PLAN_SCHEMA = "adaptive.split-plan/v1"
SHARES: tuple[float, ...] = tuple(k / 8 for k in range(1, 8))  # accelerator row shares the planner tries
MAX_PARTS = MAX_SECTION_PARTS  # the wire's limit (adaptive.protocol.fields)
_SECTION_LABEL = re.compile(r"^(\d+)-(\d+)@([0-9.]+)(?:x(\d+))?$")


@dataclass(frozen=True)
class Section:
    """A parallel section at d0's boundary: blocks ``[s1, stop)`` shared by rows.

    Attributes:
        stop: End block (exclusive) of the section; it starts at the plan's first split.
        share: Share of the section's output rows the accelerator computes, in (0, 1).
        parts: Bands the accelerator's share is cut into (each streamed and computed in turn).
    """

    stop: int
    share: float
    parts: int = 1

    @property
    def wire(self) -> tuple[int, float, int]:
        """``(stop, share, parts)``: the section as plan and rule messages carry it."""
        return self.stop, self.share, self.parts

    def __post_init__(self) -> None:
        if not 0.0 < self.share < 1.0:
            raise PlanError(f"a section's accelerator share must be in (0, 1), found {self.share}")
        if not 1 <= self.parts <= MAX_PARTS:
            raise PlanError(f"a section has 1..{MAX_PARTS} accelerator parts, found {self.parts}")


@dataclass(frozen=True)
class Plan:
    """One split plan.

    Attributes:
        splits: ``[s1, …, sM]``, non-decreasing, each in ``0..L``.
        codecs: Codec name per split (``"none"`` for raw activations); empty means all none.
        section: A parallel section at d0's boundary (None: a plan of layer splits only).
    """

    splits: tuple[int, ...]
    codecs: tuple[str, ...] = ()
    section: Section | None = None

    @property
    def label(self) -> str:
        """The plan as :func:`plan_label` writes it."""
        return plan_label(self.splits, self.codecs, self.section)

    def to_json(self) -> dict[str, object]:
        """The versioned JSON form (``adaptive.split-plan/v1``)."""
        doc: dict[str, object] = {"schema": PLAN_SCHEMA, "splits": list(self.splits)}
        if any(c != "none" for c in self.codecs):
            doc["codecs"] = list(self.codecs)
        if self.section is not None:
            doc["section"] = section_json(self.section.wire)
        return doc

    @classmethod
    def from_json(cls, doc: object) -> Plan:
        """A plan from :meth:`to_json`'s form (shape checked; fit to a model by the model).

        Raises:
            PlanError: Not an ``adaptive.split-plan/v1`` object, or a field of the wrong type.
        """
        if isinstance(doc, str):
            try:
                doc = json.loads(doc)
            except ValueError as exc:
                raise PlanError(f"plan: not JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("schema") != PLAN_SCHEMA:
            raise PlanError(f"plan: expected an object with schema '{PLAN_SCHEMA}'")
        splits, codecs, sec = doc.get("splits"), doc.get("codecs", []), doc.get("section")
        if not isinstance(splits, list) or not all(_is_int(s) and s >= 0 for s in splits):
            raise PlanError("plan: field 'splits': expected a list of integers >= 0")
        if not isinstance(codecs, list) or not all(isinstance(c, str) for c in codecs):
            raise PlanError("plan: field 'codecs': expected a list of codec names")
        try:
            wire = section_field(doc, "plan", splits) if sec is not None else None
        except SchemaError as exc:
            raise PlanError(str(exc)) from None
        section = Section(*wire) if wire else None
        extra = set(doc) - {"schema", "splits", "codecs", "section"}
        if extra:
            raise PlanError(f"plan: unknown field(s) {sorted(extra)}")
        return cls(tuple(splits), tuple(codecs), section)

    def stages(self, num_blocks: int) -> list[tuple[int, int]]:
        """Block range ``[start, stop)`` of every device, d0 first."""
        bounds = [0, *self.splits, num_blocks]
        return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class PlanArray:
    """Many plans as arrays, for vectorised evaluation.

    Attributes:
        splits: ``(P, M)`` integer array of split positions.
        codecs: ``(P, M)`` integer array of codec indices (0 = none).
        stop: ``(P,)`` end block of each plan's parallel section, 0 for none (None: no sections).
        share: ``(P,)`` the accelerator's share of the section's output rows.
        parts: ``(P,)`` the accelerator's bands.
    """

    splits: np.ndarray
    codecs: np.ndarray
    stop: np.ndarray | None = None
    share: np.ndarray | None = None
    parts: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.splits.shape != self.codecs.shape or self.splits.ndim != 2:
            raise PlanError(
                f"splits and codecs must both be (P, M) arrays, found {self.splits.shape} "
                f"and {self.codecs.shape}"
            )
        given = [x is not None for x in (self.stop, self.share, self.parts)]
        if any(given) and not all(given):
            raise PlanError("a section needs stop, share and parts arrays together")
        shapes = {np.shape(x) for x in (self.stop, self.share, self.parts)}
        if all(given) and shapes != {(len(self.splits),)}:
            raise PlanError(f"section arrays must be ({len(self.splits)},)")

    @property
    def has_sections(self) -> bool:
        """Whether any plan carries a parallel section."""
        return self.stop is not None and bool(np.any(self.stop > 0))

    def __len__(self) -> int:
        return int(self.splits.shape[0])

    @classmethod
    def from_rows(cls, splits: np.ndarray, codecs: np.ndarray, sections: Sequence[Section | None]
                  ) -> PlanArray:
        """Plans from ``(P, M)`` splits and codec indices and a section (or None) each.

        The section arrays exist only where some plan has a section.
        """
        if not any(sections):
            return cls(splits, codecs)
        return cls(splits, codecs, np.array([x.stop if x else 0 for x in sections], np.int64),
                   np.array([x.share if x else 0.0 for x in sections]),
                   np.array([x.parts if x else 1 for x in sections], np.int64))

    @classmethod
    def from_splits(cls, splits: np.ndarray | Sequence[Sequence[int]]) -> PlanArray:
        """Plans without codecs from an ``(P, M)`` array-like of split positions."""
        s = np.atleast_2d(np.asarray(splits, dtype=np.int64))
        return cls(s, np.zeros_like(s))

    def take(self, index: np.ndarray | int) -> PlanArray:
        """Subset of the plans (keeps 2-D shape)."""
        idx = np.atleast_1d(index)
        if self.stop is None:
            return PlanArray(self.splits[idx], self.codecs[idx])
        return PlanArray(self.splits[idx], self.codecs[idx], self.stop[idx], self.share[idx],  # type: ignore[index]
                         self.parts[idx])  # type: ignore[index]

    @classmethod
    def concat(cls, arrays: Sequence[PlanArray]) -> PlanArray:
        """The plans of several arrays, in order (section arrays where any has them)."""
        splits = np.concatenate([a.splits for a in arrays])
        codecs = np.concatenate([a.codecs for a in arrays])
        if all(a.stop is None for a in arrays):
            return cls(splits, codecs)
        cols = [[a.stop, a.share, a.parts] if a.stop is not None else
                [np.zeros(len(a), np.int64), np.zeros(len(a)), np.ones(len(a), np.int64)] for a in arrays]
        return cls(splits, codecs, *(np.concatenate([c[i] for c in cols]) for i in range(3)))

    def section_of(self, index: int) -> Section | None:
        """The parallel section of plan ``index`` (None for a layer plan)."""
        if self.stop is None or self.stop[index] <= 0:
            return None
        return Section(int(self.stop[index]), float(self.share[index]), int(self.parts[index]))  # type: ignore[index]


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


def plan_label(splits: Iterable[int], codecs: Iterable[str] = (), section: Section | None = None) -> str:
    """A plan as one short string: ``3,7``, ``3,7/int8,none`` (codecs), ``3-5@0.75,7`` (a section)."""
    codecs, parts = tuple(codecs), [str(x) for x in splits]
    if section is not None and parts:
        parts[0] += f"-{section.stop}@{section.share:g}" + (f"x{section.parts}" if section.parts > 1 else "")
    text = ",".join(parts)
    return text + "/" + ",".join(codecs) if any(c != "none" for c in codecs) else text


def parse_plan(label: str, num_blocks: int, num_devices: int,
               codec_names: Sequence[str] = ("none",)
               ) -> tuple[tuple[int, ...], tuple[int, ...], Section | None]:
    """``(splits, codec indices, section)`` of a label: ``3,7``, ``3,7/int8,none``, ``3-5@0.5,7``.

    The section is checked against the splits (its stop leaves the next stage a block); whether its
    blocks are a parallel section of the model is the model's check.

    Raises:
        PlanError: Not a label, or not a valid plan of this model and chain.
    """
    head, _, tail = str(label).partition("/")
    items, section = head.split(","), None
    match = _SECTION_LABEL.match(items[0])
    try:
        if match:
            items[0] = match.group(1)
            section = Section(int(match.group(2)), float(match.group(3)), int(match.group(4) or 1))
        splits = tuple(int(x) for x in items)
    except (ValueError, PlanError) as exc:
        detail = f" ({exc})" if isinstance(exc, PlanError) else ""
        raise PlanError(f"plan '{label}': expected splits like 3,7 or 3,7/int8,none or 3-5@0.5,7"
                        f"{detail}") from None
    try:
        validate_splits(splits, num_blocks, num_devices)
        if section is not None:
            validate_section(splits, section, num_blocks)
    except PlanError as exc:
        raise PlanError(f"plan '{label}': {exc}") from None
    names = tuple(tail.split(",")) if tail else ("none",) * len(splits)
    if len(names) != len(splits) or any(n not in codec_names for n in names):
        raise PlanError(f"plan '{label}': expected {len(splits)} codecs of {', '.join(codec_names)}")
    return splits, tuple(codec_names.index(n) for n in names), section


def parse_plan_label(label: str, num_blocks: int, num_devices: int,
                     codec_names: Sequence[str] = ("none",)) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(splits, codec indices)`` of a layer plan's label (:func:`parse_plan` refuses none with a section).

    Raises:
        PlanError: Not a label, not a valid plan of this model and chain, or a plan with a section.
    """
    splits, codecs, section = parse_plan(label, num_blocks, num_devices, codec_names)
    if section is not None:
        raise PlanError(f"plan '{label}': a parallel section is not allowed here (layer plans only)")
    return splits, codecs


def validate_section(splits: Sequence[int], section: Section, num_blocks: int) -> None:
    """Check a section against its plan's splits: it starts at ``s1`` and leaves device ``j`` a block.

    Raises:
        PlanError: No device after d0, the section is empty, or it takes device ``j``'s whole stage.
    """
    if not splits:
        raise PlanError("a parallel section needs a device after the first")
    bounds = [*splits, num_blocks]
    j = next((m for m in range(len(splits)) if bounds[m + 1] > bounds[m]), None)
    if j is None:
        raise PlanError("a parallel section needs a device after the first that runs a stage")
    if not splits[0] < section.stop < bounds[j + 1]:
        raise PlanError(f"section [{splits[0]}, {section.stop}) must end after block {splits[0]} and "
                        f"before the next stage's end ({bounds[j + 1]})")
