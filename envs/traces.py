"""The measured traces shipped with the environment (loading and scaling live in adaptive.model.traces)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from adaptive.model.traces import Trace, TraceScaling, load_trace, load_traces, resample, synthetic

__all__ = ["Trace", "TraceScaling", "load_trace", "load_traces", "resample", "shipped_traces", "synthetic"]


def shipped_traces() -> list[Trace]:
    """The measured traces shipped in the package (MIT / CC BY sources; see their README)."""
    return load_traces([Path(str(resources.files("envs.data").joinpath("traces")))])
