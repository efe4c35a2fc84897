"""Parsing helpers shared by subcommands: lists of numbers with one-line errors."""

from __future__ import annotations

import math

from adaptive.errors import AdaptiveError

__all__ = ["parse_floats", "parse_grid", "parse_ints", "parse_names"]


def parse_names(text: str, option: str) -> list[str]:
    """Split a comma-separated list of names; empty items are an error."""
    items = [t.strip() for t in text.split(",")]
    if not items or any(not t for t in items):
        raise AdaptiveError(f"{option}: expected a comma-separated list of names, found '{text}'")
    return items


def parse_floats(
    text: str, option: str, *, minimum: float | None = None, positive: bool = False,
    maximum: float | None = None, unit: str = "",
) -> list[float]:
    """Parse ``"1.5,2"``; every value must be finite and within the given range."""
    out = []
    for item in text.split(","):
        item = item.strip()
        try:
            value = float(item)
        except ValueError:
            raise AdaptiveError(f"{option}: expected numbers{unit}, found '{item}'") from None
        if not math.isfinite(value):
            raise AdaptiveError(f"{option}: expected finite numbers{unit}, found '{item}'")
        if positive and value <= 0:
            raise AdaptiveError(f"{option}: expected values > 0{unit}, found '{item}'")
        if minimum is not None and value < minimum:
            raise AdaptiveError(f"{option}: expected values >= {minimum}{unit}, found '{item}'")
        if maximum is not None and value > maximum:
            raise AdaptiveError(f"{option}: expected values <= {maximum}{unit}, found '{item}'")
        out.append(value)
    return out


def parse_ints(text: str, option: str) -> list[int]:
    """Parse ``"2,5"`` as integers."""
    out = []
    for item in text.split(","):
        item = item.strip()
        try:
            out.append(int(item))
        except ValueError:
            raise AdaptiveError(f"{option}: expected integers, found '{item}'") from None
    return out


def parse_grid(text: str, option: str) -> list[float]:
    """Parse ``START:STOP:STEP`` (inclusive of STOP when the step lands on it)."""
    parts = text.split(":")
    if len(parts) != 3:
        raise AdaptiveError(f"{option}: expected START:STOP:STEP, found '{text}'")
    start, stop, step = (parse_floats(p, option)[0] for p in parts)
    if step <= 0 or stop < start:
        raise AdaptiveError(f"{option}: expected STEP > 0 and STOP >= START, found '{text}'")
    n = math.floor((stop - start) / step + 1e-9) + 1
    if n > 100_000:
        raise AdaptiveError(f"{option}: grid has {n} points; at most 100000")
    return [start + i * step for i in range(n)]
