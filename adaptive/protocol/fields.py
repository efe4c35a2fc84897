"""Field checks shared by every message of the MQTT contract: ids, numbers, strings, JSON.

Standard library only (the monitor runs on a bare Raspberry Pi). Each check either returns the
value or raises :class:`SchemaError` with one line naming the field and the problem.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = ["MAX_EPOCH", "MAX_PAYLOAD_BYTES", "MAX_RULE_BYTES", "MAX_SECTION_PARTS", "MAX_VERSION", "VERSION",
           "SchemaError", "check_id", "check_version", "devices_field", "dump_payload", "epoch_field",
           "integer", "json_object", "load_payload", "number", "section_field", "section_json",
           "string"]

VERSION = 1
MAX_VERSION = 2**31 - 1  # a plan or rule counter, within one controller epoch
MAX_EPOCH = 2**53 - 1  # a controller epoch: its start, Unix time in ms (exact in any JSON reader)
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_RULE_BYTES = 256 * 1024  # a policy rule carries its network
MAX_SECTION_PARTS = 4  # bands a parallel section's accelerator share may be cut into
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class SchemaError(ValueError):
    """A message or topic does not follow the v1 contract."""


def check_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a valid cluster or node id (no MQTT wildcards or slashes)."""
    if not isinstance(value, str) or not _ID.match(value):
        raise SchemaError(f"{what} must match {_ID.pattern} (letters, digits, . _ -), found {value!r}")
    return value


def number(obj: dict[str, Any], key: str, where: str, *, lo: float | None = None,
         hi: float | None = None, optional: bool = False, allow_null: bool = False) -> float | None:
    """The number at ``obj[key]``, finite and within ``[lo, hi]``; None if optional and absent."""
    if key not in obj:
        if optional:
            return None
        raise SchemaError(f"{where}: field '{key}' is required")
    value = obj[key]
    if value is None and allow_null:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SchemaError(f"{where}: field '{key}': expected a finite number, found {value!r}"[:200])
    if lo is not None and value < lo:
        raise SchemaError(f"{where}: field '{key}': expected >= {lo}, found {value}")
    if hi is not None and value > hi:
        raise SchemaError(f"{where}: field '{key}': expected <= {hi}, found {value}")
    return float(value)


def json_object(obj: Any, where: str) -> dict[str, Any]:
    """``obj`` if it is a JSON object (a dict)."""
    if not isinstance(obj, dict):
        raise SchemaError(f"{where}: expected a JSON object, found {type(obj).__name__}")
    return obj


def string(obj: dict[str, Any], key: str, where: str, *, optional: bool = False) -> str | None:
    """The string at ``obj[key]`` (at most 256 characters); None if optional and absent."""
    if key not in obj and optional:
        return None
    value = obj.get(key)
    if not isinstance(value, str) or len(value) > 256:
        raise SchemaError(f"{where}: field '{key}': expected a string, found {value!r}"[:200])
    return value


def integer(obj: dict[str, Any], key: str, where: str, lo: int = 0, hi: int | None = None) -> int:
    """The integer at ``obj[key]``, in ``[lo, hi]`` (booleans are not integers)."""
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise SchemaError(f"{where}: field '{key}': expected an integer {bound}, found {value!r}"[:200])
    return value


def epoch_field(obj: dict[str, Any], where: str) -> int:
    """The optional ``epoch`` of a plan, rule or ack (0 when absent: a sender before epochs)."""
    return integer(obj, "epoch", where, 0, MAX_EPOCH) if "epoch" in obj else 0


def devices_field(obj: dict[str, Any], where: str, limit: int) -> list[str]:
    """The ``devices`` field: 1..``limit`` distinct node ids."""
    devices = obj.get("devices")
    if not isinstance(devices, list) or not 1 <= len(devices) <= limit:
        raise SchemaError(f"{where}: field 'devices': expected a list of 1..{limit} node ids")
    devices = [check_id(d, f"{where}: device") for d in devices]
    if len(set(devices)) != len(devices):
        raise SchemaError(f"{where}: field 'devices': node ids must be distinct")
    return devices


def check_version(obj: dict[str, Any], where: str) -> None:
    """Refuse a message whose ``v`` is not this contract's version."""
    if obj.get("v") != VERSION:
        raise SchemaError(f"{where}: field 'v': expected {VERSION}, found {obj.get('v')!r}"[:200])


def load_payload(payload: bytes | str, where: str, limit: int = MAX_PAYLOAD_BYTES) -> dict[str, Any]:
    """Parse a JSON object from the network, at most ``limit`` bytes."""
    if len(payload) > limit:
        raise SchemaError(f"{where}: payload of {len(payload)} bytes exceeds {limit}")
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{where}: invalid JSON ({exc.__class__.__name__})") from None
    return json_object(obj, where)


def dump_payload(obj: dict[str, Any]) -> bytes:
    """Compact JSON bytes; refuses NaN and infinities."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def section_field(obj: dict[str, Any], w: str, splits: list[int]) -> tuple[int, float, int] | None:
    """A plan's optional parallel section (structure; the nodes fit it to the model)."""
    sec = obj.get("section")
    if sec is None:
        return None
    stop, share, parts = (sec.get(k) if isinstance(sec, dict) else None for k in ("stop", "share", "parts"))
    if (not isinstance(sec, dict) or set(sec) != {"stop", "share", "parts"} or not splits
            or isinstance(stop, bool) or not isinstance(stop, int) or stop <= splits[0]
            or isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share < 1
            or isinstance(parts, bool) or not isinstance(parts, int) or not 1 <= parts <= MAX_SECTION_PARTS):
        raise SchemaError(f"{w}: field 'section': expected {{stop > s1, share in (0, 1), parts in "
                          f"1..{MAX_SECTION_PARTS}}}, found {sec!r}"[:200])
    return stop, float(share), parts


def section_json(section: tuple[int, float, int]) -> dict[str, Any]:
    """``(stop, share, parts)`` as messages carry it (:func:`section_field` reads it back)."""
    return dict(zip(("stop", "share", "parts"), section, strict=True))
