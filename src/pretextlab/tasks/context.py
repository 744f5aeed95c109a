"""Context prediction (relative patch location, Doersch et al. 2015): where is the second patch?"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pretextlab.ops.augment import to_grayscale
from pretextlab.ops.patches import (
    NUM_NEIGHBOURS,
    PatchLayout,
    PatchPairs,
    default_patch_layout,
    drop_color_channels,
    project_out_green_magenta,
    sample_patch_pairs,
)
from pretextlab.task_info import PretextMetric
from pretextlab.tasks.base import PretextOutput, PretextTask, TaskConfigError, accuracy, mlp_head
from pretextlab.tasks.config_checks import Feed, TaskConfigCheck
from pretextlab.validation import problem


class ContextTask(PretextTask):
    """Classify which of the 8 neighbours of a centre patch the second patch is (chance 1/8).

    Both patches of every pair go through the backbone in ONE forward pass over ``2 × pairs``
    (a shared, Siamese encoder); the two pooled feature vectors are concatenated and an MLP
    predicts the neighbour position. ``pairs_per_image`` pairs are drawn from every image.

    Patches smaller than ``min_input_size`` are upsampled (bilinear) to that size before the
    backbone: a 32 px image gives 8 px patches, which the convnet's three max-pools shrink to
    1×1 and a ResNet with the ImageNet stem (stride 32) reduces to a single pixel made mostly of
    zero padding, leaving the deeper stages almost no spatial signal to work with. A
    non-convolutional backbone (fixed token grid) gets its patches resized to ``image_size``.
    Evaluation runs the backbone on whole images; the online probe reads the mean of each image's
    patch features (``online_probe_features: pretext``) or, with ``images``, whole images too.

    Room to move: the layout is cut from images resized (bilinear) up to ``min_cut_size`` px when
    they are smaller, and the default layout leaves ``layout_room`` px of free play (``None``: an
    eighth of the cut size) for its random origin. (The constructor's defaults, 0 and 0, are the
    old geometry, so that configs written before these keys existed rebuild the same task;
    ``conf/task/context.yaml`` sets 64 and an eighth.) At 32 px the scaled original layout (patch 8,
    gap 3, jitter 1) fills the image exactly, so the centre patch always sat on the same pixels
    and each label was one fixed absolute position; at 64 px with 8 px of room the layout is
    14 / 6 / 1 px and its origin takes 9 × 9 positions. The training crop is reflect-padded
    (``crop_padding_mode`` in ``conf/task/context.yaml``): zero padding marked the neighbour
    patches, never the centre, and so gave the label away (``python -m pretextlab.audit``).

    Chromatic-aberration countermeasures (the network must not read absolute position off colour
    fringes): ``color_drop`` (per patch, 2 of 3 channels become Gaussian noise),
    ``grayscale_fraction`` (share of pairs turned grey), ``project_green_magenta``.
    """

    chance_accuracy = 1.0 / NUM_NEIGHBOURS
    requires = "any"
    table_order = 20
    pretext_metric = PretextMetric("val_acc", "acc", True)
    reference_imagenet_linear = 35.0
    in_default_sweep = True

    @classmethod
    def config_problems(cls, check: TaskConfigCheck) -> list[str]:
        """The 3x3 patch layout against the image size, and the patches it feeds the backbone."""
        prefix = check.prefix
        options = {key: check.setting(key) for key in ("min_cut_size", "layout_room", "patch_size", "gap", "jitter")}
        try:
            cut_size, layout = cls.plan_layout(check.image_size, **options)
        except TaskConfigError as error:
            key = next((k for k in ("patch_size", "gap", "jitter", "layout_room", "min_cut_size")
                        if options[k] is not None and k in str(error)), "patch_size")
            return [problem(f"{prefix}{key}", options[key], str(error))]
        if check.backbone is None or not check.backbone.is_convolutional:
            return []  # a transformer gets every patch resized to the image size
        upsample_to = int(check.setting("min_input_size") or 0)
        if upsample_to > layout.patch:
            what = f"{layout.patch} px patches upsampled to {upsample_to} px ({prefix}min_input_size)"
            return check.feed_problems([Feed(what, upsample_to, f"{prefix}min_input_size", upsample_to,
                                             lambda needed: f"use {prefix}min_input_size >= {needed}")])
        what = f"{layout.patch} px patches as cut ({cut_size} px cut; {prefix}min_input_size={upsample_to} " \
               "does not upsample them)"
        return check.feed_problems([Feed(what, layout.patch, f"{prefix}min_input_size", upsample_to,
                                         lambda needed: f"use {prefix}min_input_size >= {needed} (patches are "
                                                        f"upsampled to it), or a larger {prefix}patch_size / "
                                                        "data.source.image_size")])

    @staticmethod
    def plan_layout(image_size: int, min_cut_size: int = 0, layout_room: int | None = 0,
                    patch_size: int | None = None, gap: int | None = None,
                    jitter: int | None = None) -> tuple[int, PatchLayout]:
        """The cut size and the 3x3 patch layout for ``image_size`` px images (the validator asks
        this too, so the config check and the training step cannot disagree)."""
        if min_cut_size < 0:
            raise TaskConfigError(f"task.min_cut_size={min_cut_size} must be >= 0 (0: cut at the image size)")
        cut_size = max(int(image_size), int(min_cut_size))
        room = cut_size // 8 if layout_room is None else int(layout_room)
        if not 0 <= room < cut_size:
            raise TaskConfigError(f"task.layout_room={layout_room} must lie in [0, {cut_size}) px")
        span = cut_size - room
        default = default_patch_layout(span) if span >= 11 else PatchLayout(1, 3, 1)
        layout = PatchLayout(
            patch=default.patch if patch_size is None else int(patch_size),
            gap=default.gap if gap is None else int(gap),
            jitter=default.jitter if jitter is None else int(jitter),
        )
        try:
            layout.validate(cut_size, cut_size)
        except ValueError as error:
            raise TaskConfigError(
                f"task=context: {error} (set task.patch_size / task.gap / task.jitter, or null for the "
                f"defaults scaled to the {cut_size} px cut size)"
            ) from error
        return cut_size, layout

    def __init__(
        self,
        patch_size: int | None = None,
        gap: int | None = None,
        jitter: int | None = None,
        pairs_per_image: int = 2,
        min_input_size: int = 16,
        min_cut_size: int = 0,
        layout_room: int | None = 0,
        color_drop: bool = False,
        color_drop_noise: float = 0.01,
        grayscale_fraction: float = 0.0,
        project_green_magenta: bool = True,
        head_hidden: int = 512,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cut_size, self.layout = self.plan_layout(self.image_size, min_cut_size, layout_room,
                                                      patch_size, gap, jitter)
        if pairs_per_image < 1:
            raise TaskConfigError(f"task.pairs_per_image={pairs_per_image} must be >= 1")
        if min_input_size < 0:
            raise TaskConfigError(f"task.min_input_size={min_input_size} must be >= 0 (0: no upsampling)")
        if not 0.0 <= grayscale_fraction <= 1.0:
            raise TaskConfigError(f"task.grayscale_fraction={grayscale_fraction} must lie in [0, 1]")
        if color_drop_noise < 0:
            raise TaskConfigError(f"task.color_drop_noise={color_drop_noise} must be >= 0")
        uses_color = color_drop or grayscale_fraction > 0 or project_green_magenta
        if uses_color and self.backbone.in_channels != 3:
            raise TaskConfigError(
                f"colour countermeasures need RGB input but the backbone has {self.backbone.in_channels} "
                "channels; set task.color_drop=false, task.grayscale_fraction=0, task.project_green_magenta=false"
            )
        self.pairs_per_image = int(pairs_per_image)
        self.min_input_size = int(min_input_size)
        # Transformers (fixed patch grid / position embeddings) get patches at the image size.
        self.input_size = self.min_input_size if self.backbone.is_convolutional else self.image_size
        self.color_drop = bool(color_drop)
        self.color_drop_noise = float(color_drop_noise)
        self.grayscale_fraction = float(grayscale_fraction)
        self.project_green_magenta = bool(project_green_magenta)
        self.head = mlp_head(2 * self.backbone.feature_dim, NUM_NEIGHBOURS, head_hidden)

    def pair_inputs(self, pairs: PatchPairs) -> torch.Tensor:
        """``(2N, C, s, s)`` backbone input: centres then neighbours, countermeasures applied."""
        patches = torch.cat([pairs.centre, pairs.neighbour])  # [0, 1] colours
        if self.grayscale_fraction > 0:
            # Both patches of a pair share the decision: a grey centre with a colour neighbour
            # would be an odd input the paper never showed.
            grey_pair = torch.rand(len(pairs.labels), device=patches.device) < self.grayscale_fraction
            grey = grey_pair.repeat(2)[:, None, None, None]
            patches = torch.where(grey, to_grayscale(patches), patches)
        if self.project_green_magenta:
            patches = project_out_green_magenta(patches)
        patches = self.backbone_input(patches)  # channel normalisation, as for whole images
        if self.color_drop:
            # After normalisation, so that the noise of the dropped channels sits at the dataset mean.
            patches = drop_color_channels(patches, self.color_drop_noise)
        if patches.shape[-1] < self.input_size or not self.backbone.is_convolutional:
            patches = nn.functional.interpolate(
                patches, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
        return patches

    def cut_images(self, images: torch.Tensor) -> torch.Tensor:
        """The images the layout is cut from: resized up to ``cut_size`` px when smaller."""
        if images.shape[-1] == self.cut_size and images.shape[-2] == self.cut_size:
            return images
        return nn.functional.interpolate(images, size=(self.cut_size, self.cut_size), mode="bilinear",
                                         align_corners=False)

    def pretext_step(self, images: torch.Tensor, labels: torch.Tensor) -> PretextOutput:
        pairs = sample_patch_pairs(self.cut_images(images), self.layout, self.pairs_per_image)
        features = self.backbone(self.pair_inputs(pairs))  # one forward over 2 × pairs
        centre_features, neighbour_features = features.chunk(2)
        logits = self.head(torch.cat([centre_features, neighbour_features], dim=1))
        loss = nn.functional.cross_entropy(logits.float(), pairs.labels)
        return PretextOutput(loss=loss, metrics={"acc": accuracy(logits, pairs.labels)},
                             pretext_features=_per_image_mean(features, pairs.image_index.repeat(2), len(images)))

    def visualize(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Row 1: the image with the centre (red) and neighbour (green) outlined; rows 2–3: the patches."""
        from pretextlab.viz import stack_rows

        images = self.cut_images(images)
        pairs = sample_patch_pairs(images, self.layout, 1)
        size = images.shape[-2:]
        outlined = images.clone()
        for yx, colour in ((pairs.centre_yx, (1.0, 0.0, 0.0)), (pairs.neighbour_yx, (0.0, 1.0, 0.0))):
            border = _outline_mask(yx, self.layout.patch, size)  # (N, 1, H, W)
            outlined = torch.where(border, outlined.new_tensor(colour).view(1, 3, 1, 1), outlined)
        centre = nn.functional.interpolate(pairs.centre, size=size, mode="nearest")
        neighbour = nn.functional.interpolate(pairs.neighbour, size=size, mode="nearest")
        return {"context_pairs": stack_rows(outlined, centre, neighbour)}


def _per_image_mean(features: torch.Tensor, image_index: torch.Tensor, num_images: int) -> torch.Tensor:
    """``(N, D)`` patch features of images ``image_index`` ``(N,)`` → ``(B, D)`` per-image means."""
    sums = features.new_zeros(num_images, features.shape[-1]).index_add_(0, image_index, features)
    counts = torch.bincount(image_index, minlength=num_images).clamp(min=1).to(features.dtype)
    return sums / counts[:, None]


def _outline_mask(top_left: torch.Tensor, patch: int, size: torch.Size) -> torch.Tensor:
    """``(N, 1, H, W)`` bool: the one-pixel outline just outside each ``patch``-sized square."""
    height, width = size
    rows = torch.arange(height, device=top_left.device)[None, :, None]
    cols = torch.arange(width, device=top_left.device)[None, None, :]
    y0, x0 = top_left[:, 0, None, None] - 1, top_left[:, 1, None, None] - 1
    y1, x1 = y0 + patch + 1, x0 + patch + 1
    inside_outer = (rows >= y0) & (rows <= y1) & (cols >= x0) & (cols <= x1)
    inside_inner = (rows > y0) & (rows < y1) & (cols > x0) & (cols < x1)
    return (inside_outer & ~inside_inner)[:, None]
