"""Frames between nodes and clients: a small JSON header plus raw tensor bytes. Never pickle.

A frame is a ZeroMQ multipart message of exactly two parts: the UTF-8 JSON header (at most
:data:`MAX_HEADER_BYTES`) and the payload (the activation encoded by a codec of
:mod:`adaptive.model.codecs`, at most the receiver's limit). Everything in the header is type- and
range-checked, and the payload size must equal what the header's shape, dtype and codec imply; a
frame that fails is rejected with a :class:`WireError` naming the problem, before any tensor is
built.

Header fields: ``v`` (1), ``kind`` (``work``, ``result``, ``error``), ``id`` (request id),
``client``, ``reply_to`` (the client's ``tcp://`` endpoint), ``version`` (version of the plan or
decision rule the request was planned under: for the record), the request's own plan — ``model``,
``devices`` (node ids in chain order), ``splits`` (one per device after the first, non-decreasing)
and ``codecs`` (one per split, or none) — ``hop`` (index in ``devices`` of the node that must
process it), ``position`` (split position of the activation, 0..L), ``shape``, ``codec`` of the
payload (``none``, ``fp16``, ``int8``), ``params`` (codec parameters), ``sent_at`` (client send
time, Unix s), ``error`` (for ``error`` frames), ``retry`` (optional, ``error`` frames: true when
the failure is transient — a node died or is unreachable, a queue was full — so the client may send
the request again), ``dropped`` (optional, ``error`` frames: true when the source dropped the
request at admission, predicted past its deadline; final), ``trace`` (per-node timing records
``[node, queue_ms, exec_ms, batch]``).

A plan may carry a parallel section (``section``: ``{stop, share, parts}``, the plan's
:class:`adaptive.model.plans.Section`). The source then sends the frames of one request to the
first node after it that runs a stage in ``parts + 1`` pieces, each with ``part``: ``0..parts−1``,
the input rows of the accelerator's band ``part`` not sent before (at ``position`` s1), and
``parts``, the source's own band of the section's output (at ``position`` stop); see
:mod:`adaptive.runtime.sections`.

Every work frame carries its own plan, and every node validates it and runs its stage of it: any
node runs any valid plan with no handshake, and a switch changes nothing for requests in flight. A
request may enter its source node (``hop`` 0, ``position`` 0) without a plan: the source then picks
one from its decision rule (:mod:`adaptive.protocol.rules`) and stamps it on the request.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from adaptive.errors import AdaptiveError
from adaptive.model import codecs
from adaptive.model.plans import Section
from adaptive.protocol.fields import SchemaError, section_field, section_json

__all__ = ["MAX_HEADER_BYTES", "Frame", "WireError", "decode_frame", "encode_frame", "tensor_frame"]

VERSION = 1
MAX_HEADER_BYTES = 4096
DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class WireError(AdaptiveError):
    """A frame is malformed, truncated, oversized or inconsistent."""


@dataclass(frozen=True)
class Frame:
    """A decoded frame header plus its payload bytes.

    Attributes:
        kind: ``work`` (an activation to process), ``result`` or ``error`` (to the client).
        request_id: Request id, unique per client.
        client: Client id.
        reply_to: The client's result endpoint (``tcp://host:port``).
        version: Version of the plan (or decision rule) the request was planned under.
        hop: Index in ``devices`` of the node that must process this frame.
        position: Split position of the activation (0 = the input).
        shape: Tensor shape (batch first).
        codec: Payload codec.
        params: Codec parameters.
        sent_at: Client send time, Unix s.
        error: Error message (``error`` frames).
        retry: The error is transient: the request may be sent again (``error`` frames).
        dropped: The request was dropped at its source's admission, as predicted past its
            deadline (``error`` frames; final).
        trace: Timing records ``[node, queue_ms, exec_ms, batch]`` appended by each node.
        payload: Encoded tensor bytes.
        model: Model the plan is for (work frames).
        devices: The plan's node ids in chain order (work frames).
        splits: The plan's splits, one per device after the first.
        codecs: The plan's codec per split (empty: ``none`` everywhere).
        section: The plan's parallel section, or None.
        part: Which piece of a section this frame carries (None: a whole activation).
    """

    kind: str
    request_id: str
    client: str
    reply_to: str
    version: int
    hop: int
    position: int
    shape: tuple[int, ...]
    codec: str = "none"
    params: tuple[float, ...] = ()
    sent_at: float = 0.0
    error: str = ""
    retry: bool = False
    dropped: bool = False
    trace: tuple[tuple[str, float, float, int], ...] = ()
    payload: bytes | memoryview = field(default=b"", repr=False)
    model: str = ""
    devices: tuple[str, ...] = ()
    splits: tuple[int, ...] = ()
    codecs: tuple[str, ...] = ()
    section: Section | None = None
    part: int | None = None

    def tensor(self) -> np.ndarray:
        """The payload decoded to a float32 array of ``shape``."""
        try:
            return codecs.decode(self.codec, self.payload, self.params, self.shape)
        except AdaptiveError as exc:
            raise WireError(str(exc)) from None

    def error_reply(self, message: str, retry: bool = False, dropped: bool = False) -> Frame:
        """An ``error`` frame for this request's client.

        ``retry``: the failure is transient; ``dropped``: the source dropped it at admission.
        """
        return replace(self, kind="error", error=message[:300], retry=retry, dropped=dropped, shape=(0,),
                       codec="none", params=(), payload=b"")


def tensor_frame(base: Frame, array: np.ndarray, codec: str = "none", **changes: Any) -> Frame:
    """``base`` carrying ``array`` encoded with ``codec`` (other fields changed by keyword)."""
    enc = codecs.encode(codec, array)
    return replace(base, shape=tuple(int(s) for s in array.shape), codec=codec, params=enc.params,
                   payload=enc.payload.tobytes(), **changes)


def encode_frame(frame: Frame) -> list[bytes]:
    """The two ZeroMQ message parts."""
    header = {"v": VERSION, "kind": frame.kind, "id": frame.request_id, "client": frame.client,
              "reply_to": frame.reply_to, "version": frame.version, "hop": frame.hop,
              "position": frame.position, "shape": list(frame.shape), "codec": frame.codec,
              "params": list(frame.params), "sent_at": frame.sent_at, "error": frame.error,
              "trace": [list(t) for t in frame.trace]}
    if frame.devices:
        header.update(model=frame.model, devices=list(frame.devices), splits=list(frame.splits),
                      codecs=list(frame.codecs))
        if frame.section is not None:
            header["section"] = section_json(frame.section.wire)
        if frame.part is not None:
            header["part"] = frame.part
    if frame.retry:
        header["retry"] = True
    if frame.dropped:
        header["dropped"] = True
    raw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if len(raw) > MAX_HEADER_BYTES:
        raise WireError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    return [raw, bytes(frame.payload)]


def _int(h: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = h.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise WireError(f"header field '{key}': expected an integer in {lo}..{hi}, found {v!r}"[:160])
    return v


def _str(h: dict[str, Any], key: str, pattern: re.Pattern[str] | None = None, limit: int = 300) -> str:
    v = h.get(key, "")
    if not isinstance(v, str) or len(v) > limit or (pattern is not None and not pattern.match(v)):
        raise WireError(f"header field '{key}': invalid value {v!r}"[:160])
    return v


def _trace_record(t: Any) -> bool:
    """``[node, queue_ms, exec_ms, batch]`` with a short string, finite numbers and a batch size."""
    def number(x: Any) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)

    return (isinstance(t, list) and len(t) == 4 and isinstance(t[0], str) and len(t[0]) <= 64
            and number(t[1]) and number(t[2]) and isinstance(t[3], int) and not isinstance(t[3], bool)
            and 0 < t[3] <= 4096)


def decode_frame(parts: list[bytes] | list[memoryview], max_payload: int = DEFAULT_MAX_PAYLOAD) -> Frame:
    """Validate and decode the parts of a received message.

    Raises:
        WireError: Wrong part count, bad or oversized header, unknown fields' values, or a payload
            whose size does not match the header (truncated) or exceeds ``max_payload``.
    """
    if len(parts) != 2:
        raise WireError(f"expected 2 message parts (header, payload), found {len(parts)}")
    raw, payload = parts
    if len(raw) > MAX_HEADER_BYTES:
        raise WireError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        h = json.loads(bytes(raw))
    except (ValueError, UnicodeDecodeError):
        raise WireError("header is not valid JSON") from None
    if not isinstance(h, dict) or h.get("v") != VERSION:
        raise WireError(f"header must be a JSON object with v={VERSION}")
    kind = h.get("kind")
    if kind not in ("work", "result", "error"):
        raise WireError(f"header field 'kind': expected work, result or error, found {kind!r}"[:160])
    shape = h.get("shape")
    if (not isinstance(shape, list) or len(shape) > 8
            or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**31 for s in shape)):
        raise WireError("header field 'shape': expected up to 8 non-negative integers")
    codec = h.get("codec", "none")
    if not isinstance(codec, str) or codec not in codecs.ITEMSIZE:
        raise WireError(f"header field 'codec': expected none, fp16 or int8, found {codec!r}"[:160])
    params = h.get("params", [])
    if (not isinstance(params, list) or len(params) > 4
            or any(not isinstance(p, int | float) or isinstance(p, bool) or not math.isfinite(p)
                   for p in params)):
        raise WireError("header field 'params': expected up to 4 finite numbers")
    trace = h.get("trace", [])
    if not isinstance(trace, list) or len(trace) > 32 or not all(map(_trace_record, trace)):
        raise WireError("header field 'trace': expected up to 32 records [node, queue_ms, exec_ms, batch]")
    sent_at = h.get("sent_at", 0.0)
    if isinstance(sent_at, bool) or not isinstance(sent_at, int | float) or not math.isfinite(sent_at):
        raise WireError("header field 'sent_at': expected a number")
    model, devices, splits, plan_codecs = _plan(h, kind)
    section, part = _section(h, splits)
    retry, dropped = h.get("retry", False), h.get("dropped", False)
    if not isinstance(retry, bool) or not isinstance(dropped, bool):
        raise WireError(f"header fields 'retry' and 'dropped': expected true or false, found "
                        f"{retry!r} and {dropped!r}"[:160])
    expected = codecs.payload_bytes(codec, shape) if kind != "error" else 0
    if len(payload) > max_payload:
        raise WireError(f"payload of {len(payload)} bytes exceeds the limit of {max_payload}")
    if kind != "error" and len(payload) != expected:
        raise WireError(f"payload has {len(payload)} bytes but shape {shape} with codec {codec} "
                        f"needs {expected} (truncated or inconsistent frame)")
    return Frame(kind=kind, request_id=_str(h, "id", _ID), client=_str(h, "client", _ID),
                 reply_to=_str(h, "reply_to", limit=128), version=_int(h, "version", 0, 2**31),
                 hop=_int(h, "hop", 0, 63), position=_int(h, "position", 0, 100_000),
                 shape=tuple(shape), codec=codec, params=tuple(float(p) for p in params),
                 sent_at=float(sent_at), error=_str(h, "error"), retry=retry, dropped=dropped,
                 trace=tuple((t[0], float(t[1]), float(t[2]), t[3]) for t in trace),
                 payload=payload, model=model, devices=devices, splits=splits, codecs=plan_codecs,
                 section=section, part=part)


def _section(h: dict[str, Any], splits: tuple[int, ...]) -> tuple[Section | None, int | None]:
    """The plan's parallel section and the frame's piece of it (structure only; nodes fit it to the model)."""
    part = h.get("part")
    if h.get("section") is None:
        if part is not None:
            raise WireError("header field 'part' needs a plan with a section")
        return None, None
    if not splits:
        raise WireError("header field 'section' needs a plan (model, devices, splits)")
    try:
        section = Section(*section_field(h, "header", list(splits)))  # type: ignore[misc]
    except SchemaError as exc:
        raise WireError(str(exc)) from None
    if part is not None and (isinstance(part, bool) or not isinstance(part, int)
                             or not 0 <= part <= section.parts):
        raise WireError(f"header field 'part': expected an integer in 0..{section.parts}, "
                        f"found {part!r}"[:160])
    return section, part


def _plan(h: dict[str, Any], kind: str) -> tuple[str, tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    """The request's own plan from a header (required on work frames), structure only."""
    if "devices" not in h:
        if kind == "work" and not (h.get("hop") == 0 and h.get("position") == 0):
            raise WireError("work frame past the source has no plan (header fields model, devices, splits, "
                            "codecs)")
        return "", (), (), ()  # a request entering at its source without a plan: the source decides
    devices = h.get("devices")
    if (not isinstance(devices, list) or not 1 <= len(devices) <= 16
            or not all(isinstance(d, str) and _ID.match(d) for d in devices)
            or len(set(devices)) != len(devices)):
        raise WireError("header field 'devices': expected 1..16 distinct node ids")
    splits = h.get("splits")
    if (not isinstance(splits, list) or len(splits) != len(devices) - 1
            or any(isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= 100_000 for x in splits)
            or any(b < a for a, b in itertools.pairwise(splits))):
        raise WireError(f"header field 'splits': expected {len(devices) - 1} non-decreasing integers in "
                        "0..100000")
    plan_codecs = h.get("codecs", [])
    if (not isinstance(plan_codecs, list) or (plan_codecs and len(plan_codecs) != len(splits))
            or any(not isinstance(c, str) or c not in codecs.ITEMSIZE for c in plan_codecs)):
        raise WireError(f"header field 'codecs': expected none or {len(splits)} of none, fp16, int8")
    model = h.get("model")
    if not isinstance(model, str) or not _ID.match(model):
        raise WireError("header field 'model': expected a model name")
    hop = h.get("hop")
    if isinstance(hop, int) and not isinstance(hop, bool) and hop >= len(devices) and kind == "work":
        raise WireError(f"header field 'hop': {hop} is past the plan's {len(devices)} devices")
    return model, tuple(devices), tuple(splits), tuple(plan_codecs)
