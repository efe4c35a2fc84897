"""Spatial parts of a block range: which operators are local, and exact execution of a row band.

Intra-DP's *local operators* (seed 001 Sec. 4.1) are those whose output at a spatial position
depends only on a bounded neighbourhood of their input there: element-wise operators (activations,
batch normalisation in eval mode, residual additions, channel concatenation) and window operators
(convolutions and pooling, with their kernel, stride, padding and dilation). A *global* operator
(adaptive pooling, flatten, a linear layer over the whole tensor, a squeeze-and-excite scale)
needs all of its input and is a barrier. Here the parts are bands of rows (the height axis): a run
of blocks made of local operators only is a *parallel section*, and any band of its output rows can
be computed from a band of its input rows (plus the halo its windows need) by the seed's
*operations*, one per part.

:func:`operator_locality` classifies a traced node; :func:`sections` finds the parallel sections of
a :class:`~adaptive.nn.partition.Partition`; :func:`input_rows` says which input rows an output band
needs; :func:`run_rows` computes the band from them exactly: with the module's own padding at the
image's true top and bottom borders and none at an interior cut, so the bands of a partition
concatenate to the section's output. Columns are never cut.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from adaptive.nn.partition import Partition, PartitionError

__all__ = ["Section", "Window", "band_shares", "block_rows", "input_rows", "operator_locality", "run_rows",
           "sections", "split_rows", "verify_sections"]

_ELEMENTWISE_MODULES = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.GELU,
                        nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Identity, nn.Dropout, nn.Dropout2d)
_ELEMENTWISE_FUNCTIONS = {F.relu, F.relu6, F.silu, F.hardswish, F.gelu, F.dropout, torch.relu, torch.sigmoid,
                          F.hardsigmoid, F.leaky_relu, torch.tanh}
_ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "contiguous"}
_BINARY = {operator.add, operator.mul, operator.sub, operator.truediv, torch.add, torch.mul}
_BINARY_METHODS = {"add", "mul"}


@dataclass(frozen=True)
class Window:
    """A window operator along the rows: kernel, stride, padding and dilation of its height axis."""

    kernel: int
    stride: int
    padding: int
    dilation: int = 1

    def needs(self, rows: tuple[int, int], height_in: int) -> tuple[int, int]:
        """Input rows (clipped to the image) that output rows ``[a, b)`` read."""
        a, b = rows
        lo = a * self.stride - self.padding
        hi = (b - 1) * self.stride - self.padding + self.dilation * (self.kernel - 1) + 1
        return max(lo, 0), min(hi, height_in)


@dataclass(frozen=True)
class Section:
    """A run of blocks ``[start, stop)`` made of local operators only (a parallel section).

    Attributes:
        start: First block.
        stop: End block (exclusive).
        height_in: Rows of the section's input.
        height_out: Rows of its output.
    """

    start: int
    stop: int
    height_in: int
    height_out: int

    def __contains__(self, blocks: tuple[int, int]) -> bool:
        return self.start <= blocks[0] < blocks[1] <= self.stop


def _pair(v: Any) -> int:
    return int(v[0] if isinstance(v, tuple | list) else v)


def _window(node: fx.Node, gm: fx.GraphModule) -> Window | None:
    """The row window of a convolution or pooling node, or None if it is not one."""
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        if isinstance(mod, nn.Conv2d) and isinstance(mod.padding, tuple | int):
            return Window(_pair(mod.kernel_size), _pair(mod.stride), _pair(mod.padding), _pair(mod.dilation))
        if isinstance(mod, nn.MaxPool2d):
            return Window(_pair(mod.kernel_size), _pair(mod.stride or mod.kernel_size), _pair(mod.padding),
                          _pair(mod.dilation))
        if isinstance(mod, nn.AvgPool2d) and (mod.count_include_pad or not _pair(mod.padding)):
            return Window(_pair(mod.kernel_size), _pair(mod.stride or mod.kernel_size), _pair(mod.padding))
        return None
    if node.op == "call_function" and node.target in (F.max_pool2d, F.avg_pool2d):
        kw = _window_kwargs(node)
        uncounted = not kw.get("count_include_pad", True) and _pair(kw.get("padding", 0))
        if node.target is F.avg_pool2d and uncounted:  # padding left out of the mean: not a plain window
            return None
        k = _pair(kw["kernel_size"])
        pad, dilation = _pair(kw.get("padding", 0)), _pair(kw.get("dilation", 1))
        return Window(k, _pair(kw.get("stride") or k), pad, dilation)
    return None


def _window_kwargs(node: fx.Node) -> dict[str, Any]:
    """A functional pooling call's arguments by name."""
    named = dict(zip(("input", "kernel_size", "stride", "padding"), node.args, strict=False))
    return {**named, **node.kwargs}


def _spatial(node: fx.Node) -> bool:
    """A 4-D tensor value (batch, channels, rows, columns)."""
    meta = node.meta.get("tensor_meta")
    return meta is not None and hasattr(meta, "shape") and len(meta.shape) == 4


def operator_locality(node: fx.Node, gm: fx.GraphModule, local: set[fx.Node]) -> str:
    """``elementwise``, ``window`` or ``global`` for a traced node (``local``: nodes found local so far).

    A binary operator is local when every tensor it reads is local or a constant that broadcasts
    along the rows; a squeeze-and-excite product reads a globally pooled tensor, so it is global.
    """
    if node.op in ("placeholder", "get_attr", "output"):
        return "elementwise"
    if not _spatial(node):
        return "global"
    if _window(node, gm) is not None:
        return "window" if node.all_input_nodes and node.all_input_nodes[0] in local else "global"
    tensors = [a for a in node.all_input_nodes if a.op != "get_attr"]
    if not all(a in local for a in tensors):
        return "global"
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        return "elementwise" if isinstance(module, _ELEMENTWISE_MODULES) else "global"
    if node.op == "call_function":
        if node.target in _ELEMENTWISE_FUNCTIONS or node.target in _BINARY:
            return "elementwise"
        if node.target is torch.cat and _cat_dim(node) == 1:
            return "elementwise"
        return "global"
    if node.op == "call_method" and (node.target in _ELEMENTWISE_METHODS or node.target in _BINARY_METHODS):
        return "elementwise"
    return "global"


def _cat_dim(node: fx.Node) -> int:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return int(dim) if isinstance(dim, int) else -99


def _segment_local(gm: fx.GraphModule) -> bool:
    local: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            local.add(node)
        elif node.op == "output":
            return node.args[0] in local
        elif operator_locality(node, gm, local) != "global":
            local.add(node)
        elif node.op != "get_attr":
            return False
    return False


def _height(part: Partition, position: int) -> int:
    shape = part.input_shape if position == 0 else part.blocks[position - 1].output_shape
    return int(shape[2]) if len(shape) == 4 else 0


_SECTIONS: weakref.WeakKeyDictionary[Partition, list[Section]] = weakref.WeakKeyDictionary()


def sections(part: Partition) -> list[Section]:
    """The maximal parallel sections of ``part`` (empty when no block is local: layer plans only)."""
    if part not in _SECTIONS:
        _SECTIONS[part] = _find_sections(part)
    return list(_SECTIONS[part])


def _find_sections(part: Partition) -> list[Section]:
    local = [_height(part, i) > 0 and _height(part, i + 1) > 0 and _segment_local(part.segment(i, i + 1))
             for i in range(part.num_blocks)]
    found, i = [], 0
    while i < part.num_blocks:
        if not local[i]:
            i += 1
            continue
        j = i
        while j < part.num_blocks and local[j]:
            j += 1
        found.append(Section(i, j, _height(part, i), _height(part, j)))
        i = j
    return found


def _check(part: Partition, start: int, stop: int, rows: tuple[int, int]) -> fx.GraphModule:
    if not any((start, stop) in s for s in sections(part)):
        raise PartitionError(f"blocks [{start}, {stop}) of {part.name} are not inside one parallel section")
    height = _height(part, stop)
    if not 0 <= rows[0] < rows[1] <= height:
        raise PartitionError(f"rows [{rows[0]}, {rows[1]}) are not within 0..{height}")
    return part.segment(start, stop)


def input_rows(part: Partition, start: int, stop: int, rows: tuple[int, int]) -> tuple[int, int]:
    """Rows of the activation at ``start`` that output rows ``rows`` of blocks ``[start, stop)`` need."""
    gm = _check(part, start, stop, rows)
    need: dict[fx.Node, tuple[int, int]] = {}
    nodes = list(gm.graph.nodes)
    need[nodes[-1].args[0]] = rows
    for node in reversed(nodes[:-1]):
        if node not in need:
            continue
        a, b = need[node]
        window = _window(node, gm)
        if window is not None:
            src = node.all_input_nodes[0]
            mapped = window.needs((a, b), _rows_of(src, part, start))
            sources = [(src, mapped)]
        else:
            sources = [(s, (a, b)) for s in node.all_input_nodes if s.op != "get_attr" and _has_rows(s)]
        for src, (lo, hi) in sources:
            old = need.get(src)
            need[src] = (min(lo, old[0]), max(hi, old[1])) if old else (lo, hi)
    (placeholder,) = [n for n in nodes if n.op == "placeholder"]
    return need.get(placeholder, rows)


def band_shares(part: Partition, start: int, stop: int, rows: tuple[int, int]) -> tuple[float, ...]:
    """Share of each block's output rows that output rows ``rows`` of blocks ``[start, stop)`` compute."""
    shares = []
    for i in range(start, stop):
        lo, hi = rows if i + 1 == stop else input_rows(part, i + 1, stop, rows)
        shares.append((hi - lo) / _height(part, i + 1))
    return tuple(shares)


def _has_rows(node: fx.Node) -> bool:
    return node.op == "placeholder" or _spatial(node)


def _rows_of(node: fx.Node, part: Partition, start: int) -> int:
    if node.op == "placeholder":
        return _height(part, start)
    return int(node.meta["tensor_meta"].shape[2])


@dataclass
class _Band:
    """A tensor holding rows ``[lo, hi)`` of a value whose full height is ``height``."""

    tensor: torch.Tensor
    lo: int
    hi: int
    height: int

    def crop(self, lo: int, hi: int) -> torch.Tensor:
        if (lo, hi) == (self.lo, self.hi):
            return self.tensor
        return self.tensor[:, :, lo - self.lo : hi - self.lo]


@dataclass(frozen=True)
class _Op:
    """One node of a block range, resolved once (:func:`_program`) so a band runs without lookups.

    Attributes:
        node: The traced node (``env`` key).
        kind: ``input``, ``const``, ``window``, ``local`` or ``output``.
        fn: The operator as traced (a window's with its own padding); for ``const``, the value.
        rowwise: A window's operator with no row padding (its column padding kept).
        window: A window's rows.
        fill: What a window's row padding holds (−inf for max pooling).
        height_out: Rows of the node's whole output.
        drop: Values no later node reads, freed once this node has run (as the traced module's
            own code does: held intermediates would cost fresh memory on every call).
    """

    node: fx.Node
    kind: str
    fn: Any = None
    rowwise: Any = None
    window: Window | None = None
    fill: float = 0.0
    height_out: int = 0
    drop: tuple[fx.Node, ...] = ()


_Programs = weakref.WeakKeyDictionary[Partition, dict[tuple[int, int], list[_Op]]]
_PROGRAMS: _Programs = weakref.WeakKeyDictionary()


def _program(part: Partition, start: int, stop: int) -> list[_Op]:
    """The nodes of blocks ``[start, stop)`` as :class:`_Op` (built once per partition and range)."""
    cache = _PROGRAMS.setdefault(part, {})
    if (start, stop) in cache:
        return cache[(start, stop)]
    gm = part.segment(start, stop)
    ops = []
    for node in gm.graph.nodes:
        window = _window(node, gm)
        if node.op in ("placeholder", "output"):
            ops.append(_Op(node, "input" if node.op == "placeholder" else "output"))
        elif node.op == "get_attr":
            ops.append(_Op(node, "const", _attr(gm, str(node.target))))
        elif window is not None:
            fill = float("-inf") if _is_max_pool(node, gm) else 0.0
            ops.append(_Op(node, "window", _whole(node, gm), _rowwise(node, gm), window, fill,
                           int(node.meta["tensor_meta"].shape[2])))
        elif node.op == "call_module":
            ops.append(_Op(node, "local", gm.get_submodule(str(node.target))))
        elif node.op == "call_function":
            ops.append(_Op(node, "local", node.target))
        else:
            ops.append(_Op(node, "local", _method(str(node.target))))
    last: dict[fx.Node, int] = {}
    for k, op in enumerate(ops):
        for src in op.node.all_input_nodes:
            last[src] = k
    ops = [dataclasses.replace(op, drop=tuple(n for n, k2 in last.items() if k2 == k and op.kind != "output"))
           for k, op in enumerate(ops)]
    cache[(start, stop)] = ops
    return ops


def run_rows(part: Partition, start: int, stop: int, x: torch.Tensor, in_rows: tuple[int, int],
             rows: tuple[int, int]) -> torch.Tensor:
    """Output rows ``rows`` of blocks ``[start, stop)``, from input rows ``in_rows`` held in ``x``.

    ``x`` holds rows ``in_rows`` of the activation at ``start`` (at least :func:`input_rows`' band).

    Raises:
        PartitionError: Blocks not inside one section, rows out of range, or too few input rows.
    """
    _check(part, start, stop, rows)
    if x.shape[2] != in_rows[1] - in_rows[0]:
        raise PartitionError(f"the part holds {x.shape[2]} rows, not rows [{in_rows[0]}, {in_rows[1]})")
    env: dict[fx.Node, Any] = {}
    with torch.inference_mode():
        for op in _program(part, start, stop):
            if op.kind == "input":
                env[op.node] = _Band(x, in_rows[0], in_rows[1], _height(part, start))
            elif op.kind == "const":
                env[op.node] = op.fn
            elif op.kind == "window":
                env[op.node] = _run_window(op, env[op.node.all_input_nodes[0]])
            elif op.kind == "local":
                env[op.node] = _run_local(op, env)
            else:
                out = env[op.node.args[0]]
                if out.lo > rows[0] or out.hi < rows[1]:
                    raise PartitionError(f"input rows {list(in_rows)} cannot give output rows {list(rows)} "
                                         f"(they give [{out.lo}, {out.hi}))")
                return out.crop(*rows).contiguous()
            for node in op.drop:
                del env[node]
    raise PartitionError("the segment has no output")


def _attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for name in target.split("."):
        obj = getattr(obj, name)
    return obj


def _method(name: str) -> Any:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, name)(*args, **kwargs)

    return call


def _run_local(op: _Op, env: dict[fx.Node, Any]) -> _Band:
    """An element-wise node on bands: its inputs cut to the rows they all hold."""
    node = op.node
    bands = [env[a] for a in node.all_input_nodes if isinstance(env.get(a), _Band)]
    lo, hi = max(b.lo for b in bands), min(b.hi for b in bands)

    def value(arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            v = env[arg]
            return v.crop(lo, hi) if isinstance(v, _Band) else v
        if isinstance(arg, list | tuple):
            return type(arg)(value(a) for a in arg)
        return arg

    args = value(node.args)
    result = op.fn(*args, **{k: value(v) for k, v in node.kwargs.items()}) if node.kwargs else op.fn(*args)
    return _Band(result, lo, hi, bands[0].height)


def _run_window(op: _Op, band: _Band) -> _Band:
    """A convolution or pooling on a band: padding only at the image's true borders."""
    w, height_out = op.window, op.height_out
    assert w is not None
    if band.lo == 0 and band.hi == band.height:  # the whole image: the operator as it is
        return _Band(op.fn(band.tensor), 0, height_out, height_out)
    x, top, bottom = band.tensor, band.lo, band.hi
    reach = w.dilation * (w.kernel - 1)
    if band.lo == 0 and w.padding:  # the image's top border: the operator's own padding
        x = F.pad(x, (0, 0, w.padding, 0), value=op.fill)
        top = -w.padding
    if band.hi == band.height:  # the bottom border: as many rows as the last window reaches
        extra = (height_out - 1) * w.stride - w.padding + reach + 1 - band.height
        if extra > 0:
            x = F.pad(x, (0, 0, 0, extra), value=op.fill)
            bottom = band.height + extra
    first = max(0, -((top + w.padding) // -w.stride))  # ceil((top + p) / s)
    last = min(height_out, (bottom - 1 - reach + w.padding) // w.stride + 1)
    if last <= first:
        raise PartitionError(f"{op.node.name}: the band [{band.lo}, {band.hi}) is too thin for a "
                             f"{w.kernel}-row window")
    begin = first * w.stride - w.padding - top
    x = x[:, :, begin : begin + (last - first - 1) * w.stride + reach + 1]
    return _Band(op.rowwise(x), first, last, height_out)


def _whole(node: fx.Node, gm: fx.GraphModule) -> Any:
    """A window node's own operator (its own padding)."""
    if node.op == "call_module":
        return gm.get_submodule(str(node.target))
    kw = _window_kwargs(node)
    kw.pop("input")
    return lambda x: node.target(x, **kw)  # type: ignore[operator]


def _is_max_pool(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), nn.MaxPool2d)
    return node.target is F.max_pool2d


def _rowwise(node: fx.Node, gm: fx.GraphModule) -> Any:
    """The node's operator for rows already padded: no row padding, its own column padding."""
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        if isinstance(mod, nn.Conv2d):
            pad = (0, mod.padding[1] if isinstance(mod.padding, tuple) else mod.padding)
            return lambda x: F.conv2d(x, mod.weight, mod.bias, mod.stride, pad, mod.dilation, mod.groups)
        if isinstance(mod, nn.MaxPool2d):
            return lambda x: F.max_pool2d(x, mod.kernel_size, mod.stride or mod.kernel_size,
                                          _cols(mod.padding), mod.dilation, ceil_mode=mod.ceil_mode)
        assert isinstance(mod, nn.AvgPool2d)
        return lambda x: F.avg_pool2d(x, mod.kernel_size, mod.stride or mod.kernel_size, _cols(mod.padding),
                                      ceil_mode=mod.ceil_mode, count_include_pad=mod.count_include_pad,
                                      divisor_override=mod.divisor_override)
    kw = _window_kwargs(node)
    kw.pop("input")
    kw["padding"] = _cols(kw.get("padding", 0))
    return lambda x: node.target(x, **kw)  # type: ignore[operator]


def _cols(padding: Any) -> tuple[int, int]:
    """Padding ``(rows, columns)`` with the rows' set to 0."""
    return 0, int(padding[1] if isinstance(padding, tuple | list) else padding)


def block_rows(part: Partition) -> list[Window | None]:
    """Each block's rows as one window (its branches' hull), or None for a block that is not local.

    Output rows ``[a, b)`` of a local block read input rows ``[a·s − p, (b − 1)·s − p + k)``,
    clipped to the image: the whole row map a model profile needs (``blocks[].rows``) to size the
    parts of a section without torch.
    """
    found: list[Window | None] = []
    local = {i for sec in sections(part) for i in range(sec.start, sec.stop)}
    for i in range(part.num_blocks):
        h_in, h_out = _height(part, i), _height(part, i + 1)
        if i not in local:
            found.append(None)
            continue
        # the composite is affine: read it off single-row bands away from the borders
        stride = max(1, round(h_in / h_out))
        lows, highs = [], []
        for a in range(h_out):
            lo, hi = input_rows(part, i, i + 1, (a, a + 1))
            lows.append((lo, a))
            highs.append((hi, a))
        padding = max(a * stride - lo for lo, a in lows)
        kernel = max(hi - (a * stride - padding) for hi, a in highs)
        window = Window(kernel, stride, padding)
        exact = all(window.needs((lo_a[1], lo_a[1] + 1), h_in) == (max(lo_a[0], 0), min(hi_a[0], h_in))
                    for lo_a, hi_a in zip(lows, highs, strict=True))
        if not exact:
            found.append(None)  # not one affine window (never seen in the zoo): treated as global
        else:
            found.append(window)
    return found


def split_rows(height: int, fractions: Sequence[float]) -> list[tuple[int, int]]:
    """Row bands of a ``height``-row output cut at cumulative ``fractions`` (empty bands dropped)."""
    cuts = [0, *(round(f * height) for f in fractions), height]
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def verify_sections(part: Partition, fractions: Sequence[float] = (0.25, 0.5, 0.75),
                    seed: int = 0) -> list[dict[str, Any]]:
    """Each section of ``part`` cut in two at each fraction, parts run apart and joined, vs. whole.

    Returns, per section and fraction: the bands, the halo (input rows read beyond the band's own
    share) and the largest difference from the whole section's output, relative to the largest
    output value (fp32 rounding differs between a band and the whole: about 1e-6 of the scale).
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(part.input_shape, generator=gen)
    acts = list(part.activations(x))
    report = []
    for sec in sections(part):
        whole = acts[sec.stop]
        for f in fractions:
            bands = split_rows(sec.height_out, [f])
            pieces, reads = [], []
            for rows in bands:
                lo, hi = input_rows(part, sec.start, sec.stop, rows)
                reads.append((lo, hi))
                band = acts[sec.start][:, :, lo:hi]
                pieces.append(run_rows(part, sec.start, sec.stop, band, (lo, hi), rows))
            joined = torch.cat(pieces, dim=2)
            scale = float(whole.abs().max()) or 1.0
            report.append({"start": sec.start, "stop": sec.stop, "fraction": f, "bands": bands,
                           "input_rows": reads, "max_rel_diff": float((joined - whole).abs().max()) / scale,
                           "shape_ok": joined.shape == whole.shape})
    return report
