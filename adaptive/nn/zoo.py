"""Models by name: torchvision classifiers plus the small CNNs of the seed papers.

Weights are randomly initialised (latency does not depend on weight values) unless a local
``state_dict`` file is given. Nothing is ever downloaded. Imports torch; import this module
lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from adaptive.errors import AdaptiveError

__all__ = ["ZooModel", "build_model", "default_input_shape", "list_models"]


@dataclass(frozen=True)
class ZooModel:
    """A model constructor with its usual input shape (batch first)."""

    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    description: str


class ConvBNReLU(nn.Sequential):
    """conv3x3 → BatchNorm → ReLU, kept as one block by the partitioner (not a bare Sequential)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class WithReLU(nn.Sequential):
    """A layer followed by ReLU, one block (a Keras layer with ``activation="relu"``)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__(layer, nn.ReLU())


class ClassifierHead(nn.Module):
    """Global average pool → flatten → linear, as one block."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.fc(torch.flatten(self.pool(x), 1))


class VGG16Cifar(nn.Module):
    """VGG16 with batch norm for 32×32 inputs (seed 000 uses VGG16 on CIFAR-100)."""

    def __init__(self, classes: int = 100) -> None:
        super().__init__()
        cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
               512, 512, 512, "M"]
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(ConvBNReLU(cin, int(v)))
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.classifier(self.flatten(self.features(x)))


def _resnet50_cifar(classes: int = 100) -> nn.Module:
    """Torchvision ResNet-50 with a 3×3 stride-1 stem and no max-pool, for 32×32 inputs."""
    from torchvision.models import resnet50

    model = resnet50(weights=None, num_classes=classes)
    model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet-(6n+2): a stem, 3 stages of n basic blocks, a head."""

    def __init__(self, depth: int, classes: int = 10) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        if (depth - 2) % 6:
            raise AdaptiveError(f"CIFAR ResNet depth must be 6n+2, found {depth}")
        n = (depth - 2) // 6
        blocks: list[nn.Module] = []
        cin = 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                down = None
                if stride != 1 or cin != cout:
                    down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(cout))
                blocks.append(BasicBlock(cin, cout, stride=stride, downsample=down))
                cin = cout
        self.stem = ConvBNReLU(3, 16)
        self.blocks = nn.Sequential(*blocks)
        self.head = ClassifierHead(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.head(self.blocks(self.stem(x)))


def _cnn14_seed004() -> nn.Module:
    """The 14-layer CNN of seed 004 Table 1 (Keras → PyTorch, 1×28×28 input, 10 classes).

    Table 1 lists BatchNormalization (layer 4) with 128 channels but 256 parameters, i.e. 64
    channels; we follow the parameter count. Keras Conv2D/Dense layers carry their activation,
    assumed ReLU (the paper does not say).
    """

    def conv(cin: int, cout: int) -> nn.Module:
        return WithReLU(nn.Conv2d(cin, cout, 3))

    return nn.Sequential(
        conv(1, 32), conv(32, 64), nn.MaxPool2d(2), nn.BatchNorm2d(64),
        conv(64, 128), conv(128, 128), nn.MaxPool2d(2), nn.BatchNorm2d(128),
        conv(128, 256), nn.MaxPool2d(2), nn.Flatten(), nn.BatchNorm1d(256),
        WithReLU(nn.Linear(256, 512)), nn.Linear(512, 10),
    )


_CUSTOM: dict[str, ZooModel] = {
    "cnn14_seed004": ZooModel(_cnn14_seed004, (1, 1, 28, 28), "14-layer CNN of seed 004, Table 1"),
    "vgg16_cifar": ZooModel(VGG16Cifar, (1, 3, 32, 32), "VGG16-BN for CIFAR-100 (seed 000)"),
    "resnet50_cifar": ZooModel(_resnet50_cifar, (1, 3, 32, 32), "ResNet-50 for CIFAR-100 (seed 000)"),
    "resnet20_cifar": ZooModel(lambda: CifarResNet(20), (1, 3, 32, 32), "ResNet-20, CIFAR-10 (seed 002)"),
    "resnet110_cifar": ZooModel(lambda: CifarResNet(110), (1, 3, 32, 32),
                                "ResNet-110, CIFAR-10 (seed 002)"),
}

# torchvision classifiers that need a larger input or extra arguments
_TV_INPUT = {"inception_v3": 299}
_TV_KWARGS: dict[str, dict[str, object]] = {
    "inception_v3": {"aux_logits": False, "init_weights": False},
    "googlenet": {"aux_logits": False, "init_weights": False},
}


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def list_models() -> list[str]:
    """Every model name this zoo can build."""
    return sorted([*_CUSTOM, *_torchvision_names()])


def default_input_shape(name: str) -> tuple[int, ...]:
    """Usual input shape of a model (batch 1).

    Raises:
        AdaptiveError: Unknown name (the message lists valid ones).
    """
    if name not in _CUSTOM and name not in _torchvision_names():
        raise AdaptiveError(f"unknown model '{name}'; valid models: {', '.join(list_models())}")
    if name in _CUSTOM:
        return _CUSTOM[name].input_shape
    size = _TV_INPUT.get(name, 224)
    return (1, 3, size, size)


def build_model(name: str, weights: str | Path | None = None, seed: int = 0) -> nn.Module:
    """Build a model in eval mode, randomly initialised or from a local ``state_dict`` file.

    Random initialisation is seeded (``seed``), so every node of a cluster holds the *same*
    replica and a request split across nodes computes what the whole model computes. The global
    torch random state is left untouched.

    Raises:
        AdaptiveError: Unknown name (the message lists valid ones) or an unloadable file.
    """
    if name not in _CUSTOM and name not in _torchvision_names():
        raise AdaptiveError(f"unknown model '{name}'; valid models: {', '.join(list_models())}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name in _CUSTOM:
            model = _CUSTOM[name].build()
        else:
            import torchvision

            model = torchvision.models.get_model(name, weights=None, **_TV_KWARGS.get(name, {}))
    if weights is not None:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except FileNotFoundError:
            raise AdaptiveError(f"{weights}: file not found") from None
        except (RuntimeError, ValueError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AdaptiveError(f"{weights}: cannot load state_dict for {name}: {first}") from None
    return model.eval()
