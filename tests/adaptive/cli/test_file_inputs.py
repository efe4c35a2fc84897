"""Every file a command reads is refused cleanly when it is not what it should be (issue 20).

Each command that reads a file the user names (scenario, controller and env config, model and device
profile, trace, policy) is run in this process on random and damaged files: it must exit 0 or 2 with
at most one line on stderr, never raise. Then the files no fuzzer makes: a directory, a FIFO (which
would block a plain ``open``), an empty file, a file over the size cap, bytes that are not UTF-8.
"""

from __future__ import annotations

import contextlib
import io
import os
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptive.cli import main

EXAMPLES = 300  # per command: 7 commands, 2,100 cases per run


def shipped(package: str, *parts: str) -> bytes:
    return resources.files(package).joinpath(*parts).read_bytes()


SEEDS = {  # a valid file of each kind, to damage
    "scenario": shipped("adaptive.data", "scenarios", "liu-fig13a.yaml"),
    "controller": (Path(__file__).resolve().parents[3] / "docs" / "deploy" / "controller.yaml").read_bytes(),
    "env": shipped("envs.data", "default.yaml"),
    "model": shipped("adaptive.data", "models", "resnet20_cifar.yaml"),
    "device": shipped("adaptive.data", "devices", "jetson-nano.yaml"),
    "trace": shipped("envs.data", "traces", "5gophers-5g-car-driving-trace-1-Sprint.csv")[:4000],
    "policy": shipped("agents.trained", "ppo_default.mlp.json")[:6000],
}


def command(kind: str, path: Path, tmp: Path) -> list[str]:
    """The command line that reads ``path`` as a file of ``kind`` (fast to fail, harmless to pass)."""
    out = str(tmp / "out")
    return {
        "scenario": ["experiment", "run", str(path), "--mode", "sim", "--repeats", "1", "--out", out],
        "controller": ["controller", "--config", str(path), "--broker", "mqtt://127.0.0.1:1"],
        "env": ["evaluate", "--config", str(path), "--policies", "greedy", "--episodes", "1"],
        "model": ["predict", "--model-profile", str(path), "--devices", "raspberry-pi-4,jetson-nano",
                  "--bandwidth", "10", "--splits", "1"],
        "device": ["predict", "--model-profile", "resnet20_cifar", "--devices", f"raspberry-pi-4,{path}",
                   "--bandwidth", "10", "--splits", "1"],
        "trace": ["evaluate", "--traces", str(path), "--policies", "greedy", "--episodes-per-trace", "1"],
        "policy": ["evaluate", "--policies", f"ppo:{path}", "--episodes", "1"],
    }[kind]


def run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return code, err.getvalue()


def place(kind: str, data: bytes, tmp: Path) -> Path:
    """Write ``data`` where ``kind`` reads it; returns the path to name on the command line."""
    if kind == "policy":  # ppo:DIR/p.mlp.json reads p.json (the sidecar), then p.mlp.json
        (tmp / "p.json").write_bytes(shipped("agents.trained", "ppo_default.json"))
        (tmp / "p.mlp.json").write_bytes(data)
        return tmp / "p.mlp.json"
    path = tmp / f"input.{'csv' if kind == 'trace' else 'yaml'}"
    path.write_bytes(data)
    return path


@st.composite
def damaged(draw, seed: bytes) -> bytes:
    """Random bytes, random text, or a valid file cut short or with bytes overwritten."""
    how = draw(st.sampled_from(["bytes", "text", "cut", "overwrite"]))
    if how == "bytes":
        return draw(st.binary(max_size=600))
    if how == "text":
        return draw(st.text(max_size=300)).encode("utf-8", "surrogatepass")
    if how == "cut":
        return seed[: draw(st.integers(0, len(seed)))]
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def check(kind: str, data: bytes, tmp: Path) -> None:
    code, err = run(command(kind, place(kind, data, tmp), tmp))
    assert code in (0, 2), (kind, code, err[-2000:])
    if code == 2:
        lines = [ln for ln in err.splitlines() if ln.strip() and " WARNING " not in ln]
        assert len(lines) == 1 and lines[0].startswith("adaptive "), err[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(SEEDS))
def test_random_and_damaged_files_are_refused_cleanly(kind, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(kind)

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=damaged(SEEDS[kind]))
    def fuzz(data: bytes) -> None:
        check(kind, data, tmp)

    fuzz()


@pytest.mark.parametrize("kind", sorted(SEEDS))
@pytest.mark.parametrize("what", ["directory", "fifo", "empty", "huge", "latin-1", "nul"])
def test_files_no_fuzzer_makes_are_one_line_and_exit_2(kind, what, tmp_path):
    target = place(kind, b"", tmp_path)
    target.unlink()
    if what == "directory":
        target.mkdir()
    elif what == "fifo":
        os.mkfifo(target)
    elif what == "empty":
        target.write_bytes(b"")
    elif what == "huge":
        with open(target, "wb") as fh:
            fh.truncate(65 * 1024 * 1024)  # sparse: 65 MiB of zeros, no disk used
    elif what == "latin-1":
        target.write_bytes("durée: 5\n".encode("latin-1"))
    else:
        target.write_bytes(b"time_s,bandwidth_mbps\n0,\x00\n")
    code, err = run(command(kind, target, tmp_path))
    assert code == 2, (code, err[-2000:])
    lines = [ln for ln in err.splitlines() if ln.strip() and " WARNING " not in ln]
    assert len(lines) == 1 and str(target.name) in lines[0], err[-2000:]
