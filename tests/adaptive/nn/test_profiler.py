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
                           "isolated", "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert set(load_model(out).latency_ms) == {"xeon-vm", "host-isolated"}
    plan = subprocess.run([sys.executable, "-m", "adaptive", "plan", "--model-profile", str(out),
                           "--devices", "xeon-vm,xeon-vm",
                           "--bandwidth", "100", "--json"], capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr


def test_timing_config_defaults_are_in_context():
    cfg = TimingConfig()
    assert cfg.block_timing == cfg.segment_timing == "context" and cfg.threads == 1
