"""Masked autoencoder (MAE, He et al. 2021): reconstruct the masked patches of a ViT's input."""

from __future__ import annotations

from typing import Any, cast

import torch
from timm.models.vision_transformer import Block
from torch import nn

from pretextlab.backbones.vit import VisionTransformer, init_transformer_weights, sincos_position_embedding
from pretextlab.ops.tokens import (
    denormalize_patches,
    masked_patch_mse,
    mean_prediction_mse,
    normalize_patches,
    num_kept_tokens,
    patchify,
    random_masking,
    restore_order,
    unpatchify,
)
from pretextlab.task_info import PretextMetric
from pretextlab.tasks.base import PretextOutput, PretextTask, TaskConfigError


class MAEDecoder(nn.Module):
    """MAE's light decoder: project, insert mask tokens, a few transformer blocks, predict pixels.

    Takes the encoder's ``(B, 1 + K, D)`` output (CLS first) and the restore indices of the
    masking; returns ``(B, N, patch_values)`` predictions for every patch in the original order.
    """

    pos_embed: torch.Tensor  # a buffer

    def __init__(self, encoder_dim: int, grid_size: tuple[int, int], patch_values: int,
                 dim: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        rows, cols = grid_size
        positions = torch.cat([torch.zeros(1, dim), sincos_position_embedding(rows, cols, dim)])
        self.register_buffer("pos_embed", positions.unsqueeze(0), persistent=False)  # CLS slot first
        self.blocks = nn.ModuleList([Block(dim=dim, num_heads=heads, mlp_ratio=mlp_ratio, qkv_bias=True)
                                     for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.predict = nn.Linear(dim, patch_values)
        self.apply(init_transformer_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, encoded: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(encoded)
        patches = restore_order(hidden[:, 1:], self.mask_token, ids_restore)
        hidden = torch.cat([hidden[:, :1], patches], dim=1) + self.pos_embed.to(hidden.dtype)
        for block in self.blocks:
            hidden = block(hidden)
        return self.predict(self.norm(hidden))[:, 1:]  # drop the CLS slot


class MAETask(PretextTask):
    """Mask ``mask_ratio`` of the patches per sample; the encoder sees only the visible ones.

    Loss: mean squared error over the masked patches only, against the channel-normalised pixels
    of each patch, themselves standardised per patch when ``norm_pix_loss`` (MAE's better
    variant). Logged metrics on the same targets: ``mse`` (the loss) and ``baseline_mse``, the
    error of predicting the batch mean of the masked targets for every masked patch — a
    reconstruction is useful only well below it. The online probe reads the encoder's pooled
    visible tokens (``online_probe_features: pretext``) or, with ``images``, runs the encoder on the
    full, unmasked image.
    """

    requires = "transformer"
    table_order = 60
    pretext_metric = PretextMetric("val_mse", "MSE", False)
    # No published ImageNet linear-probe number in the table's (AlexNet/ResNet-50-era) setting.
    in_default_sweep = True

    def __init__(self, mask_ratio: float = 0.75, norm_pix_loss: bool = True, decoder_dim: int = 64,
                 decoder_depth: int = 2, decoder_heads: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 < mask_ratio < 1.0:
            raise TaskConfigError(f"task.mask_ratio={mask_ratio} must lie strictly between 0 and 1 (MAE: 0.75)")
        if decoder_dim < 1 or decoder_depth < 0 or decoder_heads < 1:
            raise TaskConfigError(
                f"task.decoder_dim={decoder_dim}, decoder_depth={decoder_depth}, decoder_heads={decoder_heads}: "
                "need dim >= 1, depth >= 0, heads >= 1"
            )
        if decoder_dim % decoder_heads or decoder_dim % 4:
            raise TaskConfigError(
                f"task.decoder_dim={decoder_dim} must be a multiple of 4 and of task.decoder_heads={decoder_heads}"
            )
        for needed in ("embed", "encode_tokens", "patch_size", "grid_size"):
            if not hasattr(self.backbone, needed):
                raise TaskConfigError(
                    f"MAETask needs a ViT backbone exposing {needed!r} (pretextlab's backbone=vit_*), "
                    f"got {type(self.backbone).__name__}"
                )
        backbone = self.vit
        num_patches = backbone.grid_size[0] * backbone.grid_size[1]
        kept = num_kept_tokens(num_patches, mask_ratio)
        if kept < 1 or kept == num_patches:
            raise TaskConfigError(
                f"task.mask_ratio={mask_ratio} keeps {kept} of {num_patches} patches; it must keep at least "
                "one and mask at least one: pick a ratio nearer 0.75 or a smaller backbone.patch_size"
            )
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.patch_size: int = backbone.patch_size
        self.decoder = MAEDecoder(
            encoder_dim=backbone.feature_dim,
            grid_size=backbone.grid_size,
            patch_values=self.patch_size**2 * backbone.in_channels,
            dim=decoder_dim,
            depth=decoder_depth,
            heads=decoder_heads,
        )

    @property
    def vit(self) -> VisionTransformer:
        """The backbone with its ViT interface (checked in ``__init__`` by duck typing)."""
        return cast(VisionTransformer, self.backbone)

    def reconstruct(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mask, encode the visible patches, decode all.

        Returns ``predictions (B, N, P)``, ``mask (B, N)`` and the encoder's output on the visible
        tokens ``(B, 1 + K, D)``.
        """
        tokens = self.vit.embed(inputs)
        masked = random_masking(tokens, self.mask_ratio)
        encoded = self.vit.encode_tokens(masked.kept)
        return self.decoder(encoded, masked.ids_restore), masked.mask, encoded

    def targets(self, inputs: torch.Tensor) -> torch.Tensor:
        patches = patchify(inputs, self.patch_size)
        return normalize_patches(patches) if self.norm_pix_loss else patches

    def pretext_step(self, images: torch.Tensor, labels: torch.Tensor) -> PretextOutput:
        inputs = self.backbone_input(images)
        predictions, mask, encoded = self.reconstruct(inputs)
        # float32 for the loss: under 16-bit autocast squared errors and their sums lose digits.
        predictions, targets = predictions.float(), self.targets(inputs.float())
        loss = masked_patch_mse(predictions, targets, mask.float())
        with torch.no_grad():
            baseline = mean_prediction_mse(targets, mask)
        return PretextOutput(loss=loss, metrics={"mse": loss.detach(), "baseline_mse": baseline},
                             pretext_features=self.backbone.pool(encoded))

    def visualize(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        from pretextlab.viz import stack_rows

        inputs = self.backbone_input(images)
        predictions, mask, _ = self.reconstruct(inputs)
        original = patchify(inputs, self.patch_size)
        if self.norm_pix_loss:  # predictions are per-patch standardised: show them at the true patch's scale
            predictions = denormalize_patches(predictions, original)
        visible = mask.unsqueeze(-1) == 0
        pasted = torch.where(visible, original, predictions)  # visible patches as they were, MAE-style
        blanked = torch.where(visible, original, torch.zeros_like(original))  # 0 = the dataset mean

        def to_images(patches: torch.Tensor) -> torch.Tensor:
            channel_normalised = unpatchify(patches, self.patch_size, inputs.shape[1], self.vit.grid_size)
            return channel_normalised * self.std.view(1, -1, 1, 1) + self.mean.view(1, -1, 1, 1)

        return {"mae": stack_rows(to_images(blanked), to_images(pasted), images)}
