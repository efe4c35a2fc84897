"""Parallel sections live: the rows both ends derive from a plan, and the accelerator's assembly.

A work frame's plan may carry a section (:class:`adaptive.model.plans.Section`): blocks
``[s1, stop)`` whose output rows the source shares with node ``j``, the first node after it that
runs a stage (Intra-DP's local operation parallelism, seed 001 Sec. 4; ``docs/model.md``,
"Parallel sections"). Both ends derive the same rows from the plan alone (:func:`section_rows`):
node ``j``'s bands (the top rows, in ``parts`` bands), the input rows each band reads (its halo
included) and the new rows each chunk carries; the source's band and the input rows it reads.

The source runs ``[0, s1)``, sends chunk ``c`` (frame ``part`` = c, at ``position`` s1) for each of
node ``j``'s bands, computes its own band while they travel, and sends it (``part`` = parts, at
``position`` stop). Node ``j`` collects a request's pieces (:class:`SectionAssembler`), computes band
``c`` as soon as the rows it reads are in and the bands before it are done, and once every band and
the source's band are there, joins them into the section's output and goes on with the chain.
Every piece is checked against what the plan implies (rows, shape); a request whose pieces do not
arrive within the timeout is answered with an error, and the number held at once is bounded.

Imports torch; import lazily.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from adaptive.model.lop import section_bands
from adaptive.model.plans import Section, validate_section
from adaptive.nn.partition import Partition, PartitionError
from adaptive.nn.spatial import band_shares, input_rows, run_rows, sections

__all__ = ["SectionAssembler", "SectionError", "SectionPath", "SectionRows", "chunks", "edge_band",
           "run_band", "section_rows"]


class SectionError(ValueError):
    """A section that does not fit the model, or a piece that does not fit its section."""


@dataclass(frozen=True)
class SectionRows:
    """What a section plan implies, row by row (heights at split positions ``start`` and ``stop``).

    Attributes:
        start: First block (the plan's ``s1``).
        stop: End block.
        j: Index in the plan's devices of the node that shares the section with the source.
        bands: Node ``j``'s output rows, one band per part.
        reads: The input rows each of node ``j``'s bands reads.
        sends: The input rows chunk ``c`` carries: those not carried by an earlier chunk (may be empty).
        edge: The source's output rows.
        edge_reads: The input rows the source's band reads.
        band_shares: For each of node ``j``'s bands, the share of each block's output rows it computes.
        edge_shares: The same for the source's band.
    """

    start: int
    stop: int
    j: int
    bands: tuple[tuple[int, int], ...]
    reads: tuple[tuple[int, int], ...]
    sends: tuple[tuple[int, int], ...]
    edge: tuple[int, int]
    edge_reads: tuple[int, int]
    band_shares: tuple[tuple[float, ...], ...]
    edge_shares: tuple[float, ...]


def section_rows(part: Partition, splits: tuple[int, ...], section: Section) -> SectionRows:
    """The rows of ``section`` in a plan with ``splits`` on ``part``.

    Raises:
        SectionError: The section does not start at ``s1`` and leave node ``j`` a block, its blocks
            are not inside one parallel section of the model, or a band would be empty.
    """
    L = part.num_blocks
    try:
        validate_section(splits, section, L)
    except ValueError as exc:
        raise SectionError(str(exc)) from None
    start, stop = splits[0], section.stop
    if not any((start, stop) in s for s in sections(part)):
        found = ", ".join(f"[{s.start}, {s.stop})" for s in sections(part)) or "none"
        raise SectionError(f"blocks [{start}, {stop}) of {part.name} are not inside one parallel section "
                           f"(sections: {found})")
    bounds = [*splits, L]
    j = next(m for m in range(len(splits)) if bounds[m + 1] > bounds[m]) + 1
    height = int(_shape_at(part, stop)[2])
    bands = section_bands(height, section.share, section.parts)
    if bands is None:
        raise SectionError(f"{section.parts} part(s) of {section.share:g} of {height} rows: a part would "
                           "be empty")
    reads, sends, sent = [], [], 0
    for band in bands[:-1]:
        lo, hi = input_rows(part, start, stop, band)
        reads.append((lo, hi))
        sends.append((max(lo, sent), max(hi, sent)))
        sent = max(sent, hi)
    edge = bands[-1]
    return SectionRows(start, stop, j, tuple(bands[:-1]), tuple(reads), tuple(sends), edge,
                       input_rows(part, start, stop, edge),
                       tuple(band_shares(part, start, stop, b) for b in bands[:-1]),
                       band_shares(part, start, stop, edge))


def _shape_at(part: Partition, position: int) -> tuple[int, ...]:
    """Shape of the activation at split position ``position``."""
    return tuple(part.input_shape if position == 0 else part.blocks[position - 1].output_shape)


def run_band(part: Partition, rows: SectionRows, x: np.ndarray, reads: tuple[int, int],
             band: tuple[int, int]) -> np.ndarray:
    """Output rows ``band`` of the section from ``x``, the input rows ``reads``."""
    out = run_rows(part, rows.start, rows.stop, torch.from_numpy(np.ascontiguousarray(x)), reads, band)
    return out.numpy()


def chunks(rows: SectionRows, x: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """The source's chunks ``(part, rows)`` of the section input ``x``, empty ones left out."""
    return [(c, np.ascontiguousarray(x[:, :, lo:hi])) for c, (lo, hi) in enumerate(rows.sends) if hi > lo]


def edge_band(part: Partition, rows: SectionRows, x: np.ndarray) -> np.ndarray:
    """The source's own band of the section's output, from the whole section input ``x``."""
    lo, hi = rows.edge_reads
    return run_band(part, rows, x[:, :, lo:hi], rows.edge_reads, rows.edge)


def _plan_of(frame: Any) -> tuple[Any, ...]:
    """What every piece of one request must agree on: its plan."""
    return frame.model, frame.devices, frame.splits, frame.codecs, frame.section


@dataclass
class _Pending:
    """One request's pieces so far at node ``j``."""

    rows: SectionRows
    created: float
    first: Any  # the request's header for the answer: the source's band once in, else the first piece
    buffer: np.ndarray | None = None  # the section's input, rows filled as chunks arrive
    received: set[int] = field(default_factory=set)
    outputs: list[np.ndarray] = field(default_factory=list)  # node j's bands, computed in order
    edge: np.ndarray | None = None
    compute_s: float = 0.0


class SectionAssembler:
    """Node ``j``'s side: a request's pieces in, its section's output out.

    Args:
        part: The node's partition.
        max_pending: Requests held at once; a piece of one more is refused.
        timeout_s: How long a request's pieces may take to arrive.
        pad: ``pad(start, shares, seconds) -> seconds``: emulation of a band's time (default: none).
    """

    def __init__(self, part: Partition, max_pending: int = 64, timeout_s: float = 30.0,
                 pad: Callable[[int, tuple[float, ...], float], float] | None = None) -> None:
        self.part = part
        self.pad = pad or (lambda start, shares, seconds: seconds)
        self.max_pending = max_pending
        self.timeout_s = timeout_s
        self._pending: OrderedDict[tuple[str, str], _Pending] = OrderedDict()
        self._failed: deque[tuple[str, str]] = deque(maxlen=1024)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, frame: Any, rows: SectionRows) -> tuple[np.ndarray | None, float, Any]:
        """Take one piece; ``(output, compute seconds, first frame)`` once the section is complete.

        Returns ``(None, 0, None)`` while pieces are missing, and for a late piece of a request
        that already failed (dropped: its client has had its answer).

        Raises:
            SectionError: The piece does not fit its section (its client gets one error answer).
        """
        key = (frame.client, frame.request_id)
        with self._lock:
            if key in self._failed:
                return None, 0.0, None
            state = self._pending.get(key)
            if state is None:
                if len(self._pending) >= self.max_pending:
                    raise SectionError(f"{len(self._pending)} sections are being assembled here: no room")
                state = self._pending[key] = _Pending(rows, time.monotonic(), frame)
        try:
            self._take(state, frame)
            self._advance(state)
        except (SectionError, PartitionError, RuntimeError, ValueError) as exc:
            self._fail(key)
            raise SectionError(str(exc).splitlines()[0][:200]) from None
        if len(state.outputs) < len(rows.bands) or state.edge is None:
            return None, 0.0, None
        with self._lock:
            self._pending.pop(key, None)
        joined = np.concatenate([*state.outputs, state.edge], axis=2)
        return joined, state.compute_s, state.first

    def expired(self) -> list[Any]:
        """The first frames of requests whose pieces did not all arrive in time (forgotten now)."""
        now, out = time.monotonic(), []
        with self._lock:
            for key, state in list(self._pending.items()):
                if now - state.created > self.timeout_s:
                    out.append(state.first)
                    self._pending.pop(key)
                    self._failed.append(key)
        return out

    def _fail(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._pending.pop(key, None)
            self._failed.append(key)

    def _take(self, state: _Pending, frame: Any) -> None:
        """Check a piece against the rows its plan implies and store it."""
        rows, part = state.rows, frame.part
        if part in state.received:
            raise SectionError(f"piece {part} of the section arrived twice")
        if _plan_of(frame) != _plan_of(state.first):
            raise SectionError(f"piece {part} carries another plan than the request's other pieces")
        x = frame.tensor()
        if part < len(rows.bands):
            lo, hi = rows.sends[part]
            shape_in = _shape_at(self.part, rows.start)
            want = (1, shape_in[1], hi - lo, shape_in[3])
            if x.shape != want:
                raise SectionError(f"chunk {part} has shape {list(x.shape)}, expected {list(want)} "
                                   f"(input rows [{lo}, {hi}))")
            if state.buffer is None:  # up to the last row node j's bands read
                state.buffer = np.empty((1, shape_in[1], rows.reads[-1][1], shape_in[3]), np.float32)
            state.buffer[:, :, lo:hi] = x
        else:
            state.first = frame  # the source's band carries its trace: the request goes on with it
            out = _shape_at(self.part, rows.stop)
            want = (1, out[1], rows.edge[1] - rows.edge[0], out[3])
            if x.shape != want:
                raise SectionError(f"the source's band has shape {list(x.shape)}, expected {list(want)} "
                                   f"(output rows [{rows.edge[0]}, {rows.edge[1]}))")
            state.edge = x
        state.received.add(part)

    def _advance(self, state: _Pending) -> None:
        """Compute every band whose input rows are all in, in order."""
        rows = state.rows
        while len(state.outputs) < len(rows.bands):
            c = len(state.outputs)
            # band c reads rows that chunks 0..c carried (empty chunks carry nothing and are never sent)
            if any(k not in state.received and rows.sends[k][1] > rows.sends[k][0] for k in range(c + 1)):
                return
            assert state.buffer is not None or rows.reads[c][1] == rows.reads[c][0]
            lo, hi = rows.reads[c]
            t0 = time.perf_counter()
            state.outputs.append(run_band(self.part, rows, state.buffer[:, :, lo:hi], rows.reads[c],
                                          rows.bands[c]))
            state.compute_s += self.pad(rows.start, rows.band_shares[c], time.perf_counter() - t0)


class SectionPath:
    """A node's handling of sectioned requests: the source's side and node ``j``'s.

    Args:
        part: The node's partition.
        node: The node's id.
        send: ``send(node, frame) -> bool``: a frame to a peer (False: unreachable or full).
        reply: ``reply(frame)``: an answer to the request's client.
        emit: ``emit(frame, activation, stop, queued_ms, spent_s, batch)``: the request goes on
            after blocks ``[…, stop)`` (to its next node, or home as its result).
        pad: ``pad(start, stop, batch, seconds) -> seconds``: compute emulation of a stage.
        count: Called once per request this node has done its share of.
        pad_part: ``pad_part(start, shares, seconds) -> seconds``: compute emulation of a band.
        record: ``record(versions, start, stop, batch, ms, section)``: compute time for the node's
            stats (:meth:`adaptive.runtime.node.NodeStats.stage`): whole stages with ``section``
            None, and the node's bands of a section with the plan's section.
    """

    def __init__(self, part: Partition, node: str, send: Callable[[str, Any], bool],
                 reply: Callable[[Any], None], emit: Callable[..., None],
                 pad: Callable[[int, int, int, float], float], count: Callable[[], None],
                 pad_part: Callable[[int, tuple[float, ...], float], float] | None = None,
                 record: Callable[..., None] | None = None) -> None:
        self.part, self.node = part, node
        self.send, self.reply, self.emit, self.pad, self.count = send, reply, emit, pad, count
        self.pad_part = pad_part or (lambda start, shares, seconds: seconds)
        self.record = record or (lambda *args: None)
        self.assembler = SectionAssembler(part, pad=self.pad_part)
        self._rows: dict[tuple[Any, ...], SectionRows] = {}

    def rows(self, splits: tuple[int, ...], section: Section) -> SectionRows:
        """:func:`section_rows` on this node's model, remembered per plan."""
        key = (splits, section)
        if key not in self._rows:
            if len(self._rows) > 256:
                self._rows.clear()
            self._rows[key] = section_rows(self.part, splits, section)
        return self._rows[key]

    def check(self, splits: tuple[int, ...], section: tuple[int, float, int]) -> str:
        """Why a published section ``(stop, share, parts)`` does not fit this model ("" if it does)."""
        try:
            self.rows(tuple(splits), Section(*section))
        except (SectionError, ValueError, IndexError) as exc:
            return f"section: {exc}"
        return ""

    def take(self, f: Any, queued_s: float) -> None:
        """A frame of a parallel section: the source's whole request, or one piece at node ``j``.

        A section or piece that does not fit gets an error answer; the node goes on serving.
        """
        try:
            rows = self.rows(f.splits, f.section)
            if f.devices[f.hop] != self.node or f.hop != (0 if f.part is None else rows.j):
                raise SectionError(f"misrouted: node {self.node} got hop {f.hop} of a section shared by "
                                   f"hops 0 and {rows.j}")
            if f.part is None:
                self._source(f, rows, round(queued_s * 1e3, 3))
                return
            want = rows.start if f.part < len(rows.bands) else rows.stop
            if f.position != want:
                raise SectionError(f"piece {f.part} at position {f.position}, expected {want}")
            joined, compute_s, head = self.assembler.add(f, rows)
            if joined is None:
                return
            start, stop = rows.stop, [*head.splits, self.part.num_blocks][rows.j]
            t0 = time.perf_counter()
            with torch.inference_mode():
                y = self.part.run(start, stop, torch.from_numpy(joined)).numpy() if stop > start else joined
        except (SectionError, PartitionError, RuntimeError, ValueError) as exc:
            self.reply(f.error_reply(f"node {self.node} refused the request's section: "
                                     f"{str(exc).splitlines()[0][:200]}"))
            return
        rest_s = self.pad(start, stop, 1, time.perf_counter() - t0) if stop > start else 0.0
        self.record({head.version}, rows.start, rows.stop, 1, compute_s * 1e3, head.section.wire)
        if stop > start:
            self.record({head.version}, start, stop, 1, rest_s * 1e3, None)
        self.emit(head, y, stop, 0.0, compute_s + rest_s, 1)

    def expire(self) -> None:
        """Answer the requests whose pieces did not all arrive in time."""
        for f in self.assembler.expired():
            self.reply(f.error_reply(f"node {self.node}: the request's section did not arrive in "
                                     f"{self.assembler.timeout_s:g} s", retry=True))

    def _source(self, f: Any, rows: SectionRows, queued_ms: float) -> None:
        """Run ``[0, s1)``, stream node ``j``'s chunks, compute the source's band and send it last."""
        from adaptive.runtime.wire import tensor_frame

        t0 = time.perf_counter()
        x = f.tensor()
        if rows.start:
            with torch.inference_mode():
                x = self.part.run(0, rows.start, torch.from_numpy(x)).numpy()
        ahead = self.pad(0, rows.start, 1, time.perf_counter() - t0) if rows.start else 0.0
        peer, codec = f.devices[rows.j], f.codecs[rows.j - 1] if f.codecs else "none"
        for c, piece in chunks(rows, x):  # out first: they travel while the source computes its band
            if not self.send(peer, tensor_frame(f, piece, codec, hop=rows.j, position=rows.start, part=c)):
                self.reply(f.error_reply(f"next node {peer} is unreachable", retry=True))
                return
        t1 = time.perf_counter()
        band = edge_band(self.part, rows, x)
        band_s = self.pad_part(rows.start, rows.edge_shares, time.perf_counter() - t1)
        if rows.start:
            self.record({f.version}, 0, rows.start, 1, ahead * 1e3, None)
        self.record({f.version}, rows.start, rows.stop, 1, band_s * 1e3, f.section.wire)
        spent = ahead + band_s
        self.count()
        trace = (*f.trace, (self.node, queued_ms, round(spent * 1e3, 3), 1))
        last = tensor_frame(f, band, codec, hop=rows.j, position=rows.stop, part=len(rows.bands), trace=trace)
        if not self.send(peer, last):
            self.reply(f.error_reply(f"next node {peer} is unreachable", retry=True))
