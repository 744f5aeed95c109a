"""Vision Transformer (Dosovitskiy et al. 2021) from timm parts, shaped for MAE and for probing.

Built from ``timm.layers.PatchEmbed`` and ``timm.models.vision_transformer.Block`` rather than
timm's whole ``VisionTransformer`` so that the encoder can run on any subset of the patch tokens
(MAE feeds it only the visible ones) and report the token sequence after every block.
"""

from __future__ import annotations

import torch
from timm.layers import PatchEmbed
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from pretextlab.backbones import register_backbone
from pretextlab.backbones.base import Backbone

POOLING_MODES = ("mean", "cls")


def init_transformer_weights(module: nn.Module) -> None:
    """MAE's initialisation: Xavier-uniform linear layers, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def sincos_position_embedding(rows: int, cols: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding ``(rows * cols, dim)``, row-major like the patches."""
    return build_sincos2d_pos_embed([rows, cols], dim=dim)


class VisionTransformer(Backbone):
    """A ViT with a CLS token and fixed 2-D sine-cosine position embeddings (as in MAE).

    Stages are the blocks: ``block1`` … ``blockN``, each a ``(B, 1 + N, D)`` token sequence with the
    CLS token first; the last stage goes through the final LayerNorm. A stage is pooled by the mean
    of its patch tokens (``pool="mean"``, MAE's fine-tuning choice) or by its CLS token
    (``pool="cls"``); every stage's feature dimension is ``dim``.

    For masked image modelling, :meth:`embed` gives the patch tokens with their position
    embeddings and :meth:`encode_tokens` runs the blocks on any subset of them.
    """

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,
        dim: int = 128,
        depth: int = 6,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        in_channels: int = 3,
        pool: str = "mean",
    ) -> None:
        super().__init__()
        if min(image_size, patch_size, dim, depth, heads, in_channels) < 1:
            raise ValueError(
                "vit needs image_size, patch_size, dim, depth, heads and in_channels >= 1, got "
                f"{image_size}, {patch_size}, {dim}, {depth}, {heads}, {in_channels}"
            )
        if image_size % patch_size:
            raise ValueError(
                f"vit: image_size={image_size} is not a multiple of patch_size={patch_size}; "
                "choose a patch size that divides the image size (e.g. 4 for 32 px)"
            )
        if dim % heads:
            raise ValueError(f"vit: dim={dim} must be a multiple of heads={heads}")
        if dim % 4:
            raise ValueError(f"vit: dim={dim} must be a multiple of 4 (2-D sine-cosine position embedding)")
        if pool not in POOLING_MODES:
            raise ValueError(f"vit: pool={pool!r} is not one of {list(POOLING_MODES)}")
        self.in_channels = in_channels
        self.image_size = image_size
        self.patch_size = patch_size
        self.dim = dim
        self.pooling = pool
        self.build_config = {
            "name": "vit",
            "image_size": image_size,
            "patch_size": patch_size,
            "dim": dim,
            "depth": depth,
            "heads": heads,
            "mlp_ratio": mlp_ratio,
            "in_channels": in_channels,
            "pool": pool,
        }
        self.patch_embed = PatchEmbed(img_size=image_size, patch_size=patch_size, in_chans=in_channels,
                                      embed_dim=dim)
        rows, cols = self.patch_embed.grid_size
        self.grid_size: tuple[int, int] = (int(rows), int(cols))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # Fixed, not learned (as in MAE): a buffer rebuilt from the config, so not saved.
        self.register_buffer("pos_embed", sincos_position_embedding(rows, cols, dim).unsqueeze(0),
                             persistent=False)
        self.blocks = nn.ModuleList(
            [Block(dim=dim, num_heads=heads, mlp_ratio=mlp_ratio, qkv_bias=True) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.stage_names = tuple(f"block{i + 1}" for i in range(depth))
        self.stage_dims = tuple(dim for _ in range(depth))

        self.apply(init_transformer_weights)
        # The patch projection is a linear map of the flattened patch: initialise it as one.
        projection = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(projection.view(projection.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)

    @property
    def is_convolutional(self) -> bool:
        return False

    @property
    def min_input_size(self) -> int:
        return self.image_size

    @property
    def fixed_input_size(self) -> int:
        """A fixed token grid (and position embedding): inputs must be ``image_size`` px exactly."""
        return self.image_size

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → ``(B, N, D)`` patch tokens with position embeddings, no CLS token."""
        return self.patch_embed(images) + self.pos_embed.to(images.dtype)

    def _block_outputs(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        cls = self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1)  # its position embedding is 0
        hidden = torch.cat([cls, tokens], dim=1)
        outputs = []
        for block in self.blocks:
            hidden = block(hidden)
            outputs.append(hidden)
        outputs[-1] = self.norm(outputs[-1])
        return outputs

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run the encoder on ``(B, K, D)`` embedded patch tokens (any subset, e.g. the visible ones).

        Returns ``(B, 1 + K, D)``: the CLS token, then the ``K`` tokens in their input order, after
        the final LayerNorm.
        """
        return self._block_outputs(tokens)[-1]

    def stage_outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self._block_outputs(self.embed(images))

    def pool(self, stage_output: torch.Tensor, pool_size: int = 1) -> torch.Tensor:  # type: ignore[override]
        """Mean of the patch tokens or the CLS token (``pool_size`` does not apply to tokens)."""
        if stage_output.ndim != 3:
            raise ValueError(f"vit stage outputs are (B, 1 + N, D) tokens, got shape {tuple(stage_output.shape)}")
        if self.pooling == "cls":
            return stage_output[:, 0]
        return stage_output[:, 1:].mean(dim=1)


register_backbone("vit", VisionTransformer)
