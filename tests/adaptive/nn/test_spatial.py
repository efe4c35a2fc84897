"""Spatial parts of parallel sections (issue 21): locality from the graph, exact row bands."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adaptive.nn.partition import PartitionError, partition
from adaptive.nn.spatial import input_rows, run_rows, sections, split_rows, verify_sections
from adaptive.nn.zoo import build_model, default_input_shape

SIX = ["mobilenet_v2", "resnet18", "resnet50", "vgg16", "efficientnet_b0", "densenet121"]


@pytest.fixture(scope="module")
def resnet20():
    name = "resnet20_cifar"
    return partition(build_model(name), default_input_shape(name), name=name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SIX)
def test_parts_of_every_section_join_to_the_sections_output(name):
    part = partition(build_model(name), default_input_shape(name), name=name)
    report = verify_sections(part, (0.25, 0.5, 0.75))
    assert report, f"{name} has no parallel section"
    for r in report:
        assert r["shape_ok"] and r["max_rel_diff"] <= 1e-5, r
        assert len(r["bands"]) == 2 and r["bands"][0][1] == r["bands"][1][0]
        # the bands read from the top and to the bottom of the input, and both read the rows around
        # the cut (the halo)
        (lo0, hi0), (lo1, hi1) = r["input_rows"]
        height_in = part.input_shape[2] if r["start"] == 0 else part.blocks[r["start"] - 1].output_shape[2]
        assert lo0 == 0 and hi1 == height_in
        assert hi0 >= lo1  # a 1x1 section needs no halo


def test_the_first_big_sections_are_the_convolutional_trunks():
    cases = {"mobilenet_v2": (0, 19), "vgg16": (0, 31), "resnet18": (0, 12)}
    for name, (start, stop) in cases.items():
        part = partition(build_model(name), default_input_shape(name), name=name)
        first = sections(part)[0]
        assert (first.start, first.stop) == (start, stop), (name, first)
        with pytest.raises(PartitionError, match="not inside one parallel section"):
            input_rows(part, start, stop + 1, (0, 1))  # the next block is global: the section is maximal


def test_any_block_range_inside_a_section_and_three_bands(resnet20):
    x = torch.randn(resnet20.input_shape)
    acts = list(resnet20.activations(x))
    start, stop = 2, 7
    height = resnet20.blocks[stop - 1].output_shape[2]
    pieces = []
    for rows in split_rows(height, [0.2, 0.6]):
        lo, hi = input_rows(resnet20, start, stop, rows)
        pieces.append(run_rows(resnet20, start, stop, acts[start][:, :, lo:hi], (lo, hi), rows))
    assert len(pieces) == 3
    torch.testing.assert_close(torch.cat(pieces, 2), acts[stop], atol=1e-6, rtol=1e-5)


def test_exact_in_double_precision():
    """In float64 the bands equal the whole to rounding: the band arithmetic has no approximation."""
    part = partition(build_model("resnet18"), (1, 3, 224, 224), name="resnet18")
    part.graph_module.double()  # the segments share its modules
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    sec = sections(part)[0]
    whole = part.run(sec.start, sec.stop, part.run(0, sec.start, x) if sec.start else x)
    for rows in split_rows(sec.height_out, [0.4]):
        lo, hi = input_rows(part, sec.start, sec.stop, rows)
        band = run_rows(part, sec.start, sec.stop, x[:, :, lo:hi], (lo, hi), rows)
        assert float((band - whole[:, :, rows[0]:rows[1]]).abs().max()) <= 1e-10 * float(whole.abs().max())


def test_the_halo_grows_with_depth(resnet20):
    rows = (0, 4)
    reads = [input_rows(resnet20, 0, stop, rows)[1] for stop in (1, 3, 5, 7)]
    assert reads == sorted(reads) and reads[-1] > reads[0]


def test_bad_requests_are_clear_errors(resnet20):
    x = torch.randn(resnet20.input_shape)
    last = resnet20.num_blocks
    with pytest.raises(PartitionError, match="not inside one parallel section"):
        input_rows(resnet20, 0, last, (0, 1))  # reaches past the global pooling
    with pytest.raises(PartitionError, match="not within"):
        input_rows(resnet20, 0, 2, (0, 999))
    with pytest.raises(PartitionError, match="cannot give output rows"):
        run_rows(resnet20, 0, 3, x[:, :, 0:12], (0, 12), (0, 16))  # too few input rows for the band
    with pytest.raises(PartitionError, match="too thin"):
        run_rows(resnet20, 0, 3, x[:, :, 0:1], (0, 1), (0, 1))
    with pytest.raises(PartitionError, match="holds 4 rows"):
        run_rows(resnet20, 0, 3, x[:, :, 0:4], (0, 8), (0, 2))


def test_a_model_without_a_local_run_has_no_section_and_squeeze_excite_is_a_barrier():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10))
    assert sections(partition(mlp, (1, 3, 4, 4), name="mlp")) == []  # layer plans only
    part = partition(build_model("efficientnet_b0"), (1, 3, 224, 224), name="efficientnet_b0")
    se_blocks = [i for i, b in enumerate(part.blocks) if any("squeeze" in n or "avgpool" in n or "fc1" in n
                                                             for n in b.nodes)]
    for sec in sections(part):
        assert not any(sec.start <= i < sec.stop for i in se_blocks)


def test_adaptive_partition_parallel_verify_reports_exact_parts():
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "adaptive", "partition", "--model", "resnet20_cifar",
                           "--verify", "--parallel", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout)["sections"]
    assert [(s["start"], s["stop"]) for s in found] == [(0, 10)]
    assert found[0]["exact"] and [p["fraction"] for p in found[0]["parts"]] == [0.25, 0.5, 0.75]
    text = subprocess.run([sys.executable, "-m", "adaptive", "partition", "--model", "resnet20_cifar",
                           "--parallel"], capture_output=True, text=True, timeout=300).stdout
    assert "parallel sections" in text and "[0, 10)" in text


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18", "densenet121", "inception_v3"])
def test_the_shipped_profiles_row_maps_match_the_graph(name):
    """The numpy model sizes parts from blocks[].rows; those must say what the traced graph does."""
    from adaptive.model.lop import input_band, parallel_sections
    from adaptive.model.profiles import resolve_model

    profile = resolve_model(name)
    part = partition(build_model(name), tuple(profile.input_shape), name=name)
    assert parallel_sections(profile) == [(s.start, s.stop) for s in sections(part)]
    for start, stop in parallel_sections(profile):
        for a, b in [(start, stop), (start, start + 1), (max(start, stop - 3), stop)]:
            height = part.blocks[b - 1].output_shape[2]
            for rows in split_rows(height, [0.3, 0.7]):
                assert input_band(profile, a, b, rows) == input_rows(part, a, b, rows), (a, b, rows)
