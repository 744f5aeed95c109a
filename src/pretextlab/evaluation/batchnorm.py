"""BatchNorm statistics re-estimated on training images, for encoders that were never trained.

A freshly initialised BatchNorm layer holds running mean 0 and variance 1, so in eval mode it is an
identity and a random-init backbone is probed on un-normalised activations that grow or shrink
layer by layer. Re-estimating the statistics (a forward pass over training images in train mode,
cumulative averages, no gradient, no weight change: "precise BN") gives the random-init floor the
normalisation every trained row has, which is what a fair floor needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``module`` that tracks running statistics."""
    return [m for m in module.modules() if isinstance(m, _BATCHNORMS) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(
    encoder: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    prepare: Callable[[torch.Tensor], torch.Tensor],
    max_images: int,
    device: torch.device | str = "cpu",
) -> int:
    """Replace the running statistics of every BatchNorm layer by their average over training images.

    Runs ``encoder`` on up to ``max_images`` images of ``batches`` (``(uint8 images, labels)``,
    turned into inputs by ``prepare``) with only the BatchNorm layers in train mode and momentum
    ``None`` (an equal-weight average over batches). Weights are untouched; the encoder is left in
    eval mode. Returns the number of images seen (0 when the encoder has no BatchNorm).
    """
    layers = batchnorm_layers(encoder)
    if not layers:
        return 0
    if max_images < 1:
        raise ValueError(f"eval.bn_images must be >= 1, got {max_images}")
    encoder.eval()
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    seen = 0
    try:
        for images, _ in batches:
            images = images[: max_images - seen]
            if len(images) < 2:  # a batch of one has no variance
                break
            encoder(prepare(images.to(device, non_blocking=True)))
            seen += len(images)
            if seen >= max_images:
                break
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
            layer.eval()
    return seen
