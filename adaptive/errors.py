"""Error types raised for user mistakes.

Every error here carries a one-line message that names what was wrong and what was expected.
The CLI prints the message and exits with code 2; library callers catch :class:`AdaptiveError`
(a :class:`ValueError`) or one of its subclasses.
"""

from __future__ import annotations

__all__ = ["AdaptiveError", "PlanError", "ProfileError"]


class AdaptiveError(ValueError):
    """Base class for errors caused by bad input (files, arguments, messages)."""


class ProfileError(AdaptiveError):
    """A device or model profile is missing, malformed, or inconsistent.

    Args:
        source: The file (or other origin) the profile came from.
        field: Dotted path of the offending field, or ``""`` for the whole document.
        problem: What is wrong, phrased as "expected X, found Y" where possible.
    """

    def __init__(self, source: str, field: str, problem: str) -> None:
        self.source = source
        self.field = field
        self.problem = problem
        where = f"field '{field}': " if field else ""
        super().__init__(f"{source}: {where}{problem}")


class PlanError(AdaptiveError):
    """A split plan or the conditions it is evaluated under are invalid."""
