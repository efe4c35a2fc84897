"""The MQTT contract, version 1: topics, records, JSON encoding and validation.

Standard library only, so the agent runs on a bare Raspberry Pi and every receiver validates
with the same code. JSON Schemas of the payloads for other languages live in
``adaptive/protocol/schemas/`` and are checked against these validators in the tests.

========================================  =========  ==========================================
topic                                     QoS/retain payload
========================================  =========  ==========================================
``adaptive/<cluster>/node/<node>/telemetry``  1 / no  :class:`Telemetry`
``adaptive/<cluster>/node/<node>/status``     1 / yes :class:`Status` (the Last Will: offline)
``adaptive/<cluster>/plan``                   1 / yes :class:`PlanMessage`
``adaptive/<cluster>/node/<node>/ack``        1 / no  :class:`Ack`
``adaptive/<cluster>/node/<node>/stats``      1 / no  :class:`StatsMessage` (node runtimes)
========================================  =========  ==========================================

Every decode function takes raw bytes from the network and either returns a record or raises
:class:`SchemaError` with one line naming the field and the problem. Receivers log and drop.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

from adaptive.protocol.fields import (
    MAX_EPOCH,
    MAX_PAYLOAD_BYTES,
    MAX_RULE_BYTES,
    MAX_VERSION,
    VERSION,
    SchemaError,
    check_id,
    check_version,
    devices_field,
    dump_payload,
    epoch_field,
    integer,
    json_object,
    load_payload,
    number,
    section_field,
    section_json,
    string,
)

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "Ack",
    "LinkEstimate",
    "Message",
    "PlanMessage",
    "SchemaError",
    "StageTiming",
    "StatsMessage",
    "Status",
    "Telemetry",
    "TransferTiming",
    "ack_topic",
    "check_id",
    "parse_topic",
    "plan_topic",
    "rank_of",
    "stats_topic",
    "status_topic",
    "telemetry_topic",
]



@dataclass(frozen=True)
class Message:
    """One MQTT message to publish.

    Attributes:
        topic: Full topic.
        payload: Encoded JSON.
        qos: 0, 1 or 2.
        retain: Whether the broker keeps it for late subscribers.
    """

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


def telemetry_topic(cluster: str, node: str) -> str:
    """``adaptive/<cluster>/node/<node>/telemetry``."""
    return f"adaptive/{check_id(cluster, 'cluster')}/node/{check_id(node, 'node')}/telemetry"


def status_topic(cluster: str, node: str) -> str:
    """``adaptive/<cluster>/node/<node>/status``."""
    return f"adaptive/{check_id(cluster, 'cluster')}/node/{check_id(node, 'node')}/status"


def ack_topic(cluster: str, node: str) -> str:
    """``adaptive/<cluster>/node/<node>/ack``."""
    return f"adaptive/{check_id(cluster, 'cluster')}/node/{check_id(node, 'node')}/ack"


def plan_topic(cluster: str) -> str:
    """``adaptive/<cluster>/plan``."""
    return f"adaptive/{check_id(cluster, 'cluster')}/plan"


def parse_topic(topic: str) -> tuple[str, str, str | None]:
    """Split a contract topic into ``(cluster, kind, node)``; ``node`` is None for the plan."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == "adaptive" and parts[2] == "plan":
        return check_id(parts[1], "cluster"), "plan", None
    if len(parts) == 5 and parts[0] == "adaptive" and parts[2] == "node" and parts[4] in (
            "telemetry", "status", "ack", "stats", "rule"):
        return check_id(parts[1], "cluster"), parts[4], check_id(parts[3], "node")
    raise SchemaError(f"not an adaptive v1 topic: {topic!r}")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class LinkEstimate:
    """What a node knows about its link to one peer.

    Attributes:
        bandwidth_mbps: Last active probe estimate, Mbit/s (None before the first probe).
        rtt_ms: Last round-trip time, ms.
        measured_at: Unix time of the active probe, s.
        passive_mbps: Delivery rate the kernel observed on existing connections, Mbit/s.
    """

    bandwidth_mbps: float | None = None
    rtt_ms: float | None = None
    measured_at: float | None = None
    passive_mbps: float | None = None


@dataclass(frozen=True)
class Telemetry:
    """One telemetry sample of a node (topic ``…/telemetry``).

    Attributes:
        node: Node id.
        ts: Unix time of the sample, s.
        seq: Sequence number, increasing per agent run.
        cpu_percent: Total CPU utilisation, % (0–100); an agent hosted by a node runtime leaves the
            runtime's own share out (background load).
        per_core: Per-core utilisation, %.
        load1: One-minute load average.
        total_mb: Physical memory, MB (10^6 bytes).
        available_mb: Memory available to new work, MB.
        mem_percent: Memory in use, %.
        tx_bps: Transmit rate over all interfaces, bit/s.
        rx_bps: Receive rate, bit/s.
        links: Per peer id, the link estimate.
        swap_total_mb: Swap size, MB.
        swap_used_mb: Swap in use, MB.
        temp_c: Hottest thermal zone, °C, where exposed.
        power_w: Board power, W, where exposed (Jetson INA sensors).
    """

    node: str
    ts: float
    seq: int
    cpu_percent: float
    per_core: tuple[float, ...]
    load1: float
    total_mb: float
    available_mb: float
    mem_percent: float
    tx_bps: float
    rx_bps: float
    links: dict[str, LinkEstimate] = field(default_factory=dict)
    swap_total_mb: float | None = None
    swap_used_mb: float | None = None
    temp_c: float | None = None
    power_w: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The v1 JSON object."""
        mem: dict[str, Any] = {"total_mb": self.total_mb, "available_mb": self.available_mb,
                               "percent": self.mem_percent}
        if self.swap_total_mb is not None:
            mem["swap_total_mb"] = self.swap_total_mb
            mem["swap_used_mb"] = self.swap_used_mb or 0.0
        links = {}
        for peer, est in self.links.items():
            item = {"bandwidth_mbps": est.bandwidth_mbps, "rtt_ms": est.rtt_ms,
                    "measured_at": est.measured_at}
            if est.passive_mbps is not None:
                item["passive_mbps"] = est.passive_mbps
            links[peer] = item
        out: dict[str, Any] = {
            "v": VERSION, "node": self.node, "ts": self.ts, "seq": self.seq,
            "cpu": {"percent": self.cpu_percent, "per_core": list(self.per_core), "load1": self.load1},
            "mem": mem,
            "net": {"tx_bps": self.tx_bps, "rx_bps": self.rx_bps, "links": links},
        }
        if self.temp_c is not None:
            out["temp_c"] = self.temp_c
        if self.power_w is not None:
            out["power_w"] = self.power_w
        return out

    def encode(self) -> bytes:
        """Compact JSON bytes."""
        return dump_payload(self.to_dict())

    @classmethod
    def from_dict(cls, obj: Any) -> Telemetry:
        """Validate a parsed v1 object (raises :class:`SchemaError`)."""
        w = "telemetry"
        obj = json_object(obj, w)
        check_version(obj, w)
        node = check_id(string(obj, "node", w) or "", "telemetry: node")
        cpu = json_object(obj.get("cpu"), f"{w}.cpu")
        per_core = cpu.get("per_core")
        if not isinstance(per_core, list) or len(per_core) > 1024:
            raise SchemaError(f"{w}.cpu: field 'per_core': expected a list of numbers")
        cores = tuple(number({"c": c}, "c", f"{w}.cpu.per_core", lo=0, hi=100) for c in per_core)
        mem = json_object(obj.get("mem"), f"{w}.mem")
        net = json_object(obj.get("net"), f"{w}.net")
        raw_links = json_object(net.get("links", {}), f"{w}.net.links")
        if len(raw_links) > 256:
            raise SchemaError(f"{w}.net.links: more than 256 peers")
        links = {}
        for peer, item in raw_links.items():
            where = f"{w}.net.links.{check_id(peer, 'peer')}"
            item = json_object(item, where)
            links[peer] = LinkEstimate(
                bandwidth_mbps=number(item, "bandwidth_mbps", where, lo=0, allow_null=True),
                rtt_ms=number(item, "rtt_ms", where, lo=0, allow_null=True),
                measured_at=number(item, "measured_at", where, lo=0, allow_null=True),
                passive_mbps=number(item, "passive_mbps", where, lo=0, optional=True, allow_null=True),
            )
        return cls(
            node=node, ts=float(number(obj, "ts", w, lo=0)), seq=integer(obj, "seq", w),
            cpu_percent=float(number(cpu, "percent", f"{w}.cpu", lo=0, hi=100)),
            per_core=cores,  # type: ignore[arg-type]
            load1=float(number(cpu, "load1", f"{w}.cpu", lo=0)),
            total_mb=float(number(mem, "total_mb", f"{w}.mem", lo=0)),
            available_mb=float(number(mem, "available_mb", f"{w}.mem", lo=0)),
            mem_percent=float(number(mem, "percent", f"{w}.mem", lo=0, hi=100)),
            tx_bps=float(number(net, "tx_bps", f"{w}.net", lo=0)),
            rx_bps=float(number(net, "rx_bps", f"{w}.net", lo=0)),
            links=links,
            swap_total_mb=number(mem, "swap_total_mb", f"{w}.mem", lo=0, optional=True),
            swap_used_mb=number(mem, "swap_used_mb", f"{w}.mem", lo=0, optional=True),
            temp_c=number(obj, "temp_c", w, lo=-100, hi=200, optional=True),
            power_w=number(obj, "power_w", w, lo=0, optional=True),
        )

    @classmethod
    def decode(cls, payload: bytes | str) -> Telemetry:
        """Parse and validate bytes from the network."""
        return cls.from_dict(load_payload(payload, "telemetry"))


@dataclass(frozen=True)
class Status:
    """A node's retained presence and capabilities (topic ``…/status``).

    Attributes:
        node: Node id.
        state: ``online`` or ``offline`` (the Last Will publishes ``offline``).
        ts: Unix time, s.
        device: Device profile name (e.g. ``raspberry-pi-4``).
        accelerator: ``cpu`` or ``gpu``.
        memory_mb: Physical memory, MB.
        data_endpoint: Where the node runtime receives activations (``tcp://host:port``), or "".
        probe_endpoint: Where the link-probe sink listens (``host:port``), or "".
    """

    node: str
    state: str
    ts: float
    device: str = ""
    accelerator: str = "cpu"
    memory_mb: float = 0.0
    data_endpoint: str = ""
    probe_endpoint: str = ""

    def encode(self) -> bytes:
        """Compact JSON bytes."""
        return dump_payload({"v": VERSION, "node": self.node, "state": self.state, "ts": self.ts,
                      "device": self.device, "accelerator": self.accelerator,
                      "memory_mb": self.memory_mb, "data_endpoint": self.data_endpoint,
                      "probe_endpoint": self.probe_endpoint})

    @classmethod
    def decode(cls, payload: bytes | str) -> Status:
        """Parse and validate bytes from the network."""
        w = "status"
        obj = load_payload(payload, w)
        check_version(obj, w)
        state = obj.get("state")
        if state not in ("online", "offline"):
            raise SchemaError(f"{w}: field 'state': expected 'online' or 'offline', found {state!r}"[:200])
        accel = obj.get("accelerator", "cpu")
        if accel not in ("cpu", "gpu"):
            raise SchemaError(f"{w}: field 'accelerator': expected 'cpu' or 'gpu', found {accel!r}"[:200])
        return cls(node=check_id(string(obj, "node", w) or "", "status: node"), state=state,
                   ts=float(number(obj, "ts", w, lo=0)), device=string(obj, "device", w, optional=True) or "",
                   accelerator=accel, memory_mb=number(obj, "memory_mb", w, lo=0, optional=True) or 0.0,
                   data_endpoint=string(obj, "data_endpoint", w, optional=True) or "",
                   probe_endpoint=string(obj, "probe_endpoint", w, optional=True) or "")


@dataclass(frozen=True)
class PlanMessage:
    """A versioned split plan (topic ``adaptive/<cluster>/plan``, retained).

    Attributes:
        version: Plan version: the controller's counter, from 1 in each epoch (shared with rules).
        model: Model name every node must hold.
        devices: Node ids in chain order (the first holds the input).
        splits: ``[s1, …, sM]``, one per node after the first, non-decreasing.
        issued_at: Unix time, s.
        policy: Name of the policy that chose it.
        predicted_ms: Predicted end-to-end latency, ms (None if unknown).
        codecs: Codec per split (``none``, ``fp16``, ``int8``); empty means none.
        num_blocks: The model's block count ``L`` (0: not given), so a client can tell whether the
            last node has work (``s_M < L``) without loading the model.
        epoch: The controller's epoch, its start in Unix ms (0: not given). Plans and rules are
            ordered by ``(epoch, version)``: a restarted controller's counter starts again at 1.
        section: A parallel section at the first split, ``(stop, share, parts)`` as
            :class:`adaptive.model.plans.Section` has them, or None: the source shares the rows of
            blocks ``[s1, stop)`` with the first node after it that runs a stage.
    """

    version: int
    model: str
    devices: tuple[str, ...]
    splits: tuple[int, ...]
    issued_at: float
    policy: str
    predicted_ms: float | None = None
    codecs: tuple[str, ...] = ()
    num_blocks: int = 0
    epoch: int = 0
    section: tuple[int, float, int] | None = None

    @property
    def rank(self) -> tuple[int, int]:
        """``(epoch, version)``: the order in which plans and rules supersede each other."""
        return self.epoch, self.version

    def working_nodes(self) -> tuple[str, ...]:
        """The nodes this plan gives blocks to, in chain order.

        The first node always counts (it receives the input); the last one unless ``num_blocks``
        says the model ends at its split.
        """
        bounds = [0, *self.splits, self.num_blocks or math.inf]
        return tuple(n for i, n in enumerate(self.devices) if i == 0 or bounds[i + 1] > bounds[i])

    def encode(self) -> bytes:
        """Compact JSON bytes."""
        obj: dict[str, Any] = {"v": VERSION, "version": self.version, "model": self.model,
                               "devices": list(self.devices), "splits": list(self.splits),
                               "issued_at": self.issued_at, "policy": self.policy,
                               "predicted_ms": self.predicted_ms}
        if self.codecs:
            obj["codecs"] = list(self.codecs)
        if self.num_blocks:
            obj["num_blocks"] = self.num_blocks
        if self.epoch:
            obj["epoch"] = self.epoch
        if self.section is not None:
            obj["section"] = section_json(self.section)
        return dump_payload(obj)

    @classmethod
    def decode(cls, payload: bytes | str) -> PlanMessage:
        """Parse and validate bytes from the network (structure only; nodes check ranges)."""
        w = "plan"
        obj = load_payload(payload, w)
        check_version(obj, w)
        devices = devices_field(obj, w, 64)
        splits = obj.get("splits")
        if (not isinstance(splits, list) or len(splits) != len(devices) - 1
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in splits)):
            raise SchemaError(f"{w}: field 'splits': expected {len(devices) - 1} integers >= 0")
        if any(b < a for a, b in itertools.pairwise(splits)):
            raise SchemaError(f"{w}: field 'splits': must be non-decreasing, found {splits}")
        codecs = obj.get("codecs", [])
        if not isinstance(codecs, list) or (codecs and len(codecs) != len(splits)) or any(
                c not in ("none", "fp16", "int8") for c in codecs):
            raise SchemaError(f"{w}: field 'codecs': expected {len(splits)} of none/fp16/int8")
        num_blocks = integer(obj, "num_blocks", w, lo=0) if "num_blocks" in obj else 0
        if num_blocks and splits and splits[-1] > num_blocks:
            raise SchemaError(f"{w}: field 'splits': {splits[-1]} exceeds num_blocks {num_blocks}")
        return cls(version=integer(obj, "version", w, 1, MAX_VERSION), model=string(obj, "model", w) or "",
                   devices=tuple(devices), splits=tuple(splits),
                   issued_at=float(number(obj, "issued_at", w, lo=0)),
                   policy=string(obj, "policy", w) or "",
                   predicted_ms=number(obj, "predicted_ms", w, lo=0, optional=True, allow_null=True),
                   codecs=tuple(codecs), num_blocks=num_blocks, epoch=epoch_field(obj, w),
                   section=section_field(obj, w, splits))


@dataclass(frozen=True)
class Ack:
    """A node's answer to a plan or rule (topic ``…/ack``).

    Attributes:
        node: Node id.
        version: Version of the plan or rule answered.
        ok: Whether the node applied it (false: it refused it, and ``error`` says why).
        ts: Unix time, s.
        error: Why not, when ``ok`` is false.
        epoch: Epoch of the plan or rule answered (0: none given).
        kind: What was answered, ``plan`` or ``rule`` ("" when not said).
    """

    node: str
    version: int
    ok: bool
    ts: float
    error: str = ""
    epoch: int = 0
    kind: str = ""

    def encode(self) -> bytes:
        """Compact JSON bytes."""
        obj: dict[str, Any] = {"v": VERSION, "node": self.node, "version": self.version,
                               "ok": self.ok, "ts": self.ts}
        if self.error:
            obj["error"] = self.error[:256]
        if self.epoch:
            obj["epoch"] = self.epoch
        if self.kind:
            obj["kind"] = self.kind
        return dump_payload(obj)

    @classmethod
    def decode(cls, payload: bytes | str) -> Ack:
        """Parse and validate bytes from the network."""
        w = "ack"
        obj = load_payload(payload, w)
        check_version(obj, w)
        if not isinstance(obj.get("ok"), bool):
            raise SchemaError(f"{w}: field 'ok': expected true or false, found {obj.get('ok')!r}"[:200])
        kind = string(obj, "kind", w, optional=True) or ""
        if kind not in ("", "plan", "rule"):
            raise SchemaError(f"{w}: field 'kind': expected 'plan' or 'rule', found {kind!r}"[:200])
        return cls(node=check_id(string(obj, "node", w) or "", "ack: node"),
                   version=integer(obj, "version", w, 1, MAX_VERSION), ok=obj["ok"],
                   ts=float(number(obj, "ts", w, lo=0)), error=string(obj, "error", w, optional=True) or "",
                   epoch=epoch_field(obj, w), kind=kind)


@dataclass(frozen=True)
class StageTiming:
    """Measured execution of one stage on a node over a reporting period.

    Attributes:
        version: Plan version.
        start: First block of the stage.
        stop: End of the stage (exclusive).
        batch: Batch size of the executions.
        count: Executions measured.
        exec_ms: Median execution time, ms (compute, plus padding when emulating a device).
        section: When the timing is this node's share of a plan's parallel section of blocks
            ``[start, stop)``: that section ``(stop, share, parts)``, and ``exec_ms`` is the band the
            source computed, or the bands the next node computed; None for a whole stage.
    """

    version: int
    start: int
    stop: int
    batch: int
    count: int
    exec_ms: float
    section: tuple[int, float, int] | None = None

    def to_json(self) -> dict[str, Any]:
        """The timing as stats messages carry it (``section`` only when there is one)."""
        out: dict[str, Any] = {"version": self.version, "start": self.start, "stop": self.stop,
                               "batch": self.batch, "count": self.count, "exec_ms": self.exec_ms}
        if self.section is not None:
            out["section"] = section_json(self.section)
        return out


@dataclass(frozen=True)
class TransferTiming:
    """Measured transfers from a node to one peer over a reporting period.

    Attributes:
        peer: Receiving node id (or client id).
        count: Transfers.
        bytes: Median size, bytes.
        ms: Median time from leaving the node's queue to reaching ZeroMQ (emulated shaping
            included), ms.
    """

    peer: str
    count: int
    bytes: int
    ms: float


@dataclass(frozen=True)
class StatsMessage:
    """A node runtime's measured stage and transfer times (topic ``…/node/<node>/stats``, QoS 1).

    Used by the controller's online calibration.

    Attributes:
        node: Node id.
        ts: Unix time, s.
        stages: Stage timings.
        transfers: Transfer timings.
    """

    node: str
    ts: float
    stages: tuple[StageTiming, ...] = ()
    transfers: tuple[TransferTiming, ...] = ()

    def encode(self) -> bytes:
        """Compact JSON bytes."""
        return dump_payload({"v": VERSION, "node": self.node, "ts": self.ts,
                      "stages": [s.to_json() for s in self.stages],
                      "transfers": [t.__dict__ for t in self.transfers]})

    @classmethod
    def decode(cls, payload: bytes | str) -> StatsMessage:
        """Parse and validate bytes from the network."""
        w = "stats"
        obj = load_payload(payload, w)
        check_version(obj, w)
        stages, transfers = obj.get("stages", []), obj.get("transfers", [])
        if not isinstance(stages, list) or not isinstance(transfers, list) or len(stages) > 64 \
                or len(transfers) > 64:
            raise SchemaError(f"{w}: 'stages' and 'transfers' must be lists of at most 64 entries")
        st = []
        for item in stages:
            item = json_object(item, f"{w}.stages")
            start = integer(item, "start", w)
            timing = StageTiming(integer(item, "version", w, 1, MAX_VERSION), start,
                                 integer(item, "stop", w), integer(item, "batch", w, 1),
                                 integer(item, "count", w, 1),
                                 float(number(item, "exec_ms", w, lo=0)), section_field(item, w, [start]))
            if timing.stop < timing.start:
                raise SchemaError(f"{w}: stage stop {timing.stop} is before its start {timing.start}")
            if timing.section is not None and timing.section[0] != timing.stop:
                raise SchemaError(f"{w}: a section's timing ends at its stop {timing.section[0]}, "
                                  f"not {timing.stop}")
            st.append(timing)
        tr = []
        for item in transfers:
            item = json_object(item, f"{w}.transfers")
            tr.append(TransferTiming(check_id(string(item, "peer", w) or "", "stats: peer"),
                                     integer(item, "count", w, 1), integer(item, "bytes", w),
                                     float(number(item, "ms", w, lo=0))))
        return cls(node=check_id(string(obj, "node", w) or "", "stats: node"),
                   ts=float(number(obj, "ts", w, lo=0)), stages=tuple(st), transfers=tuple(tr))


def stats_topic(cluster: str, node: str) -> str:
    """``adaptive/<cluster>/node/<node>/stats``."""
    return f"adaptive/{check_id(cluster, 'cluster')}/node/{check_id(node, 'node')}/stats"


def rank_of(payload: bytes) -> tuple[int, int] | None:
    """``(epoch, version)`` of a plan or rule, valid or not, if it has a usable version (None otherwise).

    The epoch is 0 when absent or unusable; the version is within the contract's range.
    """
    try:
        obj = json.loads(payload) if len(payload) <= MAX_RULE_BYTES else None
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    v, e = obj.get("version"), obj.get("epoch", 0)
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_VERSION:
        return None
    return (e if isinstance(e, int) and not isinstance(e, bool) and 0 <= e <= MAX_EPOCH else 0), v
