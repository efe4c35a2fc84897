"""Experiment scenarios (``adaptive.scenario/v1``): what a researcher writes down, checked field by field.

A scenario fixes a model, the clients (each on its own edge device, with its own uplink, frame rate,
deadline and join/leave times), the accelerators they share, each node's background load, the
policies to compare, the duration, repeats and seed. Units are in the key names. Schema:
``adaptive/schemas/scenario.v1.json``; documented in ``docs/experiments.md``.

``plans`` may restrict the candidate plans every policy chooses from: ``min_edge_blocks`` (blocks
each edge runs before anything leaves it; seed 000 splits in 1..N) and ``codecs`` (the codecs
allowed at a split; ``none`` always is); ``include`` lists plans that are always candidates (labels
such as ``1,8``, e.g. a paper's fixed split points); ``parallel: true`` lets candidates carry a
parallel section (Intra-DP's local operation parallelism, ``docs/model.md``), and a policy
``NAME:layers`` then keeps to layer plans, so both can be compared on the same conditions. A policy
``plan:LABEL`` keeps that plan for every client, and its plan is included.

A link or load is one of

* ``{mbps: 20}`` / ``{fixed: 0.3}``: a constant;
* ``{steps: [[0, 30], [20, 2]]}``: ``[time_s, value]`` pairs, each value holding from its time on
  (times increasing, the first 0);
* ``{trace: NAME_OR_PATH, median_mbps: 8, start_s: 0}`` (links only): a measured trace (a
  shipped name or a CSV ``time_s,bandwidth_mbps``), optionally scaled to a median, read from
  ``start_s`` on and looped.

Everything here is plain data and numpy: :meth:`Scenario.conditions` turns it into the arrays the
multi-client environment replays (its ``script`` reset option).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from adaptive.errors import AdaptiveError, read_input

__all__ = ["AcceleratorSpec", "ClientSpec", "Scenario", "Schedule", "shipped_scenarios"]

SCHEMA = "adaptive.scenario/v1"
_LABEL = re.compile(r"^(\d+-\d+@[0-9.]+(x\d+)?|\d+)(,\d+)*(/[a-z0-9]+(,[a-z0-9]+)*)?$")  # 3,7 or 3-5@0.5,7
_ID = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"


def _fail(where: str, message: str) -> AdaptiveError:
    return AdaptiveError(f"{where}: {message}")


def _number(
    doc: dict[str, Any],
    key: str,
    where: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    above: float | None = None,
    default: Any = ...,
    unit: str = "",
) -> Any:
    if key not in doc:
        if default is ...:
            raise _fail(f"{where}.{key}", "required")
        return default
    x = doc[key]
    if x is None and default is None:
        return None
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        what = f"a number of {unit}" if unit else "a number"
        raise _fail(f"{where}.{key}", f"expected {what}, found {x!r}"[:160])
    if (lo is not None and x < lo) or (hi is not None and x > hi) or (above is not None and x <= above):
        bounds = " and ".join(
            b
            for b in (
                f">= {lo:g}" if lo is not None else "",
                f"> {above:g}" if above is not None else "",
                f"<= {hi:g}" if hi is not None else "",
            )
            if b
        )
        raise _fail(f"{where}.{key}", f"must be {bounds}, found {x!r}")
    return float(x)


def _keys(doc: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise _fail(where, f"expected a mapping, found {type(doc).__name__}")
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise _fail(f"{where}.{unknown[0]}", f"unknown key (expected one of {', '.join(sorted(allowed))})")
    return doc


def _name(x: Any, where: str) -> str:
    if not isinstance(x, str) or not x or len(x) > 64 or set(x) - set(_ID) or x[0] in "._-":
        raise _fail(where, f"expected a name of letters, digits and . _ - (up to 64), found {x!r}"[:160])
    return x


@dataclass(frozen=True)
class Schedule:
    """A quantity over time: a constant, steps, or (links only) a trace.

    Attributes:
        steps: ``(time_s, value)`` pairs, the first at 0 (a constant is one pair).
        trace: Trace name or path (None: steps).
        median_mbps: Scale the trace to this median (None: as measured).
        start_s: Where in the trace to start, s.
    """

    steps: tuple[tuple[float, float], ...] = ((0.0, 0.0),)
    trace: str | None = None
    median_mbps: float | None = None
    start_s: float = 0.0

    @classmethod
    def parse(cls, doc: Any, where: str, *, link: bool, duration_s: float) -> Schedule:
        """A link (``mbps``, Mbit/s > 0) or a load (``fixed``, a fraction in [0, 1])."""
        const, lo, hi, unit = (
            ("mbps", None, None, "Mbit/s") if link else ("fixed", 0.0, 1.0, "a fraction in [0, 1]")
        )
        allowed = {const, "steps"} | ({"trace", "median_mbps", "start_s"} if link else set())
        doc = _keys(doc, where, allowed)
        kinds = [k for k in (const, "steps", "trace") if k in doc]
        if len(kinds) != 1:
            raise _fail(
                where,
                f"give exactly one of {const}, steps"
                + (", trace" if link else "")
                + f" (found {', '.join(kinds) or 'none'})",
            )
        above = 0.0 if link else None
        if const in doc:
            return cls(((0.0, _number(doc, const, where, lo=lo, hi=hi, above=above, unit=unit)),))
        if "steps" in doc:
            steps = doc["steps"]
            if not isinstance(steps, list) or not steps:
                raise _fail(f"{where}.steps", "expected a list of [time_s, value] pairs")
            out = []
            for i, pair in enumerate(steps):
                w = f"{where}.steps[{i}]"
                if not isinstance(pair, list) or len(pair) != 2:
                    raise _fail(w, f"expected [time_s, value], found {pair!r}"[:160])
                t = _number({"time_s": pair[0]}, "time_s", w, lo=0.0, unit="s")
                v = _number({"value": pair[1]}, "value", w, lo=lo, hi=hi, above=above, unit=unit)
                out.append((t, v))
            if out[0][0] != 0:
                raise _fail(f"{where}.steps[0]", f"the first step must be at time 0, found {out[0][0]:g} s")
            for i, (a, b) in enumerate(itertools.pairwise(out), start=1):
                if b[0] <= a[0]:
                    raise _fail(f"{where}.steps[{i}]", f"times must increase ({b[0]:g} s after {a[0]:g} s)")
            if out[-1][0] >= duration_s:
                raise _fail(
                    f"{where}.steps[{len(out) - 1}]",
                    f"at {out[-1][0]:g} s, not before the end ({duration_s:g} s)",
                )
            return cls(tuple(out))
        trace = doc["trace"]
        if not isinstance(trace, str) or not trace:
            raise _fail(f"{where}.trace", "expected a shipped trace name or a CSV path")
        median = _number(doc, "median_mbps", where, above=0.0, default=None, unit="Mbit/s")
        start = _number(doc, "start_s", where, lo=0.0, default=0.0, unit="s")
        return cls(((0.0, 1.0),), trace, median, start)

    def values(self, times: np.ndarray) -> np.ndarray:
        """The value at each time (s from the scenario's start)."""
        if self.trace is not None:
            return self._trace_values(times)
        starts = np.array([t for t, _ in self.steps])
        vals = np.array([v for _, v in self.steps])
        return vals[np.searchsorted(starts, times, side="right") - 1]

    def _trace_values(self, times: np.ndarray) -> np.ndarray:
        from adaptive.model.traces import load_trace, resample

        path = Path(self.trace or "")
        if not path.exists():
            shipped = resources.files("envs.data").joinpath("traces", self.trace or "")
            if not shipped.is_file():
                raise AdaptiveError(f"trace '{self.trace}' is neither a file nor a shipped trace")
            path = Path(str(shipped))
        series = resample(load_trace(path), 1.0)  # one value per second, looped
        if self.median_mbps:
            series = series * (self.median_mbps / max(float(np.median(series[series > 0])), 1e-9))
        idx = (np.floor(times + self.start_s).astype(np.int64)) % len(series)
        return np.clip(series[idx], 0.05, None)

    def to_json(self, link: bool) -> dict[str, Any]:
        """The YAML form."""
        if self.trace is not None:
            doc: dict[str, Any] = {"trace": self.trace, "start_s": self.start_s}
            if self.median_mbps is not None:
                doc["median_mbps"] = self.median_mbps
            return doc
        if len(self.steps) == 1:
            return {"mbps" if link else "fixed": self.steps[0][1]}
        return {"steps": [list(p) for p in self.steps]}


@dataclass(frozen=True)
class ClientSpec:
    """One client on its own edge device.

    Attributes:
        name: Its edge node's name.
        rate_rps: Frames per second it sends.
        deadline_ms: A frame later than this is dropped, ms.
        join_s: When it starts sending, s.
        leave_s: When it stops, s (None: at the end).
        uplink: Its uplink bandwidth, Mbit/s.
        load: Its edge device's background CPU load, a fraction.
    """

    name: str
    rate_rps: float
    deadline_ms: float
    join_s: float
    leave_s: float | None
    uplink: Schedule
    load: Schedule


@dataclass(frozen=True)
class AcceleratorSpec:
    """A shared accelerator: its node name, device profile and background load."""

    name: str
    device: str
    load: Schedule


@dataclass(frozen=True)
class Scenario:
    """An experiment (see the module docstring); build with :meth:`load` or :meth:`from_dict`."""

    name: str
    model: str
    edge_device: str
    accelerators: tuple[AcceleratorSpec, ...]
    clients: tuple[ClientSpec, ...]
    duration_s: float
    policies: tuple[str, ...]
    dt_s: float = 0.25
    accel_link_mbps: float = 1000.0
    repeats: int = 1
    seed: int = 0
    description: str = ""
    device_scales: tuple[float, ...] = ()
    min_edge_blocks: int = 0
    codecs: tuple[str, ...] = ()
    include_plans: tuple[str, ...] = ()
    link_delay_ms: tuple[float, ...] = ()
    published: dict[str, Any] = field(default_factory=dict)
    source: str = "<dict>"
    live: dict[str, Any] = field(default_factory=dict)
    parallel: bool = False

    TOP: ClassVar[frozenset[str]] = frozenset(
        {
            "schema",
            "name",
            "description",
            "model",
            "edge_device",
            "accelerators",
            "clients",
            "duration_s",
            "dt_s",
            "accel_link_mbps",
            "link_delay_ms",
            "policies",
            "repeats",
            "seed",
            "device_scales",
            "published",
            "plans",
            "live",
        }
    )

    @classmethod
    def from_dict(cls, doc: Any, source: str = "<dict>") -> Scenario:
        """Validate a parsed document; every error names its field, e.g. ``clients[1].uplink.mbps``."""
        doc = _keys(doc, source, cls.TOP)
        if doc.get("schema") != SCHEMA:
            raise _fail(f"{source}: schema", f"expected '{SCHEMA}', found {doc.get('schema')!r}")
        duration = _number(doc, "duration_s", source, above=0.0, hi=3600.0, unit="s")
        dt = _number(doc, "dt_s", source, above=0.0, hi=10.0, default=0.25, unit="s")
        if duration / dt > 100_000:
            raise _fail(f"{source}.dt_s", f"{duration / dt:.0f} steps: at most 100000")
        model = doc.get("model")
        if not isinstance(model, str) or not model:
            raise _fail(f"{source}.model", "expected a model profile name or path")
        edge = doc.get("edge_device", "raspberry-pi-4")
        if not isinstance(edge, str) or not edge:
            raise _fail(f"{source}.edge_device", "expected a device profile name or path")
        accelerators = _accelerators(doc, source, duration)
        clients = _clients(doc, source, duration)
        names = [x.name for x in (*clients, *accelerators)]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise _fail(f"{source}: name", f"'{dup}' names two nodes")
        policies, repeats, seed = _policies(doc, source)
        scales, delays = _chain_numbers(doc, source, len(accelerators))
        min_edge, codecs, include, parallel = _plans(doc, source, policies)
        published = doc.get("published", {})
        if not isinstance(published, dict):
            raise _fail(f"{source}.published", "expected a mapping")
        default_name = Path(source).stem if source != "<dict>" else "scenario"
        name = _name(doc.get("name", default_name), f"{source}.name")
        description = doc.get("description", "")
        if not isinstance(description, str):
            raise _fail(f"{source}.description", "expected text")
        live = _keys(doc.get("live", {}), f"{source}.live", cls.TOP - {"schema", "name", "live", "published"})
        if live:  # the live variant must be a valid scenario too: fail now, not minutes into a run
            cls.from_dict({**doc, **live, "live": {}}, f"{source} (live)")
        accel_link = _number(doc, "accel_link_mbps", source, above=0.0, default=1000.0, unit="Mbit/s")
        return cls(name, model, edge, tuple(accelerators), tuple(clients), duration, tuple(policies), dt,
                   accel_link, repeats, seed, description.strip(), scales, min_edge, tuple(codecs),
                   tuple(include), delays, published, source, live, parallel)

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        """Read a scenario: a YAML file, or the name of a shipped one (``adaptive experiment list``)."""
        import yaml

        p = Path(path)
        if not p.exists():
            shipped = shipped_scenarios().get(str(path))
            if shipped is None:
                raise AdaptiveError(
                    f"{path}: no such scenario file or shipped scenario "
                    f"({', '.join(sorted(shipped_scenarios()))})"
                )
            p = shipped
        text = read_input(p, "a scenario (YAML)")
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise AdaptiveError(f"{p}: invalid YAML{where}") from None
        return cls.from_dict(doc, str(p))

    def for_live(self) -> Scenario:
        """The scenario ``--mode live`` runs: its ``live`` block's keys replace the top-level ones.

        A live run executes the real model on this machine, so a scenario whose devices the host
        cannot emulate (an AGX Orin runs VGG16 10x faster than a 2-core x86 VM) says how to run a
        host-sized version of it: a lighter model, slowed devices (``device_scales``), fewer
        policies or seconds. The sim it is compared with runs the same variant.
        """
        if not self.live:
            return self
        return Scenario.from_dict({**self.to_dict(), **self.live, "live": {}}, f"{self.source} (live)")

    def to_dict(self) -> dict[str, Any]:
        """The scenario as a document :meth:`from_dict` reads back (without its ``live`` block)."""
        doc: dict[str, Any] = {
            "schema": SCHEMA,
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "edge_device": self.edge_device,
            "accelerators": [
                {"name": a.name, "device": a.device, "load": a.load.to_json(False)} for a in self.accelerators
            ],
            "clients": [
                {
                    "name": c.name,
                    "rate_rps": c.rate_rps,
                    "deadline_ms": c.deadline_ms,
                    "join_s": c.join_s,
                    "leave_s": c.leave_s,
                    "uplink": c.uplink.to_json(True),
                    "load": c.load.to_json(False),
                }
                for c in self.clients
            ],
            "duration_s": self.duration_s,
            "dt_s": self.dt_s,
            "accel_link_mbps": self.accel_link_mbps,
            "policies": list(self.policies),
            "repeats": self.repeats,
            "seed": self.seed,
            "device_scales": list(self.device_scales),
            "published": self.published,
            "plans": {
                "min_edge_blocks": self.min_edge_blocks,
                "codecs": list(self.codecs),
                "include": list(self.include_plans),
                "parallel": self.parallel,
            },
            "link_delay_ms": list(self.link_delay_ms),
        }
        return doc

    @property
    def steps(self) -> int:
        """Steps of ``dt_s`` in the scenario."""
        return round(self.duration_s / self.dt_s)

    def times(self) -> np.ndarray:
        """The start of every step, s."""
        return np.arange(self.steps) * self.dt_s

    def conditions(self) -> dict[str, np.ndarray]:
        """The true conditions at every step (the environment's ``script`` reset option).

        ``active``, ``rate``, ``bw``, ``edge_load`` ``(T, K)``, ``accel_load`` ``(T, M)`` and
        ``deadline_ms`` ``(K,)``.
        """
        t = self.times()
        mid = t + self.dt_s / 2  # a step's conditions are those at its middle
        active = np.stack(
            [(t >= c.join_s) & (t < (c.leave_s if c.leave_s is not None else np.inf)) for c in self.clients],
            axis=1,
        )
        return {
            "active": active,
            "rate": np.tile([c.rate_rps for c in self.clients], (len(t), 1)),
            "bw": np.stack([c.uplink.values(mid) for c in self.clients], axis=1),
            "edge_load": np.stack([c.load.values(mid) for c in self.clients], axis=1),
            "accel_load": np.stack([a.load.values(mid) for a in self.accelerators], axis=1),
            "deadline_ms": np.array([c.deadline_ms for c in self.clients]),
        }


def shipped_scenarios() -> dict[str, Path]:
    """The scenarios shipped with the package, by name."""
    folder = resources.files("adaptive.data").joinpath("scenarios")
    return {Path(str(f)).stem: Path(str(f)) for f in folder.iterdir() if str(f).endswith(".yaml")}


def _accelerators(doc: dict[str, Any], source: str, duration: float) -> list[AcceleratorSpec]:
    accs = doc.get("accelerators")
    if not isinstance(accs, list) or not 1 <= len(accs) <= 4:
        raise _fail(f"{source}.accelerators", "expected a list of 1 to 4 accelerators")
    accelerators = []
    for i, a in enumerate(accs):
        w = f"{source}.accelerators[{i}]"
        a = _keys(a, w, {"name", "device", "load"})
        if not isinstance(a.get("device"), str) or not a["device"]:
            raise _fail(f"{w}.device", "expected a device profile name or path")
        load = Schedule.parse(a.get("load", {"fixed": 0.0}), f"{w}.load", link=False, duration_s=duration)
        name = _name(a.get("name", f"accel{i + 1}"), f"{w}.name")
        accelerators.append(AcceleratorSpec(name, a["device"], load))
    return accelerators


def _clients(doc: dict[str, Any], source: str, duration: float) -> list[ClientSpec]:
    entries = doc.get("clients")
    if not isinstance(entries, list) or not 1 <= len(entries) <= 16:
        raise _fail(f"{source}.clients", "expected a list of 1 to 16 clients")
    clients = []
    for i, c in enumerate(entries):
        w = f"{source}.clients[{i}]"
        c = _keys(c, w, {"name", "rate_rps", "deadline_ms", "join_s", "leave_s", "uplink", "load"})
        join = _number(c, "join_s", w, lo=0.0, default=0.0, unit="s")
        leave = _number(c, "leave_s", w, above=0.0, default=None, unit="s")
        if join >= duration:
            raise _fail(f"{w}.join_s", f"{join:g} s is not before the end ({duration:g} s)")
        if leave is not None and leave <= join:
            raise _fail(f"{w}.leave_s", f"{leave:g} s is not after join_s ({join:g} s)")
        if "uplink" not in c:
            raise _fail(f"{w}.uplink", "required")
        clients.append(ClientSpec(
            _name(c.get("name", f"client{i + 1}"), f"{w}.name"),
            _number(c, "rate_rps", w, above=0.0, hi=1000.0, unit="frames/s"),
            _number(c, "deadline_ms", w, above=0.0, default=1000.0, unit="ms"),
            join, leave,
            Schedule.parse(c["uplink"], f"{w}.uplink", link=True, duration_s=duration),
            Schedule.parse(c.get("load", {"fixed": 0.0}), f"{w}.load", link=False, duration_s=duration)))
    return clients


def _policies(doc: dict[str, Any], source: str) -> tuple[list[str], int, int]:
    policies = doc.get("policies")
    if (not isinstance(policies, list) or not policies or not all(isinstance(p, str) and p for p in policies)
            or len(set(policies)) != len(policies)):
        raise _fail(f"{source}.policies", "expected a list of distinct policy names")
    repeats = doc.get("repeats", 1)
    seed = doc.get("seed", 0)
    for key, value, lo in (("repeats", repeats, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise _fail(f"{source}.{key}", f"expected an integer >= {lo}, found {value!r}")
    return policies, repeats, seed


def _chain_numbers(doc: dict[str, Any], source: str,
                   accels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``device_scales`` (the edge, then each accelerator) and ``link_delay_ms`` (one per link)."""
    scales = doc.get("device_scales", [])
    if (not isinstance(scales, list) or (scales and len(scales) != 1 + accels)
            or not all(not isinstance(x, bool) and isinstance(x, int | float) and x > 0 for x in scales)):
        raise _fail(f"{source}.device_scales",
                    f"expected {1 + accels} positive numbers (the edge, then each accelerator) or none")
    delays = doc.get("link_delay_ms", [])
    if (not isinstance(delays, list) or (delays and len(delays) != accels)
            or not all(not isinstance(x, bool) and isinstance(x, int | float) and 0 <= x < 60_000
                       for x in delays)):
        raise _fail(f"{source}.link_delay_ms",
                    f"expected {accels} numbers of ms >= 0 (every client's uplink, then each link between "
                    f"accelerators) or none, found {delays!r}"[:200])
    return tuple(float(x) for x in scales), tuple(float(x) for x in delays)


def _plans(doc: dict[str, Any], source: str, policies: list[str]) -> tuple[int, list[str], list[str], bool]:
    """``plans``: min_edge_blocks, codecs, the labels to include (every ``plan:`` policy's too), parallel."""
    keys = {"min_edge_blocks", "codecs", "include", "parallel"}
    plans = _keys(doc.get("plans", {}), f"{source}.plans", keys)
    parallel = plans.get("parallel", False)
    if not isinstance(parallel, bool):
        raise _fail(f"{source}.plans.parallel", f"expected true or false, found {parallel!r}")
    layers = [p for p in policies if p.endswith(":layers")]
    if layers and not parallel:
        raise _fail(f"{source}.policies", f"'{layers[0]}': ':layers' needs plans.parallel: true")
    min_edge = plans.get("min_edge_blocks", 0)
    if isinstance(min_edge, bool) or not isinstance(min_edge, int) or min_edge < 0:
        raise _fail(f"{source}.plans.min_edge_blocks", f"expected an integer >= 0, found {min_edge!r}")
    codecs = plans.get("codecs", [])
    if not isinstance(codecs, list) or not all(c in ("none", "fp16", "int8") for c in codecs):
        raise _fail(f"{source}.plans.codecs", f"expected a list of none, fp16, int8, found {codecs!r}"[:160])
    include = plans.get("include", [])
    if not isinstance(include, list) or not all(isinstance(x, str) and _LABEL.match(x) for x in include):
        raise _fail(f"{source}.plans.include",
                    f"expected plan labels such as '1,8' or '3,7/int8,none', found {include!r}"[:160])
    for p in policies:
        if p.startswith("plan:"):
            if not _LABEL.match(p[5:]):
                raise _fail(f"{source}.policies", f"'{p}': expected plan:SPLITS, e.g. plan:1,8")
            if p[5:] not in include:
                include = [*include, p[5:]]
    sectioned = next((x for x in include if "@" in x), None)
    if sectioned is not None and not parallel:
        raise _fail(f"{source}.plans", f"'{sectioned}': a plan with a section needs plans.parallel: true")
    return min_edge, codecs, include, parallel
