"""RotNet's Network-In-Network for CIFAR (Gidaris et al. 2018): blocks of one k×k and two 1×1 convs."""

from __future__ import annotations

import torch
from torch import nn

from pretextlab.backbones.base import Backbone


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=kernel, padding=(kernel - 1) // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _kernel(block_index: int) -> int:
    # RotNet's NetworkInNetwork.py: 5x5 in the first two blocks, 3x3 after.
    return 5 if block_index < 2 else 3


class NIN(Backbone):
    """``num_blocks`` blocks of three conv-BN-ReLU layers (k×k, 1×1, 1×1), as RotNet's CIFAR model.

    Widths: ``width`` channels everywhere except the first block's two 1×1 convs (160 and 96 in
    the paper's code, ``first_block_widths``). Block 1 ends with a 3×3 stride-2 max-pool, block 2
    with a 3×3 stride-2 average pool, so a 32 px input gives stage maps of 16, 8, 8, 8 px
    (``block2`` is the 192×8×8 map RotNet's CIFAR classifiers read). Stages are ``block1`` …
    ``blockN`` with dims ``(96, 192, 192, 192)`` at the defaults. The classifier and global
    pooling of the original are left to the task and the probes.
    """

    def __init__(
        self,
        width: int = 192,
        num_blocks: int = 4,
        first_block_widths: tuple[int, int] | list[int] = (160, 96),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in first_block_widths)
        if width < 1 or num_blocks < 1 or len(widths) != 2 or min(widths) < 1:
            raise ValueError(
                f"nin needs width >= 1, num_blocks >= 1 and two first_block_widths >= 1, got {width}, {num_blocks}, "
                f"{list(widths)}"
            )
        self.in_channels = in_channels
        self.build_config = {"name": "nin", "width": width, "num_blocks": num_blocks,
                             "first_block_widths": list(widths), "in_channels": in_channels}
        blocks: list[nn.Module] = []
        dims: list[int] = []
        channels = in_channels
        for index in range(num_blocks):
            outs = (width, *widths) if index == 0 else (width, width, width)
            kernels = (_kernel(index), 1, 1)
            layers: list[nn.Module] = []
            for out_channels, kernel in zip(outs, kernels, strict=True):
                layers.append(_conv_bn_relu(channels, out_channels, kernel))
                channels = out_channels
            if index == 0:
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
            elif index == 1:
                layers.append(nn.AvgPool2d(kernel_size=3, stride=2, padding=1))
            blocks.append(nn.Sequential(*layers))
            dims.append(channels)
        self.blocks = nn.ModuleList(blocks)
        self.stage_names = tuple(f"block{i + 1}" for i in range(num_blocks))
        self.stage_dims = tuple(dims)

    def stage_outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        features = images
        for block in self.blocks:
            features = block(features)
            outputs.append(features)
        return outputs
