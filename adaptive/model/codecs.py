"""Activation codecs applied at a split: fp16 and int8 quantisation (numpy only).

Seed 000 Sec. III-B compares compression at splits; quantisation needs no model change, so the
runtime can apply it at any cut. The encoded form is a flat ``uint8`` payload plus a small
metadata tuple of floats, both sent in the clear (never pickled).

============  ================================  =====================  ====================
codec         encoding                           bytes (n elements)     max abs. error
============  ================================  =====================  ====================
``none``      float32 as is                      4n                     0
``fp16``      IEEE half precision                2n                     ~1e-3 × |x|
``int8``      affine per tensor, 256 levels      n (+ 8 in metadata)    (max − min) / 510
============  ================================  =====================  ====================
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from adaptive.errors import AdaptiveError

__all__ = ["BYTES_RATIO", "CODECS", "ITEMSIZE", "Encoded", "decode", "encode", "payload_bytes"]

CODECS = ("none", "fp16", "int8")
ITEMSIZE = {"none": 4, "fp16": 2, "int8": 1}  # payload bytes per element
BYTES_RATIO = {c: n / ITEMSIZE["none"] for c, n in ITEMSIZE.items()}


def payload_bytes(codec: str, shape: tuple[int, ...] | list[int]) -> int:
    """Payload size of a ``shape`` tensor encoded with ``codec`` (exact, no overflow)."""
    if codec not in ITEMSIZE:
        raise AdaptiveError(f"unknown codec '{codec}' (expected one of {', '.join(CODECS)})")
    return math.prod(int(s) for s in shape) * ITEMSIZE[codec]


class Encoded(NamedTuple):
    """An encoded activation: flat payload bytes plus codec parameters.

    Attributes:
        payload: ``uint8`` array to send.
        params: Codec parameters (int8: ``(offset, scale)``; otherwise empty).
    """

    payload: np.ndarray
    params: tuple[float, ...]


def encode(codec: str, array: np.ndarray) -> Encoded:
    """Encode a float32 array with ``codec``."""
    a = np.ascontiguousarray(array, dtype=np.float32)
    if codec == "none":
        return Encoded(a.reshape(-1).view(np.uint8), ())
    if codec == "fp16":
        return Encoded(a.astype(np.float16).reshape(-1).view(np.uint8), ())
    if codec == "int8":
        lo = float(a.min()) if a.size else 0.0
        hi = float(a.max()) if a.size else 0.0
        scale = (hi - lo) / 255.0 if hi > lo else 1.0
        q = np.rint((a - lo) * (1.0 / scale))
        return Encoded(np.clip(q, 0, 255).astype(np.uint8).reshape(-1), (lo, scale))
    raise AdaptiveError(f"unknown codec '{codec}' (expected one of {', '.join(CODECS)})")


def decode(codec: str, payload: np.ndarray | bytes | memoryview, params: tuple[float, ...],
           shape: tuple[int, ...]) -> np.ndarray:
    """Decode a payload back to a float32 array of ``shape``.

    Raises:
        AdaptiveError: Unknown codec, or a payload whose size does not match ``shape``.
    """
    buf = np.frombuffer(payload, dtype=np.uint8)
    expected = payload_bytes(codec, shape)
    if buf.size != expected:
        raise AdaptiveError(f"{codec} payload has {buf.size} bytes, expected {expected} "
                            f"for shape {list(shape)}")
    if codec == "none":
        return buf.view(np.float32).reshape(shape)
    if codec == "fp16":
        return buf.view(np.float16).astype(np.float32).reshape(shape)
    if len(params) != 2:
        raise AdaptiveError(f"int8 needs (offset, scale) parameters, found {len(params)}")
    lo, scale = params
    return (buf.astype(np.float32) * np.float32(scale) + np.float32(lo)).reshape(shape)
