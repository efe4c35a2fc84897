"""Traces: loading, resampling as step functions, scaling onto a link class, synthetic series."""

from __future__ import annotations

import numpy as np
import pytest

from adaptive.errors import AdaptiveError
from envs.traces import TraceScaling, load_trace, load_traces, resample, shipped_traces, synthetic


def test_shipped_traces_are_the_licensed_training_files():
    traces = shipped_traces()
    assert len(traces) == 22
    assert {t.name.split("-")[0] for t in traces} == {"fcc", "norway", "5gophers"}
    import json
    from importlib import resources

    split = json.loads(resources.files("envs.data").joinpath("trace_split.json").read_text())
    assert not {t.name + ".csv" for t in traces} & set(split["test"])


def test_resample_holds_values(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("time_s,bandwidth_mbps\n0,10\n2.5,20\n5,30\n")
    trace = load_trace(path)
    np.testing.assert_array_equal(resample(trace, 1.0), [10, 10, 10, 20, 20, 30, 30])


@pytest.mark.parametrize(("text", "message"), [
    ("a,b\n0,1\n1,2\n", "expected header"),
    ("time_s,bandwidth_mbps\n0,1\n", "at least 2 samples"),
    ("time_s,bandwidth_mbps\n0,1\n0,2\n", "time_s must increase"),
    ("time_s,bandwidth_mbps\n0,1\n1,x\n", "line 3"),
    ("time_s,bandwidth_mbps\n0,1\n1,-2\n", "bandwidth >= 0"),
])
def test_bad_trace_files(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(AdaptiveError, match=message):
        load_trace(path)
    with pytest.raises(AdaptiveError, match="no trace files"):
        load_traces([tmp_path / "empty-dir-that-does-not-exist-as-dir"]) if False else load_traces([])


def test_scaling_maps_the_median_to_the_target():
    rng = np.random.default_rng(0)
    values = np.array([0.5, 1.0, 1.5, 2.0, 100.0])
    out = TraceScaling((20.0, 20.0), 0.05, 1000.0).apply(values, rng)
    assert np.median(out) == pytest.approx(20.0)
    out = TraceScaling((3.0, 30.0), 0.05, 50.0).apply(values, rng)
    assert 3.0 <= np.median(out) <= 30.0 and out.max() <= 50.0
    assert np.array_equal(TraceScaling(None, 0.0, 1e9).apply(values, rng), values)


@pytest.mark.parametrize("kind", ["steps", "random_walk", "markov"])
def test_synthetic_series_stay_in_range(kind):
    rng = np.random.default_rng(1)
    s = synthetic(kind, 500, rng, low_mbps=2.0, high_mbps=50.0)
    assert s.shape == (500,) and np.all(s > 0)
    assert s.min() >= 2.0 * 0.8 and s.max() <= 50.0 * 1.25
    assert len(np.unique(np.round(s, 3))) > 1
    with pytest.raises(AdaptiveError, match="unknown synthetic"):
        synthetic("sine", 10, rng)
