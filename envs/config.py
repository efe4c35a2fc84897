"""Configuration of :class:`envs.split_inference.SplitInferenceEnv`, from YAML, a dict or defaults."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from adaptive.errors import AdaptiveError, read_input
from envs.traces import TraceScaling

__all__ = ["EnvConfig", "MultiClientConfig", "NodeProcess"]


@dataclass(frozen=True)
class NodeProcess:
    """A mean-reverting random process for a per-node quantity (Ornstein–Uhlenbeck, clipped).

    Attributes:
        mean: Long-run mean per device (one value: all devices).
        sd: Stationary standard deviation.
        reversion: Fraction of the gap to the mean closed per step, in (0, 1].
        low: Lower clip.
        high: Upper clip.
    """

    mean: tuple[float, ...] = (0.2,)
    sd: float = 0.15
    reversion: float = 0.1
    low: float = 0.0
    high: float = 0.95


@dataclass(frozen=True)
class EnvConfig:
    """Everything the environment needs (units in the names; ``None`` means automatic).

    Attributes:
        model_profile: Shipped model name or profile path.
        devices: Chain of shipped device names or profile paths, input device first.
        device_scales: Compute time of each device relative to its profile (e.g. what the live
            controller's calibration measured: ``[1, 1, 10]`` for an accelerator emulated on a host
            10× slower); empty: the profiles as they are. Candidate plans stay those of the
            profiles, as they do for a controller running a trained policy.
        traces: Trace files or directories; empty means the traces shipped in the package.
        synthetic: Synthetic trace kinds mixed in (``steps``, ``random_walk``, ``markov``).
        synthetic_share: Probability that a link's trace in an episode is synthetic, [0, 1].
        scaling: How each trace is mapped onto the link class (see :class:`TraceScaling`).
        dt_s: Seconds per step (> 0).
        max_steps: Episode length used by the registered ``TimeLimit`` and by precomputation.
        history: Bandwidth samples per link in the observation.
        cpu_load: Background CPU load process per device, in [0, 0.95].
        memory_used: Memory-in-use fraction process per device, in [0, 0.99].
        max_clients: Largest number of clients sharing the accelerators.
        client_change_prob: Probability per step that one client joins or leaves.
        bw_noise: Log-normal sigma of reported bandwidth (telemetry noise).
        load_noise: Standard deviation of reported CPU load.
        staleness_steps: Age of the telemetry the policy sees, steps (≥ 0).
        switch_cost_ms: Latency added to a step whose plan differs from the previous one, ms.
        energy_weight: Weight of energy (relative to the reference) in the reward, ≥ 0.
        slo_ms: Latency SLO, ms; ``None``: no SLO term.
        slo_penalty: Reward penalty per step over the SLO.
        infeasible_penalty: Reward penalty for a plan that does not fit memory.
        ref_latency_ms: Reward normaliser, ms; ``None``: device-only latency at no load.
        max_plans: Size of the candidate plan set (the action space).
        use_codecs: Let candidates use the model profile's activation codecs.
        codecs: Only these codecs (empty: every codec of the profile; ``none`` is always allowed).
        min_edge_blocks: Blocks the first device runs before anything leaves it, in every
            candidate (seed 000 splits in 1..N: 1; 0 lets a plan send the raw input).
        include_plans: Plans always among the candidates (labels such as ``1,8`` or
            ``3,7/int8,none``), e.g. the fixed split points a paper compares.
        parallel: Candidates may carry a parallel section (Intra-DP's local operation
            parallelism, ``docs/model.md``: the edge and the accelerator compute bands of the same
            blocks while the input streams); false: layer plans only.
    """

    model_profile: str = "mobilenet_v2"
    devices: tuple[str, ...] = ("raspberry-pi-4", "jetson-nano", "jetson-agx-orin")
    device_scales: tuple[float, ...] = ()
    traces: tuple[str, ...] = ()
    synthetic: tuple[str, ...] = ("steps", "random_walk", "markov")
    synthetic_share: float = 0.2
    scaling: TraceScaling = field(default_factory=TraceScaling)
    dt_s: float = 0.25
    max_steps: int = 800
    history: int = 4
    cpu_load: NodeProcess = field(default_factory=lambda: NodeProcess((0.2,), 0.15, 0.026, 0.0, 0.95))
    memory_used: NodeProcess = field(default_factory=lambda: NodeProcess((0.4,), 0.1, 0.0127, 0.0, 0.99))
    max_clients: int = 4
    client_change_prob: float = 0.0125
    bw_noise: float = 0.1
    load_noise: float = 0.05
    staleness_steps: int = 1
    switch_cost_ms: float = 0.0
    energy_weight: float = 0.0
    slo_ms: float | None = None
    slo_penalty: float = 1.0
    infeasible_penalty: float = 2.0
    ref_latency_ms: float | None = None
    max_plans: int = 32
    use_codecs: bool = True
    codecs: tuple[str, ...] = ()
    min_edge_blocks: int = 0
    include_plans: tuple[str, ...] = ()
    parallel: bool = True

    default_file: ClassVar[str] = "default.yaml"

    def __post_init__(self) -> None:
        checks = [
            (self.dt_s > 0, "dt_s must be > 0"),
            (self.max_steps >= 1, "max_steps must be >= 1"),
            (self.history >= 1, "history must be >= 1"),
            (0 <= self.synthetic_share <= 1, "synthetic_share must be in [0, 1]"),
            (self.max_clients >= 1, "max_clients must be >= 1"),
            (0 <= self.client_change_prob <= 1, "client_change_prob must be in [0, 1]"),
            (self.bw_noise >= 0 and self.load_noise >= 0, "noise must be >= 0"),
            (self.staleness_steps >= 0, "staleness_steps must be >= 0"),
            (self.switch_cost_ms >= 0, "switch_cost_ms must be >= 0"),
            (self.energy_weight >= 0, "energy_weight must be >= 0"),
            (self.slo_ms is None or self.slo_ms > 0, "slo_ms must be > 0"),
            (self.max_plans >= 2, "max_plans must be >= 2"),
            (self.min_edge_blocks >= 0, "min_edge_blocks must be >= 0"),
            (len(self.devices) >= 1, "devices must list at least one device"),
            (not self.device_scales or (len(self.device_scales) == len(self.devices)
                                        and all(k > 0 for k in self.device_scales)),
             "device_scales must be empty or one number > 0 per device"),
        ]
        for ok, message in checks:
            if not ok:
                raise AdaptiveError(f"env config: {message}")

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], source: str = "<dict>") -> EnvConfig:
        """Build from a mapping; unknown keys and wrong types are errors naming the key."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in doc.items():
            if key not in known:
                raise AdaptiveError(f"{source}: unknown env config key '{key}' "
                                    f"(expected one of {', '.join(sorted(known))})")
            try:
                kwargs[key] = _convert(key, value)
            except (TypeError, ValueError, AttributeError, KeyError) as exc:
                raise AdaptiveError(f"{source}: env config key '{key}': {exc}"[:300]) from None
        try:
            return cls(**kwargs)
        except TypeError as exc:  # a value of the wrong kind that the checks compare
            raise AdaptiveError(f"{source}: env config: {exc}"[:300]) from None

    @classmethod
    def load(cls, path: str | Path | None = None) -> EnvConfig:
        """Load YAML (the shipped default, ``envs/data/`` + :attr:`default_file`, when ``path`` is None)."""
        import yaml

        if path is None:
            name = cls.default_file
            text, source = resources.files("envs.data").joinpath(name).read_text(), name
        else:
            text, source = read_input(path, "an env config (YAML)"), str(path)
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError:
            raise AdaptiveError(f"{source}: invalid YAML") from None
        if not isinstance(doc, dict):
            raise AdaptiveError(f"{source}: expected a mapping of env config keys")
        section = doc.get("env", doc)
        if not isinstance(section, dict):
            raise AdaptiveError(f"{source}: 'env' must be a mapping of env config keys")
        return cls.from_dict(section, source)

    @classmethod
    def resolve(cls, config: EnvConfig | Mapping[str, Any] | str | Path | None = None,
                overrides: Mapping[str, Any] | None = None) -> Any:
        """The config an env constructor was given, with single keys overridden.

        ``config`` is a config, a mapping, a YAML path, or ``None`` for the shipped default.
        """
        if isinstance(config, cls) and not overrides:
            return config
        if isinstance(config, cls):
            base: Mapping[str, Any] = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        elif isinstance(config, Mapping):
            base = config
        else:
            loaded = cls.load(config)
            if not overrides:
                return loaded
            base = {f.name: getattr(loaded, f.name) for f in dataclasses.fields(loaded)}
        return cls.from_dict({**base, **(overrides or {})})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for sidecars and resolved-config files)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MultiClientConfig(EnvConfig):
    """Configuration of ``adaptive/MultiClient-v0``: :class:`EnvConfig` plus the client streams.

    ``devices`` is the chain template ``[edge, a1, …, aM]``: every client has its own edge device of
    the first kind, and all share ``a1..aM``. ``max_clients`` is the number of client slots. Each
    client has its own uplink trace, edge load and frame rate; ``cpu_load.mean`` gives the edge's
    mean first, then each accelerator's. Memory (``memory_used``), ``slo_*``, ``switch_cost_ms`` and
    ``infeasible_penalty`` do not apply here: the deadline and the drop penalty take their place.

    Attributes:
        client_rate_rps: Range of a client's frame rate, frames/s, drawn log-uniformly when it joins.
        deadline_ms: A frame whose latency on arrival would exceed this is dropped at its source, ms.
        drop_penalty: Cost of a dropped frame in the reward, in units of ``ref_latency_ms``.
        min_clients: Fewest clients present at any time (≥ 1).
        accel_link_mbps: Bandwidth of the wired links between accelerators, Mbit/s.
        link_delay_ms: Propagation delay of every client's uplink, then of each link between
            accelerators, ms (empty: none).
    """

    max_steps: int = 800
    parallel: bool = False  # the shipped joint policy chooses among layer plans
    client_rate_rps: tuple[float, float] = (1.0, 8.0)
    deadline_ms: float = 1000.0
    drop_penalty: float = 5.0
    min_clients: int = 1
    accel_link_mbps: float = 1000.0
    link_delay_ms: tuple[float, ...] = ()
    client_change_prob: float = 0.02

    default_file: ClassVar[str] = "multi_client.yaml"

    def __post_init__(self) -> None:
        super().__post_init__()
        lo, hi = self.client_rate_rps
        checks = [
            (0 < lo <= hi, "client_rate_rps must be [low, high] frames/s with 0 < low <= high"),
            (self.deadline_ms > 0, "deadline_ms must be > 0"),
            (self.drop_penalty >= 0, "drop_penalty must be >= 0"),
            (1 <= self.min_clients <= self.max_clients, "min_clients must be in 1..max_clients"),
            (self.accel_link_mbps > 0, "accel_link_mbps must be > 0"),
            (len(self.devices) >= 2, "devices must list an edge device and at least one accelerator"),
            (not self.link_delay_ms or (len(self.link_delay_ms) == len(self.devices) - 1
                                        and all(d >= 0 for d in self.link_delay_ms)),
             "link_delay_ms must be empty or one number >= 0 per link (uplink, then between accelerators)"),
        ]
        for ok, message in checks:
            if not ok:
                raise AdaptiveError(f"env config: {message}")


def _convert(key: str, value: Any) -> Any:
    if isinstance(value, TraceScaling | NodeProcess):
        return value
    if key in ("device_scales", "link_delay_ms"):
        return tuple(float(v) for v in value)
    if key == "client_rate_rps":
        rates = [float(v) for v in value] if isinstance(value, list | tuple) else [float(value)]
        if len(rates) not in (1, 2):
            raise ValueError(f"expected one rate or [low, high], found {value!r}")
        return (rates[0], rates[-1])
    if key == "include_plans":  # labels hold commas: a list, or one label
        return (value,) if isinstance(value, str) else tuple(str(v) for v in value)
    if key in ("devices", "traces", "synthetic", "codecs"):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        return tuple(str(v) for v in value)
    if key == "scaling":
        target = value.get("target_median_mbps", (3.0, 30.0))
        if target is not None:
            target = (float(target[0]), float(target[-1])) if isinstance(target, list | tuple) else (
                float(target), float(target))
        return TraceScaling(target, float(value.get("min_mbps", 0.05)), float(value.get("max_mbps", 1000.0)))
    if key in ("cpu_load", "memory_used"):
        mean = value.get("mean", 0.2)
        mean = tuple(float(m) for m in mean) if isinstance(mean, list | tuple) else (float(mean),)
        return NodeProcess(mean, float(value.get("sd", 0.15)), float(value.get("reversion", 0.1)),
                           float(value.get("low", 0.0)), float(value.get("high", 0.95)))
    if key in ("max_steps", "history", "max_clients", "staleness_steps", "max_plans", "min_clients",
               "min_edge_blocks"):
        if isinstance(value, bool) or int(value) != value:
            raise TypeError(f"expected an integer, found {value!r}")
        return int(value)
    if key in ("use_codecs", "parallel"):
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, found {value!r}")
        return value
    if key in ("slo_ms", "ref_latency_ms") and value is None:
        return None
    if key in ("model_profile",):
        return str(value)
    return float(value)
