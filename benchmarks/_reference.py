"""What the step benchmarks share: recording a task's backbone inputs, and the backbone-only step on them.

Both ``bench_step_overhead.py`` (task step ÷ this step) and ``bench_end_to_end.py`` (end to end vs
this step as the ceiling) compare a task against the same thing: a plain supervised step (backbone
+ linear head + cross-entropy + backward + SGD) on random tensors of exactly the shapes the task
trained its backbone on, under the same precision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pretextlab.backbones import build_backbone

AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context of a Lightning precision setting (disabled for 32-true)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


class BackboneInputs:
    """Records the shapes of the inputs the backbone is trained on while started.

    Every backbone path (forward, forward_stages, dense heads) goes through ``stage_outputs``; only
    calls with gradients count, so an online probe's no-grad pass is not a backbone input.
    """

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self._backbone: Any = None
        self._original: Any = None

    def start(self, backbone: Any) -> None:
        self._backbone, self._original = backbone, backbone.stage_outputs
        original = self._original

        def recording(x: torch.Tensor) -> list[torch.Tensor]:
            if torch.is_grad_enabled():
                self.shapes.append(tuple(x.shape))
            return original(x)

        backbone.stage_outputs = recording

    def stop(self) -> None:
        if self._backbone is not None:
            self._backbone.stage_outputs = self._original
            self._backbone = self._original = None


def backbone_step(backbone_config: dict[str, Any], shapes: list[tuple[int, ...]], device: torch.device,
                  precision: str) -> Callable[[], None]:
    """A supervised step of a fresh backbone built from ``backbone_config`` on inputs of ``shapes``."""
    backbone = build_backbone(**backbone_config).to(device)
    head = torch.nn.Linear(backbone.feature_dim, 10).to(device)
    optimizer = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=1e-3, momentum=0.9)
    inputs = [torch.randn(shape, device=device) for shape in shapes if len(shape) == 4]
    targets = [torch.randint(0, 10, (x.shape[0],), device=device) for x in inputs]

    def step() -> None:
        with autocast(device, precision):
            loss = sum(torch.nn.functional.cross_entropy(head(backbone(x)), y)
                       for x, y in zip(inputs, targets, strict=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        optimizer.step()

    return step
