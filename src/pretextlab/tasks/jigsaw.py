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
from pretextlab.tasks.base import PretextOutput, PretextTask, TaskConfigError, accuracy, mlp_head

log = logging.getLogger(__name__)


class JigsawTask(PretextTask):
    """Context-free network: a Siamese tile encoder (the backbone) shared by all grid² tiles.

    All ``B × grid²`` tiles of a batch go through the backbone in ONE forward pass; the grid²
    pooled feature vectors are concatenated in puzzle-position order and an MLP classifies which
    of the ``num_permutations`` permutations (chosen by :func:`max_hamming_permutations`) shuffled
    them. Chance is ``1 / num_permutations``.

    ``tile_input_size``: at 32 px a 3×3 grid gives 8 px tiles, which the convnet's three
    max-pools shrink to 1 px, so its last block only ever sees single pixels during pretraining
    while the probe later feeds it whole 32 px images. Tiles can therefore be resized (bilinear)
    to ``tile_input_size`` px before the encoder, as the public PyTorch reimplementation resizes
    its 64 px tiles to 75 px. The default is ``null`` (tiles as cut) because the resize did not
    pay off where we measured it: synthetic data, 1,000 images, 3 epochs, convnet, N = 100, seeds
    0 / 1 — linear probe 0.512 / 0.412 with 8 px tiles vs 0.402 / 0.410 resized to 16 px (pretext
    val acc 0.35 / 0.43 vs 0.44 / 0.52; random init 0.492 on seed 0), and the 16 px run pretrains
    about 1.6× slower. Try it on real data, where tiles carry more detail.

    Tiles are standardised on their own (``normalize_tiles``) or, if that is off, with the
    dataset's channel statistics like whole images. Evaluation runs the backbone on whole images
    with the default channel normalisation; the online probe reads the mean of each puzzle's tile
    features (``online_probe_features: pretext``) or, with ``images``, whole images too.

    The task needs a convolutional backbone: tiles are small and of a size unrelated to the
    dataset's image size, which convnets accept at any size but fixed-size ViTs do not.
    """

    requires = "convnet"
    # Buffers, annotated so that type checkers see tensors rather than "Tensor | Module".
    permutations: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        grid: int = 3,
        num_permutations: int = 100,
        tile_ratio: float = 0.8,
        normalize_tiles: bool = True,
        grayscale_fraction: float = 0.3,
        color_jitter_px: int = 1,
        tile_input_size: int | None = None,
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
        if tile_input_size is not None and tile_input_size < 1:
            raise TaskConfigError(
                f"jigsaw tile_input_size={tile_input_size} must be a positive size in px, or null to feed tiles as cut"
            )
        self.grid = grid
        self.num_permutations = num_permutations
        self.tile_ratio = tile_ratio
        self.normalize_tiles = normalize_tiles
        self.grayscale_fraction = grayscale_fraction
        self.color_jitter_px = color_jitter_px
        self.tile_input_size = tile_input_size
        # An instance attribute: chance depends on the configured set size.
        self.chance_accuracy = 1.0 / num_permutations
        permutations = max_hamming_permutations(num_permutations, grid=grid)
        # Not persistent: the set is a deterministic function of (grid, N) and comes from the cache.
        self.register_buffer("permutations", permutations, persistent=False)
        self.permutation_stats = hamming_stats(permutations)
        log.info(
            "jigsaw: %d permutations of a %dx%d grid, Hamming distance min %d, mean %.3f; tiles %d px in %d px cells",
            num_permutations, grid, grid, self.permutation_stats.minimum, self.permutation_stats.mean,
            self.geometry.tile, self.geometry.cell,
        )
        tiles = grid * grid
        self.head = mlp_head(tiles * self.backbone.feature_dim, num_permutations, head_hidden)

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
