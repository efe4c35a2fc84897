"""The systemd units in docs/deploy run command lines the CLI accepts, with no secret on them."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from adaptive.cli import build_parser
from monitor.cli import add_arguments

DEPLOY = Path(__file__).resolve().parents[1] / "docs" / "deploy"
SAMPLE = {"NODE": "jetson-1", "BROKER": "mqtts://jetson-1@broker.lan:8883", "PEERS": "orin-1=127.0.0.1:7300",
          "PROBE_ALLOW": "", "DEVICE": "jetson-nano", "MODEL": "mobilenet_v2", "BIND": "10.0.0.12",
          "ADVERTISE": "jetson-1.lan", "PORT": "5555", "THREADS": "4", "POLICY": "hysteresis",
          "CREDENTIALS_DIRECTORY": "/run/credentials/x"}


def command(unit: Path) -> list[str]:
    text = unit.read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    env = dict(SAMPLE)
    env.update(re.findall(r"^Environment=(\w+)=(\S*)$", text, re.M))
    expanded = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], line.removeprefix("ExecStart="))
    return shlex.split(expanded)


@pytest.mark.parametrize("unit", sorted(DEPLOY.glob("*.service")), ids=lambda p: p.name)
def test_each_unit_runs_a_command_line_the_cli_accepts(unit):
    argv = command(unit)
    assert argv[0] == "/usr/bin/env"
    if argv[1:3] == ["python3", "-m"]:
        assert argv[3] == "monitor"
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        args = parser.parse_args(argv[4:])
    else:
        assert argv[1] == "adaptive"
        args = build_parser().parse_args(argv[2:])
    assert ":" not in args.broker.split("//")[1].split("@")[0], "a password in the broker URL"
    assert args.password_file and args.password_file.startswith("/run/credentials/")
    assert "LoadCredential=password:" in unit.read_text()
    if argv[1:3] == ["adaptive", "node"]:
        assert args.controller_key and args.curve_keys  # signed plans and rules, a CURVE data plane
    if argv[1:3] == ["adaptive", "controller"]:
        assert args.sign_key
