"""Activation codecs: sizes, error bounds, validation."""

from __future__ import annotations

import numpy as np
import pytest

from adaptive.errors import AdaptiveError
from adaptive.model.codecs import BYTES_RATIO, decode, encode


@pytest.mark.parametrize("codec", ["none", "fp16", "int8"])
def test_round_trip_size_and_error(codec):
    x = np.random.default_rng(0).standard_normal((2, 8, 5, 5)).astype(np.float32) * 3
    enc = encode(codec, x)
    assert enc.payload.dtype == np.uint8
    assert enc.payload.nbytes == int(x.nbytes * BYTES_RATIO[codec])
    y = decode(codec, enc.payload.tobytes(), enc.params, x.shape)
    bound = {"none": 0.0, "fp16": 2e-3 * np.abs(x).max(), "int8": (x.max() - x.min()) / 510 + 1e-6}
    assert np.abs(y - x).max() <= bound[codec]


def test_constant_tensor_int8():
    x = np.full((3, 3), 7.5, dtype=np.float32)
    enc = encode("int8", x)
    assert np.allclose(decode("int8", enc.payload, enc.params, x.shape), 7.5)


def test_bad_payloads_are_rejected():
    with pytest.raises(AdaptiveError, match="expected 36"):
        decode("none", b"\x00" * 10, (), (3, 3))
    with pytest.raises(AdaptiveError, match="unknown codec"):
        encode("zip", np.zeros(3, np.float32))
    with pytest.raises(AdaptiveError, match="offset, scale"):
        decode("int8", b"\x00" * 9, (), (3, 3))
