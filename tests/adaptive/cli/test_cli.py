"""The ``adaptive`` command in a subprocess: output contracts and bad input (exit code 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from adaptive.cli import build_parser
from tests.conftest import ACCEL, EDGE, TOY_MODEL


def run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "adaptive", *args], capture_output=True,
                          text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def files(tmp_path):
    paths = {}
    for name, doc in (("edge", EDGE), ("accel", ACCEL), ("toy", TOY_MODEL)):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(doc))
    return paths


def common(files, *extra):
    return ["--model-profile", str(files["toy"]), "--devices", f"{files['edge']},{files['accel']}", *extra]


def test_every_subcommand_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:
        proc = run(name, "--help")
        assert "usage: adaptive " + name in proc.stdout


def test_predict_json_contract(files):
    out = json.loads(run("predict", *common(files, "--splits", "2", "--bandwidth", "1000",
                                            "--no-return-result", "--json")).stdout)
    assert out["latency_ms"] == pytest.approx(6.70512)
    assert out["energy_j"] == pytest.approx(0.0868524)
    assert out["naive_latency_ms"] == pytest.approx(4.4)
    assert [s["blocks"] for s in out["breakdown"]] == [[0, 2], [2, 4]]
    assert set(out["breakdown"][0]) >= {"device", "exec_ms", "comm_ms", "proc_ms"}


def test_plan_json_contract(files):
    out = json.loads(run("plan", *common(files, "--bandwidth", "50", "--json")).stdout)
    assert {"splits", "latency_ms", "energy_j", "pareto_front", "evaluated", "elapsed_ms"} <= set(out)
    assert out["evaluated"] >= len(out["pareto_front"]) >= 1
    lat = [r["latency_ms"] for r in out["pareto_front"]]
    assert out["latency_ms"] == pytest.approx(min(lat))


def test_plan_table_text_and_json(files):
    out = json.loads(run("plan-table", *common(files, "--bandwidth-grid", "1:1001:250", "--no-codecs",
                                               "--json")).stdout)
    assert [r["bandwidth_mbps"] for r in out["rows"]] == [1, 251, 501, 751, 1001]
    text = run("plan-table", *common(files, "--bandwidth-grid", "1:1001:500")).stdout
    assert "bandwidth_mbps" in text and "1001.00" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--splits", "2", "--bandwidth", "abc"], "--bandwidth: expected numbers"),
        (["--splits", "2", "--bandwidth", "0"], "expected values > 0"),
        (["--splits", "2", "--bandwidth", "nan"], "expected finite numbers"),
        (["--splits", "2", "--bandwidth", "-5"], "expected values > 0"),
        (["--splits", "7", "--bandwidth", "10"], "out of range 0..4"),
        (["--splits", "x", "--bandwidth", "10"], "--splits: expected integers"),
        (["--splits", "2", "--bandwidth", "10", "--load", "2"], "--load: expected values <= 1.0"),
        (["--splits", "2", "--bandwidth", "10", "--clients", "0"], "--clients"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(files, args, message):
    proc = run("predict", *common(files, *args), check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_unknown_device_missing_file_and_decreasing_splits(files, tmp_path):
    base = ["--model-profile", str(files["toy"])]
    cases = [
        (["predict", *base, "--devices", "edgy,tpu", "--splits", "1", "--bandwidth", "1"],
         "unknown device"),
        (["predict", "--model-profile", str(tmp_path / "nope.yaml"), "--devices",
          f"{files['edge']},{files['accel']}", "--splits", "1", "--bandwidth", "1"], "no such file"),
        (["predict", *base, "--devices", f"{files['edge']},{files['accel']},{files['accel']}",
          "--splits", "3,1", "--bandwidth", "1"], "non-decreasing"),
        (["plan-table", *common(files), "--bandwidth-grid", "10:1"], "START:STOP:STEP"),
    ]
    for args, message in cases:
        proc = run(*args, check=False)
        assert proc.returncode == 2, args
        assert message in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
