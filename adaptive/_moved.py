"""Old import paths of modules that moved in 0.2, kept working for one release (see CHANGELOG.md).

``import adaptive.latency`` still works, with a :class:`DeprecationWarning`, and gives a thin
module that forwards every attribute to :mod:`adaptive.model.latency`. Setting an attribute on the
old path does not reach the new module (patch the new path). Installed by ``adaptive/__init__.py``;
``monitor`` and ``agents`` import ``adaptive``, so their old paths resolve too.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

__all__ = ["MOVED", "install"]

MOVED: dict[str, str] = {
    "adaptive.codecs": "adaptive.model.codecs",
    "adaptive.decision": "adaptive.model.decision",
    "adaptive.derive": "adaptive.model.derive",
    "adaptive.latency": "adaptive.model.latency",
    "adaptive.mlp": "adaptive.model.mlp",
    "adaptive.multiclient": "adaptive.model.shared_chain",
    "adaptive.observation": "adaptive.model.observation",
    "adaptive.planner": "adaptive.model.planner",
    "adaptive.plans": "adaptive.model.plans",
    "adaptive.profiles": "adaptive.model.profiles",
    "adaptive.traces": "adaptive.model.traces",
    "adaptive.linkprofile": "adaptive.nn.linkprofile",
    "adaptive.partition": "adaptive.nn.partition",
    "adaptive.profiler": "adaptive.nn.profiler",
    "adaptive.zoo": "adaptive.nn.zoo",
    "adaptive.controller": "adaptive.control.controller",
    "adaptive.metrics": "adaptive.control.metrics",
    "adaptive.shared_controller": "adaptive.control.shared_controller",
    "adaptive.broker": "adaptive.lab.broker",
    "adaptive.demo": "adaptive.lab.demo",
    "adaptive.demo_clients": "adaptive.lab.demo_clients",
    "adaptive.netns": "adaptive.lab.netns",
    "adaptive.report": "adaptive.experiments.report",
    "adaptive.scenario": "adaptive.experiments.scenario",
    "agents.experiment": "adaptive.experiments.simulate",
    "agents.experiment_live": "adaptive.experiments.live",
    "agents.live": "agents.wiring",
    "monitor.collector": "adaptive.control.telemetry",
    "monitor.ports": "adaptive.lab.ports",
    "monitor.rules": "adaptive.protocol.rules",
    "monitor.schema": "adaptive.protocol.messages",
}


class _Forward(importlib.abc.Loader):
    """Loads an old path as a module whose attributes are the new module's."""

    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        warnings.warn(f"{spec.name} moved to {self.new}; the old path goes away in the next release",
                      DeprecationWarning, stacklevel=2)
        target = importlib.import_module(self.new)
        module = types.ModuleType(spec.name, target.__doc__)

        def forward(name: str) -> Any:
            return getattr(target, name)

        module.__getattr__ = forward  # type: ignore[method-assign]
        module.__dir__ = lambda: dir(target)  # type: ignore[method-assign]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the module forwards."""


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any,
                  target: Any = None) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        return None if new is None else importlib.machinery.ModuleSpec(fullname, _Forward(new))


def install() -> None:
    """Let the old paths resolve (idempotent)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
