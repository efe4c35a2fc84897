"""Partitioner: split equivalence at every cut for many zoo models, and clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adaptive.errors import AdaptiveError
from adaptive.nn.partition import PartitionError, partition
from adaptive.nn.zoo import build_model, default_input_shape, list_models

# residual, branched, dense, depthwise, squeeze-excite, layer-norm and plain chains
ZOO = [
    ("resnet18", (1, 3, 64, 64)), ("resnet50_cifar", (1, 3, 32, 32)),
    ("mobilenet_v2", (1, 3, 64, 64)), ("mobilenet_v3_small", (1, 3, 64, 64)),
    ("squeezenet1_1", (1, 3, 64, 64)), ("densenet121", (1, 3, 64, 64)),
    ("efficientnet_b0", (1, 3, 64, 64)), ("inception_v3", (1, 3, 96, 96)),
    ("vgg16", (1, 3, 64, 64)), ("alexnet", (1, 3, 64, 64)), ("regnet_y_400mf", (1, 3, 64, 64)),
    ("convnext_tiny", (1, 3, 64, 64)), ("cnn14_seed004", (1, 1, 28, 28)),
    ("vgg16_cifar", (1, 3, 32, 32)), ("resnet110_cifar", (1, 3, 32, 32)),
]


@pytest.mark.parametrize(("name", "shape"), ZOO, ids=[z[0] for z in ZOO])
@pytest.mark.parametrize("granularity", ["block", "layer"])
def test_chained_ranges_reproduce_the_model_at_every_cut(name, shape, granularity):
    torch.manual_seed(0)
    model = build_model(name)
    part = partition(model, shape, name=name, granularity=granularity)
    assert part.num_blocks >= 2
    x = torch.randn(shape)
    with torch.inference_mode():
        full = model(x)
    for cut in range(1, part.num_blocks):
        head = part.run(0, cut, x)
        assert tuple(head.shape) == part.blocks[cut - 1].output_shape
        tail = part.run(cut, part.num_blocks, head)
        assert torch.allclose(tail, full, rtol=1e-5, atol=1e-6), f"cut {cut} of {part.num_blocks}"
    # every block records its output size, parameters and work
    assert sum(b.param_bytes for b in part.blocks) >= sum(
        p.numel() * p.element_size() for p in model.parameters()) * 0.99
    assert sum(b.flops for b in part.blocks) > 0


def test_block_granularity_is_coarser_and_matches_seed004_table1():
    part = partition(build_model("cnn14_seed004"), (1, 1, 28, 28), granularity="block")
    assert part.num_blocks == 14  # the 14 layers of seed 004 Table 1
    shapes = [b.output_shape for b in part.blocks]
    assert shapes[0] == (1, 32, 26, 26) and shapes[5] == (1, 128, 8, 8) and shapes[-1] == (1, 10)
    # Table 1 parameter counts (weights + biases; BatchNorm adds its running stats as buffers)
    assert part.blocks[1].param_bytes == 18_496 * 4
    fine = partition(build_model("resnet18"), (1, 3, 64, 64), granularity="layer")
    coarse = partition(build_model("resnet18"), (1, 3, 64, 64), granularity="block")
    assert fine.num_blocks > coarse.num_blocks


def test_residual_blocks_are_never_cut_inside():
    part = partition(build_model("resnet110_cifar"), (1, 3, 32, 32), granularity="layer")
    names = [b.name for b in part.blocks]
    # the add of a residual block needs the block input and the branch: no cut between them
    assert "blocks.0" in names and not any(n.startswith("blocks.0.conv") for n in names)


class TwoBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.a(x) + self.b(x)


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


def test_no_valid_cut_point_is_reported():
    with pytest.raises(PartitionError, match="no valid cut point"):
        partition(TwoBranches(), (1, 3, 8, 8), name="two-branches")


def test_untraceable_model_is_reported():
    with pytest.raises(PartitionError, match="cannot trace"):
        partition(DataDependent(), (1, 3), name="dyn")


def test_wrong_input_shape_is_reported():
    with pytest.raises(PartitionError, match=r"inception_v3 cannot take input shape \[1, 3, 32, 32\]"):
        partition(build_model("inception_v3"), (1, 3, 32, 32), name="inception_v3")


def test_unknown_model_lists_valid_names():
    with pytest.raises(AdaptiveError, match=r"valid models: .*resnet18"):
        build_model("resnet-eighteen")
    assert "vgg16_cifar" in list_models() and default_input_shape("inception_v3") == (1, 3, 299, 299)


def test_local_state_dict_loads_and_bad_file_is_clear(tmp_path):
    model = build_model("cnn14_seed004")
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    again = build_model("cnn14_seed004", weights=path)
    x = torch.randn(1, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(model(x), again(x))
    torch.save({"nope": torch.zeros(1)}, path)
    with pytest.raises(AdaptiveError, match="cannot load state_dict"):
        build_model("cnn14_seed004", weights=path)


def test_blocks_never_modify_their_input():
    part = partition(build_model("resnet18"), (1, 3, 64, 64))
    x = torch.randn(1, 3, 64, 64)
    acts = [a.clone() for a in part.activations(x)]
    for i in range(part.num_blocks):
        before = acts[i].clone()
        part.run(i, i + 1, acts[i])
        assert torch.equal(acts[i], before), part.blocks[i].name
