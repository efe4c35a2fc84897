"""Profiler: the correction fit recovers known coefficients; profiles round-trip."""

from __future__ import annotations

import numpy as np
import pytest

from adaptive.nn.profiler import TimingConfig, choose_segments, fit_correction, fit_linear


@pytest.mark.parametrize(("c0", "c1"), [(0.0675, -0.0239), (0.3, 1.5), (-0.05, 0.4)])
def test_fit_recovers_known_coefficients_from_synthetic_timings(c0, c1):
    rng = np.random.default_rng(1)
    L = 40
    blocks = rng.uniform(0.5, 5.0, L)
    segments = choose_segments(L, seed=3)
    assert len(segments) == L + 1 and (0, L) in segments  # 2N + 1 configurations with the blocks
    truth = np.array([blocks[i:j].sum() - (c0 * (j - i) + c1) for i, j in segments])
    noisy = truth * (1 + rng.normal(0, 0.002, len(truth)))
    fit = fit_correction(blocks, segments, noisy)
    assert fit.c0_ms == pytest.approx(c0, abs=0.02)
    assert fit.c1_ms == pytest.approx(c1, abs=0.3)
    assert fit.mape_corrected_pct < 0.5
    assert fit.mape_holdout_pct < 0.5
    assert fit.segments == L + 1


def test_fit_on_exact_data_is_exact_and_naive_error_is_reported():
    blocks = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    segments = [(0, 6), (0, 2), (1, 4), (2, 6), (3, 5), (1, 6), (0, 3)]
    measured = [blocks[i:j].sum() - (0.5 * (j - i) + 0.25) for i, j in segments]
    fit = fit_correction(blocks, segments, measured)
    assert fit.c0_ms == pytest.approx(0.5) and fit.c1_ms == pytest.approx(0.25)
    assert fit.mape_corrected_pct == pytest.approx(0.0, abs=1e-9)
    naive = np.mean([(0.5 * (j - i) + 0.25) / m for (i, j), m in zip(segments, measured, strict=True)]) * 100
    assert fit.mape_naive_pct == pytest.approx(naive)


def test_choose_segments_small_models():
    assert choose_segments(1) == []
    assert choose_segments(2) == [(0, 2)]
    segs = choose_segments(5)
    assert len(set(segs)) == len(segs) and all(j - i >= 2 for i, j in segs)


def test_fit_linear():
    kb = np.array([1.0, 10.0, 100.0])
    assert fit_linear(kb, 0.01 * kb + 0.2) == pytest.approx((0.01, 0.2))


@pytest.mark.slow
def test_profile_model_writes_a_profile_the_planner_uses(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "cnn.yaml"
    cmd = [sys.executable, "-m", "adaptive", "profile", "model", "--model", "cnn14_seed004",
           "--out", str(out), "--device-name", "xeon-vm", "--repeats", "5", "--segment-repeats", "3",
           "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    from adaptive.model.profiles import load_model

    profile = load_model(out)
    assert profile.num_blocks == 14 and len(profile.latency_ms["xeon-vm"]) == 14
    assert {c.name for c in profile.codecs} == {"fp16", "int8"}
    assert "xeon-vm" in profile.correction
    # the row maps of local blocks, as the shipped profile of the same model has them
    from adaptive.model.profiles import resolve_model

    assert [b.rows for b in profile.blocks] == [b.rows for b in resolve_model("cnn14_seed004").blocks]
    assert sum(b.rows is not None for b in profile.blocks) == 10
    # second device merged into the same file
    proc = subprocess.run([*cmd[:-1], "--merge", "--device-name", "host-isolated", "--block-timing",
                           "isolated", "--row-fractions", "0.25,0.5", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    merged = load_model(out)
    assert set(merged.latency_ms) == {"xeon-vm", "host-isolated"}
    assert set(merged.row_efficiency) == set(merged.row_op_ms) == {"host-isolated"}
    shares = [p[1] for p in merged.row_efficiency["host-isolated"]]
    assert len(shares) == 5 and shares == sorted(shares) and merged.row_op_ms["host-isolated"] >= 0
    assert [b.ops for b in merged.blocks] == [b.ops for b in resolve_model("cnn14_seed004").blocks]
    plan = subprocess.run([sys.executable, "-m", "adaptive", "plan", "--model-profile", str(out),
                           "--devices", "xeon-vm,xeon-vm",
                           "--bandwidth", "100", "--json"], capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr


def test_timing_config_defaults_are_in_context():
    cfg = TimingConfig()
    assert cfg.block_timing == cfg.segment_timing == "context" and cfg.threads == 1


def test_row_fit_prices_parts_as_the_model_does():
    """The profiler's fitted prediction of each part is the model's (SectionCosts) on the fitted profile."""
    import dataclasses

    from adaptive.model.lop import SectionCosts
    from adaptive.model.profiles import model_from_dict, resolve_device
    from adaptive.nn.partition import partition
    from adaptive.nn.profiler import model_profile_doc, profile_row_efficiency
    from adaptive.nn.zoo import build_model, default_input_shape

    name = "cnn14_seed004"
    part = partition(build_model(name), default_input_shape(name), name=name)
    cfg = TimingConfig(warmup=1, repeats=3)
    block_ms = np.round(np.linspace(0.5, 2.0, part.num_blocks), 3)  # any times: the fit is relative to them
    fit = profile_row_efficiency(part, cfg, block_ms, fractions=(0.25, 0.5, 0.75))
    assert len(fit.parts) == len(fit.measured_ms) == len(fit.predicted_ms) > 0
    assert np.all(fit.measured_ms > 0) and fit.op_ms >= 0
    doc = model_profile_doc(part, "host", block_ms, block_ms * 0, None, cfg)
    doc["row_efficiency"] = {"host": [list(p) for p in fit.points]}
    doc["row_op_ms"] = {"host": fit.op_ms}
    host = dataclasses.replace(resolve_device("raspberry-pi-4"), name="host")
    costs = SectionCosts(model_from_dict(doc), [host])
    checked = 0
    for (start, stop, rows), predicted in zip(fit.parts, fit.predicted_ms, strict=True):
        height = costs.heights[stop]
        if rows[0] == 0 and rows[1] == round(0.5 * height):
            checked += 1
            assert costs.config(start, stop, 0.5, 1).part_ms[0, 0] == pytest.approx(predicted, rel=1e-9)
            assert costs.config(start, stop, 0.5, 1).edge_ms[0] == pytest.approx(
                fit.predicted_ms[fit.parts.index((start, stop, (rows[1], height)))], rel=1e-9)
    # each local block alone and each run of three, once at fraction 0.5 (a 1-row output has no cut)
    assert checked == len({(s, e) for s, e, _ in fit.parts if costs.heights[e] >= 2}) > 0
