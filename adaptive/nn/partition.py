"""Cut any traceable torch model into blocks at valid cut points.

A *valid cut point* is a place in the traced graph where exactly one tensor carries all state
forward: after it, nothing computed before it is used except that tensor. We find them by
tracing the model with :mod:`torch.fx` and sweeping the graph's liveness, so residual and
branched networks (ResNet, DenseNet, Inception, EfficientNet, ConvNeXt, …) split correctly with
no per-model lists.

Granularity:

``layer``
    every valid cut point (finest).
``block``
    only cut points between different *units*, where a unit is a child of the model, looking
    through plain ``nn.Sequential``/``ModuleList``/``ModuleDict`` containers (so VGG's units are
    its layers, ResNet's its residual blocks, MobileNetV2's its inverted residuals).

Any block range ``[i, j)`` becomes one :class:`torch.fx.GraphModule` that shares the parent's
parameters; chaining ranges reproduces the full model. In-place activations are switched to
out-of-place so that a block never modifies its input.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterator
from dataclasses import dataclass
from functools import reduce

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from adaptive.errors import AdaptiveError

__all__ = ["BlockSpec", "Partition", "PartitionError", "partition"]

GRANULARITIES = ("block", "layer")
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class PartitionError(AdaptiveError):
    """The model cannot be traced, run on the given input, or cut."""


@dataclass(frozen=True)
class BlockSpec:
    """One block between two valid cut points.

    Attributes:
        name: Unit name(s) the block spans, e.g. ``layer1.0`` or ``features.0..features.2``.
        nodes: Names of the traced graph nodes in the block.
        output_shape: Shape of the block's output tensor (batch first).
        output_dtype: dtype of that tensor.
        param_bytes: Bytes of the parameters and buffers the block uses.
        flops: FLOPs of one forward pass (2 × MACs, from :class:`torch.utils.flop_counter`).
        kind: Op class with the most FLOPs in the block: ``conv``, ``depthwise``, ``dense``, or
            ``other`` (no convolution or matrix product: normalisation, activation, pooling…).
    """

    name: str
    nodes: tuple[str, ...]
    output_shape: tuple[int, ...]
    output_dtype: torch.dtype
    param_bytes: int
    flops: float
    kind: str = "other"

    @property
    def numel(self) -> int:
        """Elements of the output tensor."""
        return int(reduce(operator.mul, self.output_shape, 1))

    def output_bytes(self, dtype: torch.dtype | None = None) -> int:
        """Size of the output at ``dtype`` (default: its own dtype), bytes."""
        dt = dtype or self.output_dtype
        return self.numel * torch.empty((), dtype=dt).element_size()


class Partition:
    """A traced model and its blocks; executes any block range.

    Build with :func:`partition`.
    """

    def __init__(self, name: str, graph_module: fx.GraphModule, input_shape: tuple[int, ...],
                 blocks: list[BlockSpec], block_nodes: list[list[fx.Node]],
                 boundaries: list[fx.Node], dynamic: set[fx.Node]) -> None:
        self.name = name
        self.graph_module = graph_module
        self.input_shape = input_shape
        self.blocks = blocks
        self._block_nodes = block_nodes
        self._boundaries = boundaries
        self._dynamic = dynamic
        self._segments: dict[tuple[int, int], fx.GraphModule] = {}

    @property
    def num_blocks(self) -> int:
        """Number of blocks ``L``."""
        return len(self._block_nodes)

    def input_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Size of the model input at ``dtype``, bytes."""
        n = reduce(operator.mul, self.input_shape, 1)
        return int(n * torch.empty((), dtype=dtype).element_size())

    def segment(self, start: int, stop: int) -> fx.GraphModule:
        """Blocks ``[start, stop)`` as one module taking and returning one tensor (cached)."""
        if not 0 <= start < stop <= self.num_blocks:
            raise PartitionError(f"block range [{start}, {stop}) is not within 0..{self.num_blocks}")
        key = (start, stop)
        if key not in self._segments:
            nodes = [n for blk in self._block_nodes[start:stop] for n in blk]
            self._segments[key] = self._build(nodes, self._boundaries[start], self._boundaries[stop])
        return self._segments[key]

    def run(self, start: int, stop: int, x: torch.Tensor) -> torch.Tensor:
        """Execute blocks ``[start, stop)`` on ``x`` (the activation at split position ``start``)."""
        if start == stop:
            return x
        with torch.inference_mode():
            return self.segment(start, stop)(x)

    def activations(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """The activation at every split position ``0..L`` for input ``x``."""
        yield x
        for i in range(self.num_blocks):
            x = self.run(i, i + 1, x)
            yield x

    def _build(self, nodes: list[fx.Node], inp: fx.Node, out: fx.Node) -> fx.GraphModule:
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {inp: graph.placeholder("x")}

        def copy(node: fx.Node) -> fx.Node:
            if node not in env:
                assert node not in self._dynamic, f"{node.name} crosses a cut point"
                for arg in node.all_input_nodes:
                    copy(arg)
                env[node] = graph.node_copy(node, lambda a: env[a])
            return env[node]

        for node in nodes:
            for arg in node.all_input_nodes:
                copy(arg)
            env[node] = graph.node_copy(node, lambda a: env[a])
        graph.output(env[out])
        return fx.GraphModule(self.graph_module, graph)


def partition(model: nn.Module, input_shape: tuple[int, ...], *, name: str = "model",
              granularity: str = "block") -> Partition:
    """Trace ``model`` and cut it into blocks.

    Args:
        model: A torch module in eval mode taking one tensor and returning one tensor.
        input_shape: Example input shape, batch first (batch 1 for per-request sizes).
        name: Model name used in messages.
        granularity: ``block`` (module-level units) or ``layer`` (every cut point).

    Raises:
        PartitionError: Tracing fails, the input shape does not fit, or there is no valid cut
            point inside the model.
    """
    if granularity not in GRANULARITIES:
        raise PartitionError(f"unknown granularity '{granularity}' (expected one of {GRANULARITIES})")
    model = model.eval()
    try:
        gm = fx.symbolic_trace(model)
    except (fx.proxy.TraceError, TypeError, NotImplementedError, RuntimeError) as exc:
        raise PartitionError(f"cannot trace {name} with torch.fx: {_first_line(exc)}") from None
    _make_out_of_place(gm)
    example = torch.randn(input_shape)
    try:
        with torch.inference_mode():
            gm(example)  # a plain run first: its error is the user's, ShapeProp's wraps it
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        raise PartitionError(
            f"{name} cannot take input shape {list(input_shape)}: {_first_line(exc)}") from None
    with torch.inference_mode():
        ShapeProp(gm).propagate(example)
    nodes = list(gm.graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise PartitionError(f"{name} must take exactly one input tensor, found {len(inputs)}")
    out_value = nodes[-1].args[0]
    if not isinstance(out_value, fx.Node) or not isinstance(out_value.meta.get("tensor_meta"),
                                                            TensorMetadata):
        raise PartitionError(f"{name} must return a single tensor")
    dynamic = _dynamic_nodes(nodes)
    cuts = _cut_points(nodes, dynamic)
    if granularity == "block":
        cuts = _merge_within_units(cuts, nodes, dynamic)
    # cuts[i] is the index of the last node before boundary i; blocks are the dynamic nodes between
    block_nodes = []
    for lo, hi in itertools.pairwise(cuts):
        block_nodes.append([n for n in nodes[lo + 1 : hi + 1] if n in dynamic])
    live = [_live_value(nodes, dynamic, c) for c in cuts]
    if len(block_nodes) < 2:
        raise PartitionError(f"{name} has no valid cut point inside: no single tensor carries all "
                             "state between its layers, so it can only run whole on one device")
    part = Partition(name, gm, tuple(input_shape), [], block_nodes, live, dynamic)
    part.blocks = _describe_blocks(part, gm, block_nodes, live, example)
    return part


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _make_out_of_place(gm: fx.GraphModule) -> None:
    for module in gm.modules():
        if hasattr(module, "inplace") and isinstance(module.inplace, bool):
            module.inplace = False
    for node in gm.graph.nodes:
        if node.kwargs.get("inplace") is True:
            node.kwargs = {**node.kwargs, "inplace": False}
    gm.recompile()


def _dynamic_nodes(nodes: list[fx.Node]) -> set[fx.Node]:
    """Nodes whose value depends on the input (the rest are constants and parameters)."""
    dynamic: set[fx.Node] = set()
    for n in nodes:
        if n.op == "placeholder" or (n.op != "output" and any(a in dynamic for a in n.all_input_nodes)):
            dynamic.add(n)
    return dynamic


def _cut_points(nodes: list[fx.Node], dynamic: set[fx.Node]) -> list[int]:
    """Indices ``p`` such that exactly one tensor is live between node ``p`` and ``p + 1``.

    Sweeps the graph once, keeping the set of computed dynamic values still needed later.
    Consecutive positions with the same live value collapse to the first one.
    """
    index = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max(index[u] for u in n.users) for n in dynamic if n.users}
    live: set[fx.Node] = set()
    cuts: list[int] = []
    previous: fx.Node | None = None
    for p, n in enumerate(nodes[:-1]):
        if n in dynamic and n in last_use:
            live.add(n)
        live = {m for m in live if last_use[m] > p}
        if len(live) == 1:
            (value,) = live
            if value is not previous and isinstance(value.meta.get("tensor_meta"), TensorMetadata):
                cuts.append(p)
            previous = value
        else:
            previous = None
    return cuts


def _live_value(nodes: list[fx.Node], dynamic: set[fx.Node], p: int) -> fx.Node:
    index = {n: i for i, n in enumerate(nodes)}
    for n in nodes[: p + 1][::-1]:
        if n in dynamic and any(index[u] > p for u in n.users):
            return n
    raise AssertionError(f"no live value at cut {p}")


def _unit(node: fx.Node) -> str:
    """Module-level unit of a node: outermost non-container module, else the node itself."""
    for qualname, module_type in node.meta.get("nn_module_stack", {}).values():
        if module_type not in _CONTAINERS:
            return qualname
    return node.target if node.op == "call_module" else node.name


def _leaf(node: fx.Node) -> str:
    """Innermost name of a node: the module it calls, or the graph node's own name."""
    return str(node.target) if node.op == "call_module" else node.name


def _label(names: list[str]) -> str:
    unique = list(dict.fromkeys(names))
    return unique[0] if len(unique) == 1 else f"{unique[0]}..{unique[-1]}"


def _merge_within_units(cuts: list[int], nodes: list[fx.Node], dynamic: set[fx.Node]) -> list[int]:
    keep = [cuts[0]]
    for k, p in enumerate(cuts[1:], start=1):
        if k == len(cuts) - 1:
            keep.append(p)
            continue
        before = next(n for n in nodes[p::-1] if n in dynamic and n.op != "placeholder")
        after = next(n for n in nodes[p + 1 :] if n in dynamic)
        if _unit(before) != _unit(after):
            keep.append(p)
    return keep


def _describe_blocks(part: Partition, gm: fx.GraphModule, block_nodes: list[list[fx.Node]],
                     live: list[fx.Node], example: torch.Tensor) -> list[BlockSpec]:
    from torch.utils.flop_counter import FlopCounterMode

    specs = []
    x = example
    for i, blk in enumerate(block_nodes):
        label = _label([_unit(n) for n in blk])
        if len(blk) == 1 or label in {b.name for b in specs}:
            label = _label([_leaf(n) for n in blk])
        meta: TensorMetadata = live[i + 1].meta["tensor_meta"]
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            x = part.segment(i, i + 1)(x)
        specs.append(BlockSpec(
            name=label,
            nodes=tuple(n.name for n in blk),
            output_shape=tuple(int(s) for s in meta.shape),
            output_dtype=meta.dtype,
            param_bytes=_param_bytes(gm, blk),
            flops=float(counter.get_total_flops()),
            kind=_kind(gm, blk),
        ))
    return specs


def _kind(gm: fx.GraphModule, block: list[fx.Node]) -> str:
    """The op class with the most (estimated) FLOPs among the block's nodes."""
    work = {"conv": 0.0, "depthwise": 0.0, "dense": 0.0}
    for n in block:
        meta = n.meta.get("tensor_meta")
        if n.op != "call_module" or not isinstance(meta, TensorMetadata):
            continue
        out = float(reduce(operator.mul, meta.shape, 1))
        mod = gm.get_submodule(n.target)
        if isinstance(mod, nn.Conv2d | nn.Conv1d | nn.Conv3d):
            k = float(reduce(operator.mul, mod.kernel_size, 1))
            depthwise = mod.groups > 1 and mod.groups == mod.in_channels
            work["depthwise" if depthwise else "conv"] += 2 * out * k * mod.in_channels / mod.groups
        elif isinstance(mod, nn.Linear):
            work["dense"] += 2 * out * mod.in_features
    best = max(work, key=lambda key: work[key])
    return best if work[best] > 0 else "other"


def _param_bytes(gm: fx.GraphModule, block: list[fx.Node]) -> int:
    seen: dict[int, int] = {}
    for n in block:
        tensors: list[torch.Tensor] = []
        if n.op == "call_module":
            mod = gm.get_submodule(n.target)
            tensors = [*mod.parameters(), *mod.buffers()]
        for arg in n.all_input_nodes:
            if arg.op == "get_attr":
                obj = reduce(getattr, arg.target.split("."), gm)
                if isinstance(obj, torch.Tensor):
                    tensors.append(obj)
        for t in tensors:
            seen[id(t)] = t.numel() * t.element_size()
    return int(sum(seen.values()))
