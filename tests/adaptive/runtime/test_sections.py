"""Parallel sections live, without sockets: both ends' rows, the assembly, and pieces that do not fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adaptive.model.plans import Section
from adaptive.nn.partition import partition
from adaptive.nn.zoo import build_model, default_input_shape
from adaptive.runtime.sections import SectionAssembler, SectionError, chunks, edge_band, section_rows
from adaptive.runtime.wire import Frame, decode_frame, encode_frame, tensor_frame


@pytest.fixture(scope="module")
def mobilenet():
    return partition(build_model("mobilenet_v2"), default_input_shape("mobilenet_v2"), name="mobilenet_v2")


def _pieces(part, splits, section, x0, seed=0):
    """The frames a source sends for one request, in the order it sends them."""
    rows = section_rows(part, splits, section)
    with torch.inference_mode():
        x = part.run(0, rows.start, torch.from_numpy(x0)).numpy() if rows.start else x0
    base = Frame(kind="work", request_id=f"r{seed}", client="c", reply_to="tcp://127.0.0.1:1", version=1,
                 hop=rows.j, position=rows.start, shape=(1,), model=part.name, devices=("pi", "nano", "orin"),
                 splits=splits, section=section)
    frames = [tensor_frame(base, piece, part=c) for c, piece in chunks(rows, x)]
    frames.append(tensor_frame(base, edge_band(part, rows, x), position=section.stop, part=section.parts))
    return rows, x, [decode_frame(encode_frame(f)) for f in frames]  # through the wire format


@pytest.mark.parametrize(("splits", "section"), [((0, 0), Section(5, 0.5)), ((0, 0), Section(5, 0.25, 3)),
                                                 ((2, 2), Section(9, 0.75, 2)), ((0, 23), Section(3, 0.125))])
def test_pieces_join_to_the_section_output(mobilenet, splits, section):
    x0 = np.random.default_rng(1).standard_normal(mobilenet.input_shape).astype(np.float32)
    rows, x, frames = _pieces(mobilenet, splits, section, x0)
    assert rows.j == next(m for m in range(2) if [*splits, 23][m + 1] > [*splits, 23][m]) + 1
    assert rows.bands[0][0] == 0 and rows.bands[-1][1] == rows.edge[0]  # top rows to the accelerator
    sent = [f.shape[2] for f in frames[:-1]]
    assert sum(sent) == max(hi for _, hi in rows.reads)  # no input row is sent twice
    assembler = SectionAssembler(mobilenet)
    outs = [assembler.add(f, rows) for f in frames]
    assert all(o[0] is None for o in outs[:-1]) and outs[-1][0] is not None
    with torch.inference_mode():
        whole = mobilenet.run(rows.start, rows.stop, torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(outs[-1][0], whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())
    assert len(assembler) == 0


def test_pieces_may_arrive_in_any_order(mobilenet):
    x0 = np.random.default_rng(2).standard_normal(mobilenet.input_shape).astype(np.float32)
    rows, x, frames = _pieces(mobilenet, (0, 0), Section(7, 0.5, 3), x0)
    assembler = SectionAssembler(mobilenet)
    out = [assembler.add(f, rows)[0] for f in (frames[-1], frames[2], frames[0], frames[1])]
    with torch.inference_mode():
        whole = mobilenet.run(0, 7, torch.from_numpy(x)).numpy()
    assert out[:3] == [None, None, None]
    np.testing.assert_allclose(out[3], whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())


def test_sections_and_pieces_that_do_not_fit_are_refused(mobilenet):
    for splits, section, message in [((0, 0), Section(21, 0.5), "not inside one parallel section"),
                                     ((0, 0), Section(23, 0.5), "before the next stage's end"),
                                     ((0, 0), Section(19, 0.125, 4), "a part would be empty")]:
        with pytest.raises(SectionError, match=message):
            section_rows(mobilenet, splits, section)
    x0 = np.zeros(mobilenet.input_shape, np.float32)
    rows, _, frames = _pieces(mobilenet, (0, 0), Section(5, 0.5, 2), x0)
    assembler = SectionAssembler(mobilenet, max_pending=1)
    bad = tensor_frame(frames[0], np.zeros((1, 3, 5, 224), np.float32))
    with pytest.raises(SectionError, match=r"chunk 0 has shape \[1, 3, 5, 224\]"):
        assembler.add(bad, rows)
    assert assembler.add(frames[1], rows) == (None, 0.0, None)  # the failed request's late piece: dropped
    other = [tensor_frame(f, f.tensor(), request_id="r9") for f in frames]
    assembler.add(other[0], rows)
    with pytest.raises(SectionError, match="arrived twice"):
        assembler.add(other[0], rows)
    third = tensor_frame(frames[0], frames[0].tensor(), request_id="r10")
    assembler.add(third, rows)
    with pytest.raises(SectionError, match="no room"):
        assembler.add(tensor_frame(frames[0], frames[0].tensor(), request_id="r11"), rows)
    forged = SectionAssembler(mobilenet)  # a piece of the same request under another plan
    forged.add(frames[0], rows)
    with pytest.raises(SectionError, match="carries another plan"):
        forged.add(tensor_frame(frames[1], frames[1].tensor(), codecs=("none", "fp16")), rows)
    assembler.timeout_s = 0.0
    assert [f.request_id for f in assembler.expired()] == ["r10"]
    assert len(assembler) == 0


def test_an_emulated_device_pads_each_part_to_the_models_part_time(mobilenet):
    """What a node pads a band to is what the model prices it at (same rows, same profile curve)."""
    from adaptive.model.lop import SectionCosts
    from adaptive.model.profiles import resolve_device, resolve_model
    from adaptive.runtime.emulation import ComputeEmulation
    from adaptive.runtime.node import emulated_latency, emulated_parts

    profile = resolve_model("mobilenet_v2")
    chain = [resolve_device(d) for d in ("raspberry-pi-4", "jetson-nano", "jetson-agx-orin")]
    costs = SectionCosts(profile, chain)
    for splits, section in [((0, 0), Section(5, 0.5, 2)), ((2, 2), Section(9, 0.375, 3))]:
        rows = section_rows(mobilenet, splits, section)
        cfg = costs.config(splits[0], section.stop, section.share, section.parts)
        for d, device in enumerate(chain):
            parts = emulated_parts(profile, device)
            emu = ComputeEmulation(emulated_latency(profile, device.name), parts=parts)
            edge = emu.part_target_s(rows.start, rows.edge_shares, 0.0) * 1e3
            assert edge == pytest.approx(cfg.edge_ms[d], rel=1e-9)
            for c, shares in enumerate(rows.band_shares):
                band = emu.part_target_s(rows.start, shares, 0.0) * 1e3
                assert band == pytest.approx(cfg.part_ms[d, c], rel=1e-9)
    slow = ComputeEmulation(None, slowdown=2.0)  # not emulating a device: this machine's time, slowed
    assert slow.part_target_s(0, (0.5,), 0.01) == pytest.approx(0.02)
