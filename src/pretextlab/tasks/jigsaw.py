"""Jigsaw puzzles (Noroozi & Favaro 2016): which of N permutations shuffled the grid² tiles?"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from pretextlab.ops.augment import normalize
from pretextlab.ops.permutations import hamming_stats, max_hamming_permutations, validate_request
from pretextlab.ops.tiles import (
    assemble_tiles,
    extract_tiles,
    make_jigsaw_puzzles,
    permute_tiles,
    random_grayscale,
    tile_geometry,
)
from pretextlab.task_info import PretextMetric
from pretextlab.tasks.base import (
    PretextOutput,
    PretextTask,
    TaskConfigError,
    accuracy,
    mlp_head,
    smallest_input_size,
)
from pretextlab.tasks.config_checks import Feed, TaskConfigCheck
from pretextlab.validation import problem

log = logging.getLogger(__name__)


class JigsawTask(PretextTask):
    """Context-free network: a Siamese tile encoder (the backbone) shared by all grid² tiles.

    All ``B × grid²`` tiles of a batch go through the backbone in ONE forward pass; the grid²
    pooled feature vectors are concatenated in puzzle-position order and an MLP classifies which
    of the ``num_permutations`` permutations (chosen by :func:`max_hamming_permutations`) shuffled
    them. Chance is ``1 / num_permutations``.

    ``tile_input_size``: at 32 px a 2×2 grid gives 13 px tiles, which the convnet's three
    max-pools shrink to 1×1 maps in blocks 3 and 4 during pretraining, while evaluation feeds
    whole 32 px images (4×4 there): the deep blocks would be trained on a geometry they never see
    again. ``auto`` (default) resizes tiles (bilinear) to the smallest size at which every stage
    map of the backbone is at least ``min_stage_map`` px (16 px for the convnet: maps 8/4/2/2),
    found by a dummy forward; an integer fixes the size, ``null`` feeds tiles as cut. (The public
    PyTorch reimplementation likewise resizes its 64 px tiles to 75 px.)

    Shortcuts: tiles are cut from the training crop, so the crop must not be zero-padded (every
    corner tile would show a zero strip that tells where it sat): ``crop_padding_mode`` is
    ``reflect`` in ``conf/task/jigsaw.yaml``. ``python -m pretextlab.audit`` measures what is left.

    Tiles are standardised on their own (``normalize_tiles``; per colour channel with
    ``normalize_per_channel``, as the original code does; the constructor default is off, as
    configs written before the key existed were trained, ``conf/task/jigsaw.yaml`` turns it on) or, if that is off, with the dataset's
    channel statistics like whole images. Evaluation runs the backbone on whole images
    with the default channel normalisation; the online probe reads the mean of each puzzle's tile
    features (``online_probe_features: pretext``) or, with ``images``, whole images too.

    The task needs a convolutional backbone: tiles are small and of a size unrelated to the
    dataset's image size, which convnets accept at any size but fixed-size ViTs do not.
    """

    requires = "convnet"
    table_order = 40
    pretext_metric = PretextMetric("val_acc", "acc", True)
    reference_imagenet_linear = 45.0
    in_default_sweep = True
    # Buffers, annotated so that type checkers see tensors rather than "Tensor | Module".
    permutations: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def config_problems(cls, check: TaskConfigCheck) -> list[str]:
        """The grid against the image size and its permutation count (the rules live with the ops), and
        the tiles it feeds the backbone against the smallest input the backbone takes."""
        prefix, image_size = check.prefix, check.image_size
        grid = check.setting("grid")
        ratio, jitter = float(check.setting("tile_ratio")), int(check.setting("color_jitter_px"))
        problems: list[str] = []
        count = check.setting("num_permutations")
        if count is not None:
            try:
                validate_request(count, grid)
            except ValueError as error:
                problems.append(problem(f"{prefix}num_permutations", count, str(error)))
        try:
            geometry = tile_geometry(image_size, image_size, grid, ratio, jitter)
        except ValueError as error:
            return [problem(f"{prefix}grid", grid, str(error)), *problems]

        def tile_side(size: int, cells: int) -> int:
            try:
                return tile_geometry(size, size, cells, ratio, jitter).tile
            except ValueError:
                return 0

        resize = check.setting("tile_input_size")
        if resize == "auto":
            return problems  # the task sizes its tiles to what every stage of the backbone can take
        if resize is not None:
            return problems + check.feed_problems([
                Feed(f"tiles resized to {resize} px", int(resize), f"{prefix}tile_input_size", resize,
                     lambda needed: f"use {prefix}tile_input_size >= {needed}")])

        def fixes(needed: int) -> str:
            ways = []
            larger = next((size for size in range(image_size + 1, 64 * needed * grid)
                           if tile_side(size, grid) >= needed), None)
            if larger is not None:
                ways.append(f"data.source.image_size >= {larger}")
            smaller_grid = next((g for g in range(grid - 1, 1, -1) if tile_side(image_size, g) >= needed), None)
            if smaller_grid is not None:
                ways.append(f"{prefix}grid={smaller_grid}")
            ways.append(f"{prefix}tile_input_size={needed} (tiles resized)")
            return "use " + ", or ".join(ways)

        what = f"{geometry.tile} px tiles (a {grid}x{grid} grid on {image_size} px images, tile_ratio {ratio:g})"
        return problems + check.feed_problems([Feed(what, geometry.tile, "data.source.image_size", image_size, fixes)])

    def __init__(
        self,
        grid: int = 3,
        num_permutations: int = 100,
        tile_ratio: float = 0.8,
        normalize_tiles: bool = True,
        grayscale_fraction: float = 0.3,
        color_jitter_px: int = 1,
        tile_input_size: int | str | None = "auto",
        min_stage_map: int = 2,
        normalize_per_channel: bool = False,
        head_hidden: int = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        try:
            # The image check first: its message names the image size, the likelier culprit.
            self.geometry = tile_geometry(self.image_size, self.image_size, grid, tile_ratio, color_jitter_px)
            validate_request(num_permutations, grid)
        except ValueError as error:
            raise TaskConfigError(str(error)) from error
        if not 0.0 <= grayscale_fraction <= 1.0:
            raise TaskConfigError(f"jigsaw grayscale_fraction={grayscale_fraction} must be in [0, 1] (original: 0.3)")
        self.tile_input_size = self._resolve_tile_input_size(tile_input_size, min_stage_map)
        self.grid = grid
        self.num_permutations = num_permutations
        self.tile_ratio = tile_ratio
        self.normalize_tiles = normalize_tiles
        self.normalize_per_channel = normalize_per_channel
        self.grayscale_fraction = grayscale_fraction
        self.color_jitter_px = color_jitter_px
        # An instance attribute: chance depends on the configured set size.
        self.chance_accuracy = 1.0 / num_permutations
        permutations = max_hamming_permutations(num_permutations, grid=grid)
        # Not persistent: the set is a deterministic function of (grid, N) and comes from the cache.
        self.register_buffer("permutations", permutations, persistent=False)
        self.permutation_stats = hamming_stats(permutations)
        log.info(
            "jigsaw: %d permutations of a %dx%d grid, Hamming distance min %d, mean %.3f; tiles %d px in %d px "
            "cells, fed at %s px", num_permutations, grid, grid, self.permutation_stats.minimum,
            self.permutation_stats.mean, self.geometry.tile, self.geometry.cell, self.tile_input_size or self.geometry.tile,
        )
        tiles = grid * grid
        self.head = mlp_head(tiles * self.backbone.feature_dim, num_permutations, head_hidden)

    def _resolve_tile_input_size(self, size: int | str | None, min_stage_map: int) -> int | None:
        """``auto`` → the smallest size that keeps every stage map >= ``min_stage_map`` px; else checked."""
        if size == "auto":
            if min_stage_map < 1:
                raise TaskConfigError(f"jigsaw min_stage_map={min_stage_map} must be >= 1")
            return smallest_input_size(self.backbone, min_stage_map, self.geometry.tile,
                                       limit=max(4 * self.image_size, 64))
        if size is not None and (isinstance(size, str) or size < 1):
            raise TaskConfigError(
                f"jigsaw tile_input_size={size!r} must be a positive size in px, auto, or null to feed tiles as cut"
            )
        return size

    def encoder_input(self, puzzles: torch.Tensor) -> torch.Tensor:
        """``(B, K, C, t, t)`` shuffled tiles → ``(B·K, C, s, s)`` backbone input."""
        flat = puzzles.flatten(0, 1)
        if not self.normalize_tiles:
            flat = normalize(flat, self.mean, self.std)
        size = self.tile_input_size
        if size is not None and size != flat.shape[-1]:
            flat = nn.functional.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False)
        return flat

    def pretext_step(self, images: torch.Tensor, labels: torch.Tensor) -> PretextOutput:
        puzzles, targets = make_jigsaw_puzzles(
            images,
            self.permutations,
            grid=self.grid,
            tile_ratio=self.tile_ratio,
            grayscale_fraction=self.grayscale_fraction,
            jitter_px=self.color_jitter_px,
            normalize=self.normalize_tiles,
            per_channel=self.normalize_per_channel,
        )
        batch, tiles = puzzles.shape[:2]
        features = self.backbone(self.encoder_input(puzzles))  # one pass over all B·K tiles
        per_puzzle = features.view(batch, tiles, features.shape[-1])
        logits = self.head(per_puzzle.flatten(1))
        loss = nn.functional.cross_entropy(logits, targets)
        return PretextOutput(loss=loss, metrics={"acc": accuracy(logits, targets)},
                             pretext_features=per_puzzle.mean(dim=1))

    def visualize(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows: the original, its tiles in place (gaps, grayscale, jitter visible), the shuffled puzzle."""
        from pretextlab.viz import stack_rows

        height, width = images.shape[-2:]
        tiles = extract_tiles(
            random_grayscale(images, self.grayscale_fraction), self.grid, self.tile_ratio, self.color_jitter_px
        )
        targets = torch.randint(0, self.num_permutations, (images.shape[0],), device=images.device)
        shuffled = permute_tiles(tiles, self.permutations[targets])

        def as_image(layout: torch.Tensor) -> torch.Tensor:
            mosaic = assemble_tiles(layout, self.grid)
            return nn.functional.interpolate(mosaic, size=(height, width), mode="nearest")

        return {"jigsaw": stack_rows(images, as_image(tiles), as_image(shuffled))}
