"""Error types raised for user mistakes.

Every error here carries a one-line message that names what was wrong and what was expected.
The CLI prints the message and exits with code 2; library callers catch :class:`AdaptiveError`
(a :class:`ValueError`) or one of its subclasses.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["MAX_INPUT_BYTES", "AdaptiveError", "PlanError", "ProfileError", "read_input"]

MAX_INPUT_BYTES = 64 * 1024 * 1024  # no configuration, profile, scenario or trace is larger


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


def read_input(path: str | Path, what: str, max_bytes: int = MAX_INPUT_BYTES) -> str:
    """The text of a file the user named, or one :class:`AdaptiveError` line saying why not.

    Refused: a missing path, a directory, anything but a regular file (a FIFO would block, a
    device never end), more than ``max_bytes``, bytes that are not UTF-8 text, an empty file.

    Args:
        path: The file.
        what: What the file should be, with its article, for the message (``"a scenario (YAML)"``).
        max_bytes: Largest file accepted.
    """
    p = Path(path)
    try:
        info = os.stat(p)
    except FileNotFoundError:
        raise AdaptiveError(f"{p}: no such file (expected {what})") from None
    except OSError as exc:
        raise AdaptiveError(f"{p}: cannot read it ({exc.strerror}; expected {what})") from None
    if stat.S_ISDIR(info.st_mode):
        raise AdaptiveError(f"{p}: is a directory (expected {what})")
    if not stat.S_ISREG(info.st_mode):
        raise AdaptiveError(f"{p}: not a regular file (expected {what})")
    if info.st_size > max_bytes:
        raise AdaptiveError(f"{p}: {info.st_size / 2**20:.0f} MiB, more than the {max_bytes / 2**20:.0f} MiB "
                            f"{what} may be")
    try:
        with open(p, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise AdaptiveError(f"{p}: cannot read it ({exc.strerror}; expected {what})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AdaptiveError(f"{p}: not UTF-8 text (binary?); expected {what}") from None
    if "\x00" in text:
        raise AdaptiveError(f"{p}: holds NUL bytes (binary?); expected {what}")
    if not text.strip():
        raise AdaptiveError(f"{p}: empty (expected {what})")
    return text
