"""Device and model profiles: records, loading and validation.

Two file formats are contracts (see ``docs/profiles.md`` and the JSON Schemas in
``adaptive/schemas/``):

* ``adaptive.device/v1`` — a device: compute class, memory, power, the receive side of its
  link (seed 000 Eq. 4) and NIC↔compute data movement (seed 000 Eqs. 6–7).
* ``adaptive.model/v1`` — a model cut into blocks: activation sizes, parameters, per-device
  batch-1 latency of each block and the per-device summation correction (seed 000 Eqs. 1–2).

Files may be YAML or JSON. Every problem is reported as :class:`~adaptive.errors.ProfileError`
naming the file, the field and what was expected. Shipped profiles live in
``adaptive/data/{devices,models}`` and can be referred to by name.

Units: ``_ms`` milliseconds, ``_bytes`` bytes, ``_mb`` 10^6 bytes, ``_w`` watts, and KB means
10^3 bytes wherever a coefficient is "per KB".
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from adaptive.errors import AdaptiveError, ProfileError, read_input

__all__ = [
    "DEFAULT_ROW_EFFICIENCY",
    "DEFAULT_ROW_OP_MS",
    "Block",
    "Codec",
    "Correction",
    "DeviceProfile",
    "LinearCost",
    "LinkProfile",
    "ModelProfile",
    "device_from_dict",
    "list_shipped",
    "load_device",
    "load_model",
    "model_from_dict",
    "model_to_dict",
    "resolve_device",
    "resolve_model",
    "save_profile",
    "scaled_profiles",
]

DEVICE_SCHEMA = "adaptive.device/v1"
MODEL_SCHEMA = "adaptive.model/v1"
_DEFAULT_LOAD_SENSITIVITY = {"cpu": 1.0, "gpu": 0.25}

# A band of rho of a block's output rows costs f + (t - f)·h(rho), t the block's time and
# f = min(ops·op_ms, t) the fixed cost of its operators; h piecewise linear through these points
# and (0, 0). CPU: the median of three fits by 'adaptive profile model --row-fractions' for
# MobileNetV2 on the development VM (docs/model.md, "Parallel sections"); GPU: an assumption, not a
# measurement (a small band leaves a GPU's cores idle: 0.2 + 0.8 rho; no fixed part).
DEFAULT_ROW_EFFICIENCY: dict[str, tuple[tuple[float, float], ...]] = {
    "cpu": ((0.125, 0.06), (0.25, 0.15), (0.5, 0.33), (0.75, 0.57), (1.0, 1.05)),
    "gpu": ((0.125, 0.3), (0.25, 0.4), (0.5, 0.6), (0.75, 0.8), (1.0, 1.0)),
}
DEFAULT_ROW_OP_MS: dict[str, float] = {"cpu": 0.053, "gpu": 0.0}


@dataclass(frozen=True)
class LinearCost:
    """A cost linear in data size: ``ms = per_kb_ms * KB + offset_ms`` with KB = 10^3 bytes."""

    per_kb_ms: float
    offset_ms: float

    def ms(self, nbytes: np.ndarray | float) -> np.ndarray | float:
        """Cost in ms of handling ``nbytes`` bytes."""
        return self.per_kb_ms * (np.asarray(nbytes, dtype=float) / 1e3) + self.offset_ms


@dataclass(frozen=True)
class LinkProfile:
    """Receive side of the link into a device (seed 000 Eq. 4, Table II).

    Attributes:
        first_packet_ms: T_FP, latency of the first packet, ms (measured at the reference rate).
        per_kb_ms: Q0, reception time per KB at ``ref_bandwidth_mbps``, ms/KB.
        offset_ms: Q1, intercept of the reception fit, ms (may be negative).
        ref_bandwidth_mbps: Link rate at which Q0 and T_FP were measured, Mbit/s.
        mtu_bytes: Packet size for the first-packet and multi-hop fragment terms, bytes.
    """

    first_packet_ms: float
    per_kb_ms: float
    offset_ms: float
    ref_bandwidth_mbps: float
    mtu_bytes: int = 1500


@dataclass(frozen=True)
class DeviceProfile:
    """A device of the chain (contract ``adaptive.device/v1``).

    Attributes:
        name: Key used in model profiles and on the command line.
        accelerator: ``"gpu"`` or ``"cpu"``.
        memory_mb: Memory usable for model stages, MB.
        power_active_w: Power while computing, moving or receiving data, W.
        power_idle_w: Power while idle, W.
        link: Receive side of the link into this device.
        inbound: NIC→compute data movement (deserialization on CPU devices).
        outbound: compute→NIC data movement (serialization on CPU devices).
        batch_per_extra_item: Batched latency ``T(b) = T(1)·(1 + batch_per_extra_item·(b−1))``.
        cpu_load_sensitivity: Share of stage compute slowed by background CPU load, in [0, 1].
        notes: Where the numbers come from.
        source: File the profile was read from (empty for in-memory profiles).
    """

    name: str
    accelerator: str
    memory_mb: float
    power_active_w: float
    power_idle_w: float
    link: LinkProfile
    inbound: LinearCost
    outbound: LinearCost
    batch_per_extra_item: float = 1.0
    cpu_load_sensitivity: float = 1.0
    notes: str = ""
    source: str = ""


@dataclass(frozen=True)
class Block:
    """One block of a model: the unit between two valid cut points.

    Attributes:
        name: Name of the block (module path or graph node names).
        output_bytes: Size of the activation after the block at the profile's dtype, bytes.
        param_bytes: Size of the block's parameters and buffers, bytes.
        flops: Floating-point operations of one batch-1 forward pass (2 × MACs).
        output_shape: Shape of the block's output, if known.
        kind: Op class with the most FLOPs (``conv``, ``depthwise``, ``dense``, ``other``), if known.
        rows: ``(kernel, stride, padding)`` of the block's row map, when every operator in it is local
            (Intra-DP's local operators, seed 001 Sec. 4.1): output rows ``[a, b)`` read input rows
            ``[a·stride − padding, (b − 1)·stride − padding + kernel)``, clipped to the image. None:
            a global block (or not known), which no parallel section crosses.
        ops: Operators (calls) in the block's traced graph; a part of a section pays a fixed cost
            per operator (``ModelProfile.row_op_ms``). 0: not known.
    """

    name: str
    output_bytes: int
    param_bytes: int = 0
    flops: float = 0.0
    output_shape: tuple[int, ...] = ()
    kind: str = ""
    rows: tuple[int, int, int] | None = None
    ops: int = 0


@dataclass(frozen=True)
class Correction:
    """Summation correction ``segment = sum − (c0_ms·layers + c1_ms)`` (seed 000 Eqs. 1–2)."""

    c0_ms: float
    c1_ms: float


@dataclass(frozen=True)
class Codec:
    """An activation codec applied at a split (quantization or a learned encoder/decoder).

    Attributes:
        name: Codec name (``"none"`` is reserved for sending raw activations).
        bytes_ratio: Encoded size divided by the uncompressed size, in (0, 1].
        layers: Layers the codec adds to a stage, counted by the summation correction.
        splits: Split positions where the codec may be used; ``None`` means all.
        encode: Per device name (or ``"default"``): encoding cost on the sender.
        decode: Per device name (or ``"default"``): decoding cost on the receiver.
    """

    name: str
    bytes_ratio: float
    encode: Mapping[str, LinearCost]
    decode: Mapping[str, LinearCost]
    layers: int = 0
    splits: tuple[int, ...] | None = None

    def encode_cost(self, device: str) -> LinearCost:
        """Encoding cost on ``device``; raises :class:`ProfileError` if none is given."""
        return _per_device(self.encode, device, f"codecs.{self.name}.encode")

    def decode_cost(self, device: str) -> LinearCost:
        """Decoding cost on ``device``; raises :class:`ProfileError` if none is given."""
        return _per_device(self.decode, device, f"codecs.{self.name}.decode")


def _per_device(costs: Mapping[str, LinearCost], device: str, where: str) -> LinearCost:
    if device in costs:
        return costs[device]
    if "default" in costs:
        return costs["default"]
    raise ProfileError("model profile", where, f"no cost for device '{device}' and no 'default'")


@dataclass(frozen=True)
class ModelProfile:
    """A model cut into ``L`` blocks (contract ``adaptive.model/v1``).

    Split position ``s`` in ``0..L`` cuts before block ``s``: position 0 sends the input,
    position ``L`` is after the last block.

    Attributes:
        model: Model name.
        input_shape: Input tensor shape, batch first.
        input_bytes: Size of the input when sent at split position 0, bytes.
        result_bytes: Size of the result returned to the first device, bytes.
        blocks: The blocks in execution order.
        latency_ms: Per device name, batch-1 latency of each block, ms, shape ``(L,)``.
        correction: Per device name, the summation correction.
        codecs: Activation codecs available at splits (besides ``"none"``).
        latency_spread_ms: Optional per-device dispersion of the block latencies, ms.
        row_efficiency: Per device name, measured ``(rows_share, time_share)`` points: a band of a
            local block's output rows costs ``time_share`` of the whole block (seed 001 Sec. 4 parts)
            beyond its operators' fixed cost.
        row_op_ms: Per device name, fixed cost of one operator in a part, ms.
        activation_dtype: dtype the block output sizes assume.
        notes: Machine, software versions, date and method.
        source: File the profile was read from.
    """

    model: str
    input_shape: tuple[int, ...]
    input_bytes: int
    result_bytes: int
    blocks: tuple[Block, ...]
    latency_ms: Mapping[str, np.ndarray]
    correction: Mapping[str, Correction] = field(default_factory=dict)
    codecs: tuple[Codec, ...] = ()
    latency_spread_ms: Mapping[str, np.ndarray] = field(default_factory=dict)
    row_efficiency: Mapping[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    row_op_ms: Mapping[str, float] = field(default_factory=dict)
    activation_dtype: str = "float32"
    notes: str = ""
    source: str = ""

    @property
    def num_blocks(self) -> int:
        """Number of blocks ``L``."""
        return len(self.blocks)

    @property
    def devices(self) -> tuple[str, ...]:
        """Device names with per-block latency in this profile."""
        return tuple(self.latency_ms)

    def split_bytes(self) -> np.ndarray:
        """Bytes crossing a cut at each split position ``0..L`` (input, then block outputs)."""
        return np.array([self.input_bytes, *(b.output_bytes for b in self.blocks)], dtype=float)

    def row_costs(self, device: DeviceProfile) -> tuple[tuple[tuple[float, float], ...], float]:
        """``device``'s row-efficiency points and fixed cost of one operator in a part, ms.

        Measured ones if the profile has them, else the defaults of its kind
        (:data:`DEFAULT_ROW_EFFICIENCY`, :data:`DEFAULT_ROW_OP_MS`).
        """
        points = self.row_efficiency.get(device.name) or DEFAULT_ROW_EFFICIENCY[device.accelerator]
        return points, self.row_op_ms.get(device.name, DEFAULT_ROW_OP_MS[device.accelerator])

    def latency_for(self, device: str) -> np.ndarray:
        """Per-block latency on ``device``; a clear error if the profile has none."""
        try:
            return self.latency_ms[device]
        except KeyError:
            have = ", ".join(sorted(self.latency_ms)) or "none"
            raise ProfileError(
                self.source or self.model,
                "latency_ms",
                f"no per-block latency for device '{device}' (profile has: {have})",
            ) from None

    def correction_for(self, device: str) -> Correction:
        """Correction for ``device``; zero (plain summation) when the profile has none."""
        return self.correction.get(device, Correction(0.0, 0.0))


# --------------------------------------------------------------------------- loading


@cache
def _schema(name: str) -> dict[str, Any]:
    text = resources.files("adaptive.schemas").joinpath(name).read_text(encoding="utf-8")
    return json.loads(text)


def _validate(doc: Any, schema_file: str, source: str) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema(schema_file))
    errors = sorted(validator.iter_errors(doc), key=lambda e: (len(e.absolute_path), e.message))
    if errors:
        err = errors[0]
        path = ".".join(str(p) for p in err.absolute_path)
        raise ProfileError(source, path, _describe(err))


def _describe(err: Any) -> str:
    """Turn a jsonschema error into 'expected X, found Y'."""
    found = json.dumps(err.instance)[:60]
    if err.validator == "required":
        return err.message.replace("is a required property", "is required but missing")
    if err.validator == "additionalProperties":
        return err.message
    if err.validator == "type":
        return f"expected {err.validator_value}, found {found}"
    if err.validator == "const":
        return f"expected {err.validator_value!r}, found {found}"
    if err.validator == "enum":
        return f"expected one of {err.validator_value}, found {found}"
    if err.validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        return f"expected {err.validator} {err.validator_value}, found {found}"
    return err.message


def _read_document(path: Path) -> Any:
    source = str(path)
    try:
        text = read_input(path, "a profile (YAML or JSON)")
    except AdaptiveError as exc:
        raise ProfileError(source, "", str(exc).removeprefix(f"{source}: ")) from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProfileError(source, "", f"invalid JSON at line {exc.lineno}: {exc.msg}") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ProfileError(source, "", f"invalid YAML{line}") from None


def _linear(d: Mapping[str, Any]) -> LinearCost:
    return LinearCost(float(d["per_kb_ms"]), float(d["offset_ms"]))


def _check_finite(doc: Any, source: str, path: str = "") -> None:
    """Reject NaN and infinities anywhere in a document (JSON Schema lets them through)."""
    if isinstance(doc, float) and not math.isfinite(doc):
        raise ProfileError(source, path, f"expected a finite number, found {doc}")
    if isinstance(doc, Mapping):
        for k, v in doc.items():
            _check_finite(v, source, f"{path}.{k}" if path else str(k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            _check_finite(v, source, f"{path}.{i}")


def device_from_dict(doc: Any, source: str = "<dict>") -> DeviceProfile:
    """Validate and build a :class:`DeviceProfile` from a parsed document."""
    _validate(doc, "device.v1.json", source)
    _check_finite(doc, source)
    link = doc["link"]
    if doc["power_w"]["idle"] > doc["power_w"]["active"]:
        raise ProfileError(source, "power_w.idle", "expected idle power <= active power")
    accel = doc["accelerator"]
    return DeviceProfile(
        name=doc["name"],
        accelerator=accel,
        memory_mb=float(doc["memory_mb"]),
        power_active_w=float(doc["power_w"]["active"]),
        power_idle_w=float(doc["power_w"]["idle"]),
        link=LinkProfile(
            first_packet_ms=float(link["first_packet_ms"]),
            per_kb_ms=float(link["per_kb_ms"]),
            offset_ms=float(link["offset_ms"]),
            ref_bandwidth_mbps=float(link["ref_bandwidth_mbps"]),
            mtu_bytes=int(link.get("mtu_bytes", 1500)),
        ),
        inbound=_linear(doc["data_movement"]["inbound"]),
        outbound=_linear(doc["data_movement"]["outbound"]),
        batch_per_extra_item=float(doc.get("batching", {}).get("per_extra_item", 1.0)),
        cpu_load_sensitivity=float(
            doc.get("cpu_load_sensitivity", _DEFAULT_LOAD_SENSITIVITY[accel])
        ),
        notes=str(doc.get("notes", "")),
        source=source,
    )


def model_from_dict(doc: Any, source: str = "<dict>") -> ModelProfile:
    """Validate and build a :class:`ModelProfile` from a parsed document."""
    _validate(doc, "model.v1.json", source)
    _check_finite(doc, source)
    blocks = tuple(
        Block(
            name=b["name"],
            output_bytes=int(b["output_bytes"]),
            param_bytes=int(b.get("param_bytes", 0)),
            flops=float(b.get("flops", 0.0)),
            output_shape=tuple(int(x) for x in b.get("output_shape", ())),
            kind=str(b.get("kind", "")),
            rows=(int(b["rows"]["kernel"]), int(b["rows"]["stride"]), int(b["rows"]["padding"]))
            if "rows" in b else None,
            ops=int(b.get("ops", 0)),
        )
        for b in doc["blocks"]
    )
    n = len(blocks)
    latency: dict[str, np.ndarray] = {}
    for key in ("latency_ms", "latency_spread_ms"):
        for dev, values in doc.get(key, {}).items():
            if len(values) != n:
                raise ProfileError(
                    source, f"{key}.{dev}", f"expected {n} values (one per block), found {len(values)}"
                )
    for dev, values in doc["latency_ms"].items():
        latency[dev] = np.asarray(values, dtype=float)
        latency[dev].setflags(write=False)
    spread = {d: np.asarray(v, dtype=float) for d, v in doc.get("latency_spread_ms", {}).items()}
    correction = {
        d: Correction(float(c["c0_ms"]), float(c["c1_ms"])) for d, c in doc.get("correction", {}).items()
    }
    row_efficiency = {}
    for dev, points in doc.get("row_efficiency", {}).items():
        shares = [float(p[0]) for p in points]
        if any(b <= a for a, b in itertools.pairwise(shares)) or shares[-1] > 1:
            raise ProfileError(source, f"row_efficiency.{dev}",
                               "expected row shares increasing within (0, 1]")
        row_efficiency[dev] = tuple((float(p[0]), float(p[1])) for p in points)
    codecs = []
    for name, c in doc.get("codecs", {}).items():
        splits = c.get("splits")
        if splits is not None and any(s > n for s in splits):
            raise ProfileError(source, f"codecs.{name}.splits", f"expected positions in 0..{n}")
        codecs.append(
            Codec(
                name=name,
                bytes_ratio=float(c["bytes_ratio"]),
                layers=int(c.get("layers", 0)),
                splits=tuple(sorted(set(splits))) if splits is not None else None,
                encode={d: _linear(v) for d, v in c["encode"].items()},
                decode={d: _linear(v) for d, v in c["decode"].items()},
            )
        )
    return ModelProfile(
        model=doc["model"],
        input_shape=tuple(int(x) for x in doc["input_shape"]),
        input_bytes=int(doc["input_bytes"]),
        result_bytes=int(doc["result_bytes"]),
        blocks=blocks,
        latency_ms=latency,
        correction=correction,
        codecs=tuple(codecs),
        latency_spread_ms=spread,
        row_efficiency=row_efficiency,
        row_op_ms={d: float(v) for d, v in doc.get("row_op_ms", {}).items()},
        activation_dtype=str(doc.get("activation_dtype", "float32")),
        notes=str(doc.get("notes", "")),
        source=source,
    )


def _expect_schema(doc: Any, expected: str, source: str) -> None:
    if not isinstance(doc, Mapping):
        raise ProfileError(source, "", f"expected a mapping with schema: {expected}")
    found = doc.get("schema")
    if found != expected:
        raise ProfileError(source, "schema", f"expected '{expected}', found {found!r}")


def load_device(path: str | Path) -> DeviceProfile:
    """Load an ``adaptive.device/v1`` profile from a YAML or JSON file."""
    path = Path(path)
    doc = _read_document(path)
    _expect_schema(doc, DEVICE_SCHEMA, str(path))
    return device_from_dict(doc, str(path))


def load_model(path: str | Path) -> ModelProfile:
    """Load an ``adaptive.model/v1`` profile from a YAML or JSON file."""
    path = Path(path)
    doc = _read_document(path)
    _expect_schema(doc, MODEL_SCHEMA, str(path))
    return model_from_dict(doc, str(path))


ROW_KEYS = ("kernel", "stride", "padding")


def model_to_dict(profile: ModelProfile) -> dict[str, Any]:
    """Serialise a :class:`ModelProfile` back to an ``adaptive.model/v1`` document."""
    doc: dict[str, Any] = {
        "schema": MODEL_SCHEMA,
        "model": profile.model,
        "input_shape": list(profile.input_shape),
        "input_bytes": int(profile.input_bytes),
        "result_bytes": int(profile.result_bytes),
        "activation_dtype": profile.activation_dtype,
        "blocks": [
            {
                "name": b.name,
                "output_bytes": int(b.output_bytes),
                "param_bytes": int(b.param_bytes),
                "flops": float(b.flops),
                **({"output_shape": list(b.output_shape)} if b.output_shape else {}),
                **({"kind": b.kind} if b.kind else {}),
                **({"rows": dict(zip(ROW_KEYS, b.rows, strict=True))} if b.rows else {}),
                **({"ops": b.ops} if b.ops else {}),
            }
            for b in profile.blocks
        ],
        "latency_ms": {d: [round(float(x), 6) for x in v] for d, v in profile.latency_ms.items()},
    }
    if profile.latency_spread_ms:
        doc["latency_spread_ms"] = {
            d: [round(float(x), 6) for x in v] for d, v in profile.latency_spread_ms.items()
        }
    if profile.correction:
        doc["correction"] = {
            d: {"c0_ms": float(c.c0_ms), "c1_ms": float(c.c1_ms)} for d, c in profile.correction.items()
        }
    if profile.row_efficiency:
        doc["row_efficiency"] = {d: [[round(a, 4), round(b, 4)] for a, b in pts]
                                 for d, pts in profile.row_efficiency.items()}
    if profile.row_op_ms:
        doc["row_op_ms"] = {d: round(float(v), 6) for d, v in profile.row_op_ms.items()}
    if profile.codecs:
        doc["codecs"] = {
            c.name: {
                "bytes_ratio": c.bytes_ratio,
                "layers": c.layers,
                **({"splits": list(c.splits)} if c.splits is not None else {}),
                "encode": {d: vars(v) for d, v in c.encode.items()},
                "decode": {d: vars(v) for d, v in c.decode.items()},
            }
            for c in profile.codecs
        }
    if profile.notes:
        doc["notes"] = profile.notes
    return doc


def save_profile(doc: Mapping[str, Any], path: str | Path) -> None:
    """Write a profile document as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(dict(doc), sort_keys=False, width=100, default_flow_style=None)
    else:
        text = json.dumps(doc, indent=1) + "\n"
    path.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- shipped profiles


def _shipped_dir(kind: str) -> Path:
    return Path(str(resources.files("adaptive.data").joinpath(kind)))


def list_shipped(kind: str) -> list[str]:
    """Names of the shipped profiles of ``kind`` (``"devices"`` or ``"models"``)."""
    return sorted(p.stem for p in _shipped_dir(kind).glob("*.yaml"))


def _resolve(spec: str, kind: str) -> Path:
    path = Path(spec)
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.exists():
        return path
    shipped = _shipped_dir(kind) / f"{spec}.yaml"
    if shipped.exists():
        return shipped
    names = ", ".join(list_shipped(kind))
    singular = kind.rstrip("s")
    raise ProfileError(spec, "", f"unknown {singular} (not a file; shipped {kind}: {names})")


def resolve_device(spec: str) -> DeviceProfile:
    """Load a device profile given a shipped name or a file path."""
    return load_device(_resolve(spec, "devices"))


def resolve_model(spec: str) -> ModelProfile:
    """Load a model profile given a shipped name or a file path."""
    return load_model(_resolve(spec, "models"))


def scaled_profiles(profile: ModelProfile, devices: list[DeviceProfile], scales: list[float],
                    nodes: list[str]) -> tuple[ModelProfile, list[DeviceProfile]]:
    """Profiles in which node ``i``'s compute (blocks, correction, codec costs, parts) is ``scales[i]``×.

    Each node gets its own copy of its device, named ``<device>@<node>``, so two nodes with the same
    device profile are scaled separately. Link, data-movement and power data stay as they are.
    """
    latency = dict(profile.latency_ms)
    spread = dict(profile.latency_spread_ms)
    correction = dict(profile.correction)
    encode = [dict(c.encode) for c in profile.codecs]
    decode = [dict(c.decode) for c in profile.codecs]
    rows, op_ms = dict(profile.row_efficiency), dict(profile.row_op_ms)
    renamed = []
    for dev, k, node in zip(devices, scales, nodes, strict=True):
        name = f"{dev.name}@{node}"
        renamed.append(dataclasses.replace(dev, name=name))
        latency[name] = profile.latency_for(dev.name) * k
        # a part keeps its device's row curve; its operators' fixed cost is compute too
        rows[name], op_ms[name] = profile.row_costs(dev)
        op_ms[name] *= k
        if dev.name in profile.latency_spread_ms:
            spread[name] = profile.latency_spread_ms[dev.name] * k
        corr = profile.correction_for(dev.name)
        correction[name] = dataclasses.replace(corr, c0_ms=corr.c0_ms * k, c1_ms=corr.c1_ms * k)
        for i, codec in enumerate(profile.codecs):
            for costs, table in ((codec.encode, encode[i]), (codec.decode, decode[i])):
                cost = costs.get(dev.name, costs.get("default"))
                if cost is not None:
                    table[name] = dataclasses.replace(cost, per_kb_ms=cost.per_kb_ms * k,
                                                      offset_ms=cost.offset_ms * k)
    codecs = tuple(dataclasses.replace(c, encode=encode[i], decode=decode[i])
                   for i, c in enumerate(profile.codecs))
    return (dataclasses.replace(profile, latency_ms=latency, latency_spread_ms=spread,
                                correction=correction, codecs=codecs, row_efficiency=rows,
                                row_op_ms=op_ms), renamed)
