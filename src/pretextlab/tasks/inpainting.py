"""Context encoder (Pathak et al. 2016): fill in a hidden region of the image."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from pretextlab.ops.masks import MASK_KINDS, check_mask_fraction, default_border_width, make_masks, overlap_border
from pretextlab.task_info import PretextMetric
from pretextlab.tasks.base import ExtraOptimizer, PretextOutput, PretextTask, TaskConfigError


@dataclass
class InpaintingBatch:
    """One generator pass: everything the losses, the discriminator step and the panel need.

    Images are in normalised space (0 = the dataset mean); masks are ``(B, 1, H, W)`` bool.
    """

    target: torch.Tensor
    masked_input: torch.Tensor
    hole: torch.Tensor
    border: torch.Tensor
    prediction: torch.Tensor
    stage_map: torch.Tensor  # the encoder stage's output on the masked input

    @property
    def filled(self) -> torch.Tensor:
        """The input with the prediction pasted into the hole (what the discriminator judges)."""
        return torch.where(self.hole, self.prediction.to(self.target.dtype), self.target)


def _up_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class InpaintingDecoder(nn.Module):
    """A light up-sampling network: 1×1 projection, then (×2 nearest, conv-BN-ReLU) per octave.

    Widths halve at every octave from ``width`` down to no less than 16; a final 3×3 conv gives
    the image channels. When the stage map's size is not a power-of-two fraction of the image,
    the last map is resized bilinearly to the image size.
    """

    def __init__(self, in_channels: int, map_size: tuple[int, int], image_size: tuple[int, int],
                 width: int = 64, out_channels: int = 3) -> None:
        super().__init__()
        self.image_size = image_size
        octaves = max(0, math.ceil(math.log2(max(image_size[0] / map_size[0], image_size[1] / map_size[1]))))
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, kernel_size=1, bias=False),
                                   nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        channels = width
        for _ in range(octaves):
            next_channels = max(16, channels // 2)
            layers.append(_up_block(channels, next_channels))
            channels = next_channels
        layers.append(nn.Conv2d(channels, out_channels, kernel_size=3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        output = self.layers(features)
        if tuple(output.shape[-2:]) != self.image_size:
            output = nn.functional.interpolate(output, size=self.image_size, mode="bilinear", align_corners=False)
        return output


class InpaintingDiscriminator(nn.Module):
    """A small DCGAN-style critic of (filled image, hole mask) → one real/fake logit.

    It sees the mask as a fourth channel so that it can look where the fill is; real images
    are shown with the same masks, so the mask alone tells it nothing.
    """

    def __init__(self, image_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(image_channels + 1, width, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 2 * width, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * width, 4 * width, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(4 * width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * width, 1),
        )

    def forward(self, images: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.cat([images, hole.to(images.dtype)], dim=1)).squeeze(1)


class InpaintingTask(PretextTask):
    """Predict the hidden pixels from their surroundings (needs spatial maps: ``requires = "convnet"``).

    The hole (``mask`` kind, ``mask_fraction`` of the image) is filled with the dataset mean —
    0 in the normalised space the backbone sees. The backbone's ``encoder_stage`` map (default:
    the last stage) feeds :class:`InpaintingDecoder`, which predicts the whole image; the loss
    only looks at the hole and a thin ``border_width`` ring around it that the input still shows
    (the paper's overlap, 4 px at 128 px, weighted ``border_weight`` = ×10 so the fill blends in).

    Generator loss = ``reconstruction_weight`` · L2 + ``adversarial_weight`` · non-saturating GAN
    loss of :class:`InpaintingDiscriminator` on the filled image (0.999 / 0.001 as in the paper);
    ``adversarial: false`` leaves the L2 term alone (unweighted). The L2 term is the weighted
    mean ``Σ w·(prediction − target)² / Σ w`` over the hole and the border. The base task's loop
    steps both optimisers on every batch: first the generator's, ``task.optimizer`` (backbone +
    decoder + probe groups), then the discriminator's, declared in :meth:`extra_optimizers`: Adam
    with ``discriminator_lr`` and β1 = ``discriminator_beta1`` (2e-4 and 0.5 in the paper). Both lrs
    follow ``task.lr_scaling``.

    Metrics: ``masked_mse`` (plain MSE on the hole, normalised space), ``baseline_mse`` (the same
    for predicting the dataset mean, i.e. 0) and ``relative_mse`` (their ratio; < 1 beats the mean).
    """

    chance_accuracy = None
    requires = "convnet"
    table_order = 10
    pretext_metric = PretextMetric("val_masked_mse", "masked MSE", False)
    # Context encoders have no published ImageNet linear-probe number in the table's setting.
    in_default_sweep = True

    def __init__(
        self,
        mask: str = "random_blocks",
        mask_fraction: float = 0.25,
        border_width: int | None = None,
        border_weight: float = 10.0,
        adversarial: bool = True,
        reconstruction_weight: float = 0.999,
        adversarial_weight: float = 0.001,
        encoder_stage: str | None = None,
        decoder_width: int = 64,
        discriminator_width: int = 32,
        discriminator_lr: float = 2.0e-4,
        discriminator_beta1: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if mask not in MASK_KINDS:
            raise TaskConfigError(f"task.mask={mask!r} is unknown; choose one of {list(MASK_KINDS)}")
        try:
            check_mask_fraction(mask_fraction, key="task.mask_fraction")
        except ValueError as error:
            raise TaskConfigError(str(error)) from None
        if border_width is not None and border_width < 0:
            raise TaskConfigError(f"task.border_width={border_width} must be >= 0 or null (scaled from 4 px at 128 px)")
        if border_weight < 0 or reconstruction_weight <= 0 or adversarial_weight < 0:
            raise TaskConfigError(
                "task.border_weight and task.adversarial_weight must be >= 0 and task.reconstruction_weight > 0, got "
                f"{border_weight}, {adversarial_weight}, {reconstruction_weight}"
            )
        if discriminator_lr <= 0 or not 0.0 <= discriminator_beta1 < 1.0:
            raise TaskConfigError(
                f"task.discriminator_lr={discriminator_lr} must be > 0 and task.discriminator_beta1="
                f"{discriminator_beta1} in [0, 1)"
            )
        stages = self.backbone.stage_names
        if encoder_stage is not None and encoder_stage not in stages:
            raise TaskConfigError(f"task.encoder_stage={encoder_stage!r} is not a backbone stage; choose one of {list(stages)} or null (the last)")
        self.mask_kind = mask
        self.mask_fraction = float(mask_fraction)
        self.border_width = default_border_width(self.image_size) if border_width is None else int(border_width)
        self.border_weight = float(border_weight)
        self.adversarial = bool(adversarial)
        self.reconstruction_weight = float(reconstruction_weight)
        self.adversarial_weight = float(adversarial_weight)
        self.encoder_stage_index = stages.index(encoder_stage) if encoder_stage is not None else len(stages) - 1
        self.discriminator_lr = float(discriminator_lr)
        self.discriminator_beta1 = float(discriminator_beta1)
        channels, map_size = self._stage_shape()
        self.decoder = InpaintingDecoder(channels, map_size, (self.image_size, self.image_size), decoder_width,
                                         out_channels=self.backbone.in_channels)
        self.discriminator = (InpaintingDiscriminator(self.backbone.in_channels, discriminator_width)
                              if self.adversarial else None)

    def _stage_shape(self) -> tuple[int, tuple[int, int]]:
        """Channels and size of the encoder stage for ``image_size`` inputs (one dry run, eval mode)."""
        was_training = self.backbone.training
        self.backbone.eval()  # BN running statistics stay untouched
        with torch.no_grad():
            probe = torch.zeros(1, self.backbone.in_channels, self.image_size, self.image_size)
            stage_map = self.backbone.stage_outputs(probe)[self.encoder_stage_index]
        self.backbone.train(was_training)
        return stage_map.shape[1], (stage_map.shape[2], stage_map.shape[3])

    # -- the generator pass and its losses ------------------------------------------------------
    def generate(self, images: torch.Tensor) -> InpaintingBatch:
        """Mask the batch, fill the hole with the mean, encode, decode."""
        target = self.backbone_input(images)
        batch, _, height, width = target.shape
        hole = make_masks(self.mask_kind, batch, height, width, self.mask_fraction, device=target.device)
        border = overlap_border(hole, self.border_width)
        masked_input = target.masked_fill(hole, 0.0)  # 0 = the dataset mean after normalisation
        stage_map = self.backbone.stage_outputs(masked_input)[self.encoder_stage_index]
        return InpaintingBatch(target, masked_input, hole, border, self.decoder(stage_map), stage_map)

    def generator_losses(self, batch: InpaintingBatch) -> PretextOutput:
        # float32 for every loss: under 16-bit autocast squared errors and their sums lose digits.
        prediction, target = batch.prediction.float(), batch.target.float()
        squared_error = (prediction - target).pow(2)
        hole = batch.hole.float()
        weights = hole + self.border_weight * batch.border.float()
        channels = target.shape[1]
        reconstruction = (squared_error * weights).sum() / (weights.sum() * channels).clamp_min(1.0)
        hidden = (hole.sum() * channels).clamp_min(1.0)
        masked_mse = (squared_error * hole).sum() / hidden
        baseline_mse = (target.pow(2) * hole).sum() / hidden
        metrics = {
            "masked_mse": masked_mse.detach(),
            "baseline_mse": baseline_mse.detach(),
            "relative_mse": (masked_mse / baseline_mse.clamp_min(1e-12)).detach(),
        }
        terms = {"reconstruction": reconstruction}
        # the masked images' pooled features: what the online probe reads under "pretext" (only when
        # the decoder hangs off the last stage, whose pooling is the backbone's feature)
        last_stage = self.encoder_stage_index == len(self.backbone.stage_names) - 1
        pretext_features = self.backbone.pool(batch.stage_map) if last_stage else None
        if self.discriminator is None:
            return PretextOutput(loss=reconstruction, metrics=metrics, terms=terms, pretext_features=pretext_features)
        fake_logits = self.discriminator(batch.filled, batch.hole).float()
        adversarial = nn.functional.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
        terms["adversarial"] = adversarial
        loss = self.reconstruction_weight * reconstruction + self.adversarial_weight * adversarial
        return PretextOutput(loss=loss, metrics=metrics, terms=terms, pretext_features=pretext_features)

    def pretext_step(self, images: torch.Tensor, labels: torch.Tensor) -> PretextOutput:
        """Generator losses; the generator batch rides along for the discriminator's step."""
        generated = self.generate(images)
        output = self.generator_losses(generated)
        output.extra_step_input = generated
        return output

    def discriminator_loss(self, batch: InpaintingBatch) -> torch.Tensor:
        """BCE of the discriminator on real (1) and filled (0) images, the generator detached."""
        assert self.discriminator is not None
        real_logits = self.discriminator(batch.target, batch.hole).float()
        fake_logits = self.discriminator(batch.filled.detach(), batch.hole).float()
        bce = nn.functional.binary_cross_entropy_with_logits
        return 0.5 * (bce(real_logits, torch.ones_like(real_logits)) + bce(fake_logits, torch.zeros_like(fake_logits)))

    def _discriminator_step_loss(self, output: PretextOutput) -> torch.Tensor:
        return self.discriminator_loss(cast(InpaintingBatch, output.extra_step_input))

    # -- optimisation ----------------------------------------------------------------------------
    def extra_optimizers(self) -> list[ExtraOptimizer]:
        """The discriminator's Adam (none with ``adversarial: false``: the task is then a plain one)."""
        if self.discriminator is None:
            return []
        return [ExtraOptimizer(
            name="discriminator",
            parameters=list(self.discriminator.parameters()),
            build=functools.partial(torch.optim.Adam, lr=self.discriminator_lr, betas=(self.discriminator_beta1, 0.999)),
            loss=self._discriminator_step_loss,
            switched_off_by="adversarial=false",
        )]

    # -- panel -----------------------------------------------------------------------------------
    def visualize(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows: masked input, reconstruction pasted into the hole, original — in [0, 1] colours."""
        from pretextlab.viz import stack_rows

        generated = self.generate(images)
        mean = cast(torch.Tensor, self.mean).view(1, -1, 1, 1).to(images)
        std = cast(torch.Tensor, self.std).view(1, -1, 1, 1).to(images)

        def to_colours(normalised: torch.Tensor) -> torch.Tensor:
            return (normalised.float() * std + mean).clamp(0, 1)

        return {"inpainting": stack_rows(to_colours(generated.masked_input), to_colours(generated.filled), images)}
