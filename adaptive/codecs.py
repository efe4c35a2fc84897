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

from typing import NamedTuple

import numpy as np

from adaptive.errors import AdaptiveError

__all__ = ["BYTES_RATIO", "CODECS", "Encoded", "decode", "encode"]

CODECS = ("none", "fp16", "int8")
BYTES_RATIO = {"none": 1.0, "fp16": 0.5, "int8": 0.25}


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
    n = int(np.prod(shape, dtype=np.int64))
    itemsize = {"none": 4, "fp16": 2, "int8": 1}.get(codec)
    if itemsize is None:
        raise AdaptiveError(f"unknown codec '{codec}' (expected one of {', '.join(CODECS)})")
    if buf.size != n * itemsize:
        raise AdaptiveError(f"{codec} payload has {buf.size} bytes, expected {n * itemsize} "
                            f"for shape {list(shape)}")
    if codec == "none":
        return buf.view(np.float32).reshape(shape)
    if codec == "fp16":
        return buf.view(np.float16).astype(np.float32).reshape(shape)
    if len(params) != 2:
        raise AdaptiveError(f"int8 needs (offset, scale) parameters, found {len(params)}")
    lo, scale = params
    return (buf.astype(np.float32) * np.float32(scale) + np.float32(lo)).reshape(shape)
