"""Wire format: round trips, and every kind of bad frame is a WireError (never pickle, never crash)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive.runtime.wire import Frame, WireError, decode_frame, encode_frame, tensor_frame

BASE = Frame(kind="work", request_id="c1-7", client="c1", reply_to="tcp://127.0.0.1:5555", version=3,
             hop=1, position=4, shape=(1,), sent_at=1.7e9, model="resnet18", devices=("pi", "jetson"),
             splits=(4,), codecs=("int8",))


@pytest.mark.parametrize("codec", ["none", "fp16", "int8"])
def test_round_trip(codec):
    x = np.random.default_rng(0).standard_normal((1, 8, 4, 4)).astype(np.float32)
    frame = tensor_frame(BASE, x, codec, trace=(("pi", 0.5, 12.25, 1),))
    back = decode_frame(encode_frame(frame))
    assert back.request_id == "c1-7" and back.version == 3 and back.trace == (("pi", 0.5, 12.25, 1),)
    assert (back.model, back.devices, back.splits, back.codecs) == ("resnet18", ("pi", "jetson"), (4,),
                                                                    ("int8",))
    tol = {"none": 0, "fp16": 1e-2, "int8": (x.max() - x.min()) / 255}[codec]
    assert np.abs(back.tensor() - x).max() <= tol


DROP = object()


def parts(**header):
    h = {"v": 1, "kind": "work", "id": "a", "client": "c", "reply_to": "tcp://h:1", "version": 1,
         "hop": 0, "position": 0, "shape": [1, 4], "codec": "none", "params": [], "sent_at": 0,
         "error": "", "trace": [], "model": "m", "devices": ["pi", "jetson"], "splits": [3], "codecs": []}
    h.update(header)
    for key in [k for k, v in h.items() if v is DROP]:
        del h[key]
    return [json.dumps(h).encode(), b"\x00" * 16]


@pytest.mark.parametrize(("frame", "message"), [
    ([b"only one part"], "expected 2 message parts"),
    ([b"{", b""], "not valid JSON"),
    ([b"x" * 5000, b""], "exceeds 4096"),
    (parts(v=2), "v=1"),
    (parts(kind="pickle"), "kind"),
    (parts(shape=[1, -4]), "shape"),
    (parts(shape=[2, 4]), "truncated or inconsistent"),
    (parts(codec="zip"), "codec"),
    (parts(params=["x"]), "params"),
    (parts(id="a/b"), "'id'"),
    (parts(version=-1), "'version'"),
    (parts(trace=[[1, 2, 3]]), "trace"),
    (parts(retry="yes"), "'retry'"),
    (parts(trace=[["pi", "slow", 1.0, 1]]), "trace"),
    (parts(trace=[["pi", 0.0, 1.0, 1e400]]), "trace"),
    (parts(shape=[2**30] * 8), "truncated or inconsistent"),  # huge product: no int64 overflow
    (parts(devices=DROP, hop=1), "past the source has no plan"),
    (parts(devices=["pi", "pi"]), "'devices'"),
    (parts(devices=["pi", "a/b"]), "'devices'"),
    (parts(splits=[3, 4]), "'splits'"),
    (parts(devices=["a", "b", "c"], splits=[5, 2]), "non-decreasing"),
    (parts(codecs=["zip"]), "'codecs'"),
    (parts(model=7), "'model'"),
    (parts(hop=2), "'hop'"),
    (parts(part=0), "'part' needs a plan with a section"),
    (parts(section={"stop": 3, "share": 0.5, "parts": 1}), "'section'"),  # stop must be past s1
    (parts(section={"stop": 5, "share": 1.0, "parts": 1}), "'section'"),
    (parts(section={"stop": 5, "share": 0.5, "parts": 5}), "'section'"),
    (parts(section={"stop": 5, "share": 0.5}), "'section'"),
    (parts(section={"stop": 5, "share": 0.5, "parts": 1, "x": 1}), "'section'"),
    (parts(section=[5, 0.5, 1]), "'section'"),
    (parts(section={"stop": 5, "share": 0.5, "parts": 2}, part=3), "'part'"),
    (parts(section={"stop": 5, "share": 0.5, "parts": 2}, part=True), "'part'"),
    (parts(devices=DROP, section={"stop": 5, "share": 0.5, "parts": 1}), "'section' needs a plan"),
])
def test_bad_frames(frame, message):
    with pytest.raises(WireError, match=message):
        decode_frame(frame)


def test_a_section_and_its_piece_round_trip():
    from adaptive.model.plans import Section

    frame = tensor_frame(BASE, np.zeros((1, 2, 3, 4), np.float32), section=Section(9, 0.375, 2), part=2)
    back = decode_frame(encode_frame(frame))
    assert back.section == Section(9, 0.375, 2) and back.part == 2
    plain = decode_frame(encode_frame(tensor_frame(BASE, np.zeros((1, 2), np.float32))))
    assert plain.section is None and plain.part is None


def test_oversized_payload_is_refused_before_decoding():
    frame = tensor_frame(BASE, np.zeros((1, 1000), np.float32))
    with pytest.raises(WireError, match="exceeds the limit of 1000"):
        decode_frame(encode_frame(frame), max_payload=1000)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=0, max_size=3))
def test_random_bytes_only_raise_wire_error(raw):
    try:
        frame = decode_frame(raw)
    except WireError:
        return
    assert isinstance(frame, Frame)  # the rare valid frame decodes to a Frame


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=4),
                    max_leaves=12)
FIELDS = ["v", "kind", "id", "client", "reply_to", "version", "hop", "position", "shape", "codec", "params",
          "sent_at", "error", "trace", "retry", "model", "devices", "splits", "codecs"]


@settings(max_examples=2000, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=5), st.binary(max_size=64))
def test_any_value_in_any_header_field_only_raises_wire_error(fields, payload):
    """A well-formed header with arbitrary JSON values: a node must never see anything but WireError."""
    raw = parts(**fields)
    try:
        frame = decode_frame([json.dumps(json.loads(raw[0]), allow_nan=True).encode(), payload])
    except WireError:
        return
    assert isinstance(frame, Frame)


def test_transient_errors_say_so_on_the_wire():
    base = Frame(kind="work", request_id="r1", client="c", reply_to="tcp://h:1", version=1, hop=0, position=0,
                 shape=(1,), model="m", devices=("pi",))
    for retry in (True, False):
        back = decode_frame(encode_frame(base.error_reply("node x is unreachable", retry=retry)))
        assert back.kind == "error" and back.retry is retry and back.error == "node x is unreachable"


def test_a_request_may_enter_its_source_without_a_plan():
    frame = decode_frame(parts(devices=DROP, hop=0, position=0))
    assert frame.kind == "work" and frame.devices == () and frame.splits == ()
