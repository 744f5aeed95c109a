"""torchvision ResNets as pretextlab backbones, with an optional CIFAR stem."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from pretextlab.backbones.base import Backbone

_CONSTRUCTORS = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
}


class ResNet(Backbone):
    """A torchvision ResNet without its classifier; stages ``layer1`` … ``layer4``.

    ``cifar_stem`` replaces the 7×7 stride-2 conv and max-pool with a 3×3 stride-1 conv, the
    usual choice for 32 px inputs (otherwise a 32 px image is 1 px wide by ``layer4``).
    Weights always start random: pretext tasks learn from scratch.
    """

    def __init__(self, arch: str = "resnet18", cifar_stem: bool = False, in_channels: int = 3) -> None:
        super().__init__()
        if arch not in _CONSTRUCTORS:
            raise ValueError(f"unknown ResNet arch {arch!r}; choose one of {sorted(_CONSTRUCTORS)}")
        self.in_channels = in_channels
        self.build_config = {
            "name": arch,
            "cifar_stem": cifar_stem,
            "in_channels": in_channels,
        }
        net = _CONSTRUCTORS[arch](weights=None)
        if cifar_stem:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        expansion = 4 if arch == "resnet50" else 1
        self.stage_names = ("layer1", "layer2", "layer3", "layer4")
        self.stage_dims = tuple(width * expansion for width in (64, 128, 256, 512))

    @property
    def min_input_size(self) -> int:
        """1 px: every strided conv and the stem's max-pool are padded, so a 1 px map stays 1 px.

        Inputs that small carry little to the later stages (32x down-sampling with the ImageNet
        stem, 8x with the CIFAR stem), but nothing fails.
        """
        return 1

    def stage_outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        features = self.stem(images)
        for layer in self.layers:
            features = layer(features)
            outputs.append(features)
        return outputs
