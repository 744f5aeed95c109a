"""Colourisation (Zhang et al. 2016): predict the ab colour of every pixel from its lightness L.

The backbone sees only the L channel (built with one input channel); a small dense head on one of
its stage maps predicts, per pixel, either a distribution over the in-gamut ab bins
(``head: classification``, the paper's choice) or the ab values directly (``head: regression``,
the simple alternative that is known to give desaturated colours).

Resolution: the head predicts at its stage's resolution and the prediction is upsampled
(bilinear, into channels-last layout) to the target resolution, ``image size / target_downsample``
(default ¼, as in the paper, whose network predicts 56×56 for 224 px inputs). Targets are the ab channels average-pooled
to that resolution. At 32 px with the default last stage, both the convnet and the CIFAR-stem
ResNet-18 predict at 4×4, upsampled to 8×8 targets.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pretextlab.ops import ab_bins
from pretextlab.ops import lab as lab_conversion
from pretextlab.ops.resize import bilinear_to_channels_last
from pretextlab.task_info import LAB_L_INPUT_KIND, PretextMetric
from pretextlab.tasks.base import PretextOutput, PretextTask, TaskConfigError

log = logging.getLogger(__name__)

HEADS = ("classification", "regression")


def _dense_head(in_channels: int, out_channels: int, hidden: int) -> nn.Module:
    """conv3×3-BN-ReLU → conv1×1 (or a single conv1×1 when ``hidden`` is 0)."""
    if hidden <= 0:
        return nn.Conv2d(in_channels, out_channels, kernel_size=1)
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out_channels, kernel_size=1),
    )


class ColorizationTask(PretextTask):
    """Predict ab from L; classification over quantised ab bins or L2 regression.

    Classification (Zhang et al.): targets soft-encoded over the ``soft_neighbours`` nearest bins
    with a Gaussian of σ = ``soft_sigma``; per-pixel cross-entropy weighted by the class-rebalancing
    weight of the target's nearest bin. The weights come from the empirical bin distribution p of
    the pretraining images, computed when fitting starts (:meth:`fit_prior`), smoothed with a
    Gaussian of σ = ``prior_sigma`` in the ab plane and mixed with uniform at λ = ``rebalance_lambda``.

    Images whose mean chroma is below ``gray_threshold`` (grayscale sources) carry no colour to
    learn and are left out of the loss and the metrics.

    Metrics: ``acc`` (classification: top-1 bin accuracy over valid pixels, against the target's
    nearest bin); in validation also ``ab_mse`` (mean over valid pixels of the squared ab distance
    between the decoded prediction — annealed mean at ``temperature`` for classification — and the
    target), the same error of the constant mean-colour prediction, ``ab_mse_mean_baseline``, and
    (classification) ``acc_mode_baseline``, the accuracy of always predicting p's mode.
    """

    requires = "convnet"
    table_order = 30
    reference_imagenet_linear = 40.0
    input_kind = LAB_L_INPUT_KIND  # the backbone sees the L channel only (PretextTask.backbone_input)
    in_default_sweep = True

    @classmethod
    def pretext_metric_of(cls, config: Mapping[str, Any]) -> PretextMetric | None:
        """Bin accuracy for the classification head; the regression head has no bins, so its ab error."""
        if config.get("head", "classification") == "regression":
            return PretextMetric("val_ab_mse", "ab MSE", False)
        return PretextMetric("val_acc", "acc", True)

    bin_centres: torch.Tensor
    prior: torch.Tensor
    bin_weights: torch.Tensor
    ab_mean: torch.Tensor
    prior_fitted: torch.Tensor

    def __init__(
        self,
        head: str = "classification",
        head_stage: int | str = -1,
        head_hidden: int = 128,
        target_downsample: int = 4,
        ab_grid: float = 10.0,
        soft_neighbours: int = 5,
        soft_sigma: float = 5.0,
        prior_sigma: float = 5.0,
        rebalance_lambda: float = 0.5,
        prior_images: int = 4000,
        temperature: float = 0.38,
        gray_threshold: float = 2.0,
        regression_scale: float = 110.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)  # checks in_channels against input_kind (1: the L channel)
        if head not in HEADS:
            raise TaskConfigError(f"task.head={head!r} is unknown; choose one of {list(HEADS)}")
        if target_downsample < 1 or self.image_size // target_downsample < 1:
            raise TaskConfigError(
                f"task.target_downsample={target_downsample} leaves no target pixels for "
                f"{self.image_size} px images; choose 1 <= target_downsample <= {self.image_size}"
            )
        for key, value in (("soft_sigma", soft_sigma), ("temperature", temperature), ("ab_grid", ab_grid),
                           ("regression_scale", regression_scale)):
            if value <= 0:
                raise TaskConfigError(f"task.{key}={value} must be > 0")
        if not 0.0 <= rebalance_lambda <= 1.0:
            raise TaskConfigError(f"task.rebalance_lambda={rebalance_lambda} must lie in [0, 1]")
        if prior_images < 1:
            raise TaskConfigError(f"task.prior_images={prior_images} must be >= 1")
        self.head_kind = head
        self.stage_index = self._resolve_stage(head_stage)
        self.target_downsample = target_downsample
        self.soft_sigma = soft_sigma
        self.prior_sigma = prior_sigma
        self.rebalance_lambda = rebalance_lambda
        self.prior_images = prior_images
        self.temperature = temperature
        self.gray_threshold = gray_threshold
        self.regression_scale = regression_scale

        centres = ab_bins.in_gamut_ab_bins(ab_grid)
        num_bins = centres.shape[0]
        if not 1 <= soft_neighbours <= num_bins:
            raise TaskConfigError(f"task.soft_neighbours={soft_neighbours} must lie in [1, {num_bins}] "
                                  f"(the number of in-gamut bins at ab_grid={ab_grid})")
        self.soft_neighbours = soft_neighbours
        self.ab_grid = ab_grid
        self.num_bins = num_bins
        self.chance_accuracy = 1.0 / num_bins if head == "classification" else None
        # Persistent buffers: they land in checkpoints, so a resumed or exported model decodes and
        # weighs exactly as it was trained. Until fit_prior runs: uniform weights, zero mean colour.
        self.register_buffer("bin_centres", centres)
        self.register_buffer("prior", torch.full((num_bins,), 1.0 / num_bins))
        self.register_buffer("bin_weights", torch.ones(num_bins))
        self.register_buffer("ab_mean", torch.zeros(2))
        self.register_buffer("prior_fitted", torch.tensor(False))
        self._lattice: ab_bins.BinLattice | None = None  # built on first use, per device

        stage_channels = self.backbone.stage_dims[self.stage_index]
        outputs = num_bins if head == "classification" else 2
        self.head = _dense_head(stage_channels, outputs, head_hidden)
        # Start from the constant prediction (zero weights; the bias is set to the data's mean colour
        # or log-prior in fit_prior): with a random last layer, L2 regression at the shared
        # optimiser's lr 0.05 overshot to ab errors ~100x the mean baseline in the first steps.
        nn.init.zeros_(self._last_conv.weight)
        nn.init.zeros_(self._last_conv.bias)  # type: ignore[arg-type]  # built with bias=True

    @property
    def _last_conv(self) -> nn.Conv2d:
        last = self.head[-1] if isinstance(self.head, nn.Sequential) else self.head
        assert isinstance(last, nn.Conv2d)
        return last

    def _resolve_stage(self, head_stage: int | str) -> int:
        names = list(self.backbone.stage_names)
        if isinstance(head_stage, str):
            if head_stage not in names:
                raise TaskConfigError(f"task.head_stage={head_stage!r} is not a stage of this backbone; "
                                      f"choose one of {names} or an index")
            return names.index(head_stage)
        if not -len(names) <= head_stage < len(names):
            raise TaskConfigError(f"task.head_stage={head_stage} is out of range for stages {names}")
        return head_stage % len(names)

    # -- inputs and targets -----------------------------------------------------------------------
    def _target_size(self, height: int, width: int) -> tuple[int, int]:
        return max(1, height // self.target_downsample), max(1, width // self.target_downsample)

    def _targets(self, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Target ab at reduced resolution ``(B, 2, h, w)`` and the per-image colour mask ``(B,)``."""
        colourful = lab_conversion.chroma(lab).mean(dim=(-2, -1)) >= self.gray_threshold
        target_ab = F.adaptive_avg_pool2d(lab[:, 1:], self._target_size(*lab.shape[-2:]))
        return target_ab, colourful

    # -- the empirical colour distribution --------------------------------------------------------
    def on_fit_start(self) -> None:
        if bool(self.prior_fitted):
            return  # restored from a checkpoint
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "sample_images"):
            log.warning("colorization: no datamodule with a 'pretrain' split; class rebalancing stays uniform")
            return
        # in memory or streamed: only the images the prior uses are read
        self.fit_prior(datamodule.sample_images("pretrain", self.prior_images))

    @torch.no_grad()
    def fit_prior(self, images: torch.Tensor, chunk: int = 500) -> None:
        """Estimate p, the rebalancing weights and the mean colour from uint8 ``(N, 3, H, W)`` images.

        Uses at most ``prior_images`` images, evenly spaced over ``images`` (deterministic, so every
        DDP rank computes the same buffers from the same data), at the target resolution, skipping
        grayscale images. Runs on the module's device in chunks of ``chunk`` images. While the head's
        last layer is still untrained (all-zero weights), its bias is set so that it starts from the
        constant prediction: log p (classification) or the mean colour (regression).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"fit_prior needs (N, 3, H, W) RGB images, got shape {tuple(images.shape)}")
        count = min(self.prior_images, len(images))
        picks = torch.linspace(0, len(images) - 1, count).round().long()
        device = self.bin_centres.device
        counts = torch.zeros(self.num_bins, device=device)
        ab_sum = torch.zeros(2, device=device, dtype=torch.float64)
        pixels = 0
        for part in picks.split(chunk):
            batch = images[part].to(device)
            batch = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()
            target_ab, colourful = self._targets(lab_conversion.rgb_to_lab(batch))
            target_ab = target_ab[colourful]
            if len(target_ab) == 0:
                continue
            counts += ab_bins.bin_histogram(ab_bins.nearest_bin(target_ab, self.bin_centres), self.num_bins)
            ab_sum += target_ab.double().sum(dim=(0, 2, 3))
            pixels += target_ab.shape[0] * target_ab.shape[2] * target_ab.shape[3]
        if pixels == 0:
            log.warning("colorization: every prior image is grayscale; class rebalancing stays uniform")
            return
        self.prior.copy_(ab_bins.smooth_distribution(counts / counts.sum(), self.bin_centres, self.prior_sigma))
        self.bin_weights.copy_(ab_bins.rebalancing_weights(self.prior, self.rebalance_lambda))
        self.ab_mean.copy_((ab_sum / pixels).float())
        self.prior_fitted.fill_(True)
        bias = self._last_conv.bias
        assert bias is not None
        if self._last_conv.weight.any():
            pass  # the head has trained already: leave its bias alone
        elif self.head_kind == "classification":
            bias.copy_(self.prior.clamp(min=1e-8).log())
        else:
            bias.copy_(self.ab_mean / self.regression_scale)
        log.info("colorization prior from %d images (%d colour pixels): weights %.2f..%.2f, mean ab (%.1f, %.1f)",
                 count, pixels, self.bin_weights.min(), self.bin_weights.max(), *self.ab_mean.tolist())

    # -- the step ---------------------------------------------------------------------------------
    def _predict(self, gray_input: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Head output upsampled to ``size``, channels last ``(B, h, w, Q|2)`` float32, and the
        pooled last stage (for the probe).

        Channels last because every per-pixel reduction over the bins (log-softmax, gather, argmax,
        annealed mean) then runs along the contiguous dimension.
        """
        stages = self.backbone.stage_outputs(gray_input)
        raw = self.head(stages[self.stage_index]).float()  # float32 from here on, also under bf16 autocast
        return bilinear_to_channels_last(raw, size), self.backbone.pool(stages[-1])

    def _bin_lattice(self) -> ab_bins.BinLattice:
        """The bins' lattice on the bins' device, built once there (building it syncs with a GPU)."""
        if self._lattice is None or self._lattice.table.device != self.bin_centres.device:
            self._lattice = ab_bins.bin_lattice(self.bin_centres, self.ab_grid)
        return self._lattice

    def decode(self, prediction: torch.Tensor) -> torch.Tensor:
        """Head output ``(B, h, w, Q|2)`` → ab ``(B, 2, h, w)`` (annealed mean for classification)."""
        if self.head_kind == "classification":
            return ab_bins.annealed_mean(prediction, self.bin_centres, self.temperature, dim=-1)
        return prediction.float().permute(0, 3, 1, 2) * self.regression_scale

    def pretext_step(self, images: torch.Tensor, labels: torch.Tensor) -> PretextOutput:
        lab = lab_conversion.rgb_to_lab(images)
        target_ab, colourful = self._targets(lab)
        target_size = (target_ab.shape[-2], target_ab.shape[-1])
        prediction, features = self._predict(lab_conversion.scaled_lightness(lab[:, :1]), target_size)  # (B, h, w, Q|2)
        valid = colourful.float()[:, None, None].expand(-1, *target_size)  # (B, h, w)
        valid_count = valid.sum().clamp(min=1.0)
        metrics: dict[str, torch.Tensor] = {}

        if self.head_kind == "classification":
            indices, soft_weights = ab_bins.soft_encode(target_ab, self.bin_centres, self.soft_neighbours,
                                                      self.soft_sigma, lattice=self._bin_lattice())  # (B, h, w, K)
            cross_entropy, predicted_bin = ab_bins.sparse_soft_cross_entropy(prediction, indices, soft_weights)
            nearest = indices[..., 0]
            pixel_weights = self.bin_weights[nearest]  # rebalancing by the nearest bin
            loss = (cross_entropy * pixel_weights * valid).sum() / valid_count
            hits = (predicted_bin == nearest).float()
            metrics["acc"] = (hits * valid).sum() / valid_count
            if not self.training:
                mode_hits = (nearest == self.prior.argmax()).float()
                metrics["acc_mode_baseline"] = (mode_hits * valid).sum() / valid_count
        else:
            squared = (prediction.permute(0, 3, 1, 2) - target_ab / self.regression_scale).pow(2).mean(dim=1)
            loss = (squared * valid).sum() / valid_count

        if not self.training:
            # Decoding (an annealed softmax over every bin of every pixel) costs as much as the loss
            # itself, so the colour error is measured in validation only.
            with torch.no_grad():
                ab_error = (self.decode(prediction.detach()) - target_ab).pow(2).sum(dim=1)
                metrics["ab_mse"] = (ab_error * valid).sum() / valid_count
                baseline_error = (self.ab_mean.view(1, 2, 1, 1) - target_ab).pow(2).sum(dim=1)
                metrics["ab_mse_mean_baseline"] = (baseline_error * valid).sum() / valid_count
        return PretextOutput(loss=loss, metrics=metrics, clean_features=features)

    def visualize(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gray input / predicted colours (annealed mean, full-resolution L) / original."""
        from pretextlab.viz import stack_rows

        lab = lab_conversion.rgb_to_lab(images)
        lightness = lab[:, :1]
        prediction, _ = self._predict(lab_conversion.scaled_lightness(lightness), self._target_size(*images.shape[-2:]))
        # like the paper: upsample the predicted ab to full size and pair it with the input's own L
        ab = F.interpolate(self.decode(prediction), size=images.shape[-2:], mode="bilinear", align_corners=False)
        gray = lab_conversion.lab_to_rgb(torch.cat([lightness, torch.zeros_like(ab)], dim=1))
        colourised = lab_conversion.lab_to_rgb(torch.cat([lightness, ab], dim=1))
        return {"colorization": stack_rows(gray, colourised, images)}
