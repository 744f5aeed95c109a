"""One factory for every backbone; each reports its feature dimension and its stages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pretextlab.backbones.base import Backbone
from pretextlab.backbones.convnet import ConvNet
from pretextlab.backbones.nin import NIN
from pretextlab.backbones.resnet import ResNet

_REGISTRY: dict[str, Callable[..., Backbone]] = {
    "convnet": ConvNet,
    "nin": NIN,
    "resnet18": lambda **kw: ResNet(arch="resnet18", **kw),
    "resnet34": lambda **kw: ResNet(arch="resnet34", **kw),
    "resnet50": lambda **kw: ResNet(arch="resnet50", **kw),
}


def register_backbone(name: str, constructor: Callable[..., Backbone]) -> None:
    """Make ``name`` available to :func:`build_backbone` (and so to ``backbone=`` configs)."""
    _REGISTRY[name] = constructor


def available_backbones() -> list[str]:
    _load_optional()
    return sorted(_REGISTRY)


def _load_optional() -> None:
    # Transformers are imported lazily: timm is heavy and only the ViT tasks need it.
    if "vit" not in _REGISTRY:
        try:
            from pretextlab.backbones import vit  # noqa: F401  (registers itself)
        except ImportError:
            pass


def build_backbone(name: str, **kwargs: Any) -> Backbone:
    """Build the backbone called ``name`` with its keyword arguments."""
    _load_optional()
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown backbone {name!r}; available: {sorted(_REGISTRY)} "
            "(pick one with backbone=<name>)"
        )
    return _REGISTRY[name](**kwargs)


__all__ = ["Backbone", "ConvNet", "NIN", "ResNet", "build_backbone", "register_backbone", "available_backbones"]
