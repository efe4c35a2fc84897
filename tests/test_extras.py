"""Each command runs with only the extras the docs say it needs (issue 20).

A subprocess makes every optional package outside those extras unimportable and runs the command as a
user would: it must get as far as the live system lets it here (a broker that is not there, a bad
argument), never stop on a module its extras do not install.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
IMPORTS = {  # distribution -> the modules it makes importable (with what it depends on)
    "torch": {"torch"}, "torchvision": {"torchvision", "torch"}, "pyzmq": {"zmq"}, "tqdm": {"tqdm"},
    "gymnasium": {"gymnasium"}, "stable-baselines3": {"stable_baselines3", "torch", "gymnasium"},
    "sb3-contrib": {"sb3_contrib", "stable_baselines3", "torch"}, "matplotlib": {"matplotlib"},
    "tensorboard": {"tensorboard"}, "rich": {"rich"}, "amqtt": {"amqtt"},
}


def extras() -> dict[str, set[str]]:
    """pyproject.toml's runtime, train and broker extras, as import names."""
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {name: set().union(*(IMPORTS[re.split(r"[<>=!~\[ ]", dep)[0]] for dep in optional[name]))
            for name in ("runtime", "train", "broker")}


EXTRAS = extras()
OPTIONAL = set().union(*EXTRAS.values())
CONFIG = ("model_profile: mobilenet_v2\nchain:\n  - {node: pi, device: raspberry-pi-4}\n"
          "  - {node: j, device: jetson-nano}\n")
NOWHERE = "mqtt://127.0.0.1:1"

CASES = [  # (extras, argv, what a successful run prints or the expected clean error)
    ((), ["predict", "--model-profile", "mobilenet_v2", "--devices", "raspberry-pi-4,jetson-nano",
          "--bandwidth", "10", "--splits", "5"], ""),
    ((), ["plan", "--model-profile", "mobilenet_v2", "--devices", "raspberry-pi-4,jetson-nano",
          "--bandwidth", "10"], ""),
    ((), ["plan-table", "--model-profile", "mobilenet_v2", "--devices", "raspberry-pi-4,jetson-nano",
          "--bandwidth-grid", "1:50:1"], ""),
    ((), ["profiles"], ""),
    ((), ["monitor", "--node", "pi", "--broker", NOWHERE, "--probe-port", "-1"], "cannot reach broker"),
    ((), ["controller", "--config", "CONFIG", "--policy", "hysteresis", "--broker", NOWHERE],
     "cannot reach broker"),
    ((), ["controller", "--config", "CONFIG", "--policy", "greedy", "--broker", NOWHERE],
     "cannot reach broker"),
    ((), ["keys", "--sign", "OUT", "controller"], ""),
    (("runtime",), ["keys", "OUT", "pi", "client-1"], ""),
    (("runtime",), ["node", "--node", "a", "--model", "resnet20_cifar", "--broker", NOWHERE],
     "cannot reach broker"),
    (("runtime",), ["client", "--model", "resnet20_cifar", "--broker", NOWHERE, "--wait", "1"],
     "cannot reach broker"),
    (("runtime",), ["partition", "--model", "resnet20_cifar"], ""),
    (("runtime",), ["profile", "model", "--model", "resnet20_cifar", "--repeats", "1", "--warmup", "0",
                    "--out", "OUT/p.yaml"], ""),
    (("train",), ["controller", "--config", "CONFIG", "--policy", "ppo", "--broker", NOWHERE],
     "the PPO policy was trained for"),
    (("train",), ["evaluate", "--policies", "greedy,ppo", "--episodes", "1"], ""),
    (("train",), ["experiment", "run", "liu-fig13a", "--mode", "sim", "--repeats", "1", "--out", "OUT/x"],
     ""),
]


@pytest.mark.slow
@pytest.mark.parametrize(("extras", "argv", "expect"), CASES,
                         ids=[f"{'+'.join(e) or 'base'}: {' '.join(a[:2])}" for e, a, _ in CASES])
def test_each_command_runs_with_only_its_extras(tmp_path, extras, argv, expect):
    allowed = set().union(*(EXTRAS[e] for e in extras)) if extras else set()
    blocked = sorted(OPTIONAL - allowed)
    (tmp_path / "ctl.yaml").write_text(CONFIG)
    argv = [a.replace("CONFIG", str(tmp_path / "ctl.yaml")).replace("OUT", str(tmp_path)) for a in argv]
    code = (f"import sys\nfor m in {blocked!r}: sys.modules[m] = None\n"
            "from adaptive.cli import main\nsys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert "extra" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if expect:
        assert proc.returncode == 2 and expect in proc.stderr, proc.stderr[-3000:]
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert Path(tmp_path).exists()
