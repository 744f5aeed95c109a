"""The base task's training loop with an extra optimiser: what it steps, freezes, schedules and scales."""

from __future__ import annotations

import copy
import functools

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from pretextlab.backbones import build_backbone
from pretextlab.tasks.base import ExtraOptimizer, PretextOutput
from pretextlab.tasks.rotation import RotationTask

CRITIC_LR, CRITIC_STEP_SIZE = 0.1, 2


class CriticRotation(RotationTask):
    """Rotation plus a critic of the backbone's features, trained by an extra optimiser with a scheduler."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.critic = torch.nn.Linear(self.backbone.feature_dim, 1)
        self.critic_steps: list[dict[str, bool]] = []

    def pretext_step(self, images: torch.Tensor, labels: torch.Tensor) -> PretextOutput:
        output = super().pretext_step(images, labels)
        output.extra_step_input = images
        return output

    def critic_loss(self, output: PretextOutput) -> torch.Tensor:
        self.critic_steps.append({
            "backbone_frozen": not any(p.requires_grad for p in self.backbone.parameters()),
            "head_frozen": not any(p.requires_grad for p in self.head.parameters()),
            "critic_trained": all(p.requires_grad for p in self.critic.parameters()),
        })
        return self.critic(self.backbone(self.backbone_input(output.extra_step_input))).pow(2).mean()

    def extra_optimizers(self) -> list[ExtraOptimizer]:
        return [ExtraOptimizer(
            name="critic", parameters=list(self.critic.parameters()),
            build=functools.partial(torch.optim.SGD, lr=CRITIC_LR), loss=self.critic_loss, switched_off_by="critic=false",
            scheduler=lambda optimizer, total_steps: torch.optim.lr_scheduler.StepLR(optimizer, CRITIC_STEP_SIZE, 0.5),
        )]


@pytest.mark.parametrize("lr_scaling", ["none", "linear"])
def test_the_base_loop_steps_freezes_schedules_and_scales_an_extra_optimiser(make_config, lr_scaling: str) -> None:
    batch_size, base_batch_size, batches = 16, 64, 3
    cfg = make_config([f"data.batch_size={batch_size}", f"data.source.num_train={batches * batch_size}"])
    L.seed_everything(0)
    datamodule = instantiate(cfg.data)
    task = CriticRotation(backbone=build_backbone("convnet", width=8), lr_scaling=lr_scaling,
                          base_batch_size=base_batch_size, num_classes=datamodule.num_classes,
                          optimizer=functools.partial(torch.optim.SGD, lr=0.01))
    before = copy.deepcopy(task)
    assert not task.automatic_optimization  # an extra optimiser: the base task steps them itself
    trainer = L.Trainer(max_epochs=1, limit_train_batches=batches, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, datamodule=datamodule)

    main, critic = task.optimizers()
    assert not set(task.critic.parameters()) & {p for group in main.param_groups for p in group["params"]}
    # One critic step per batch, with everything but the critic frozen, and all unfrozen afterwards.
    assert task.critic_steps == [{"backbone_frozen": True, "head_frozen": True, "critic_trained": True}] * batches
    assert all(p.requires_grad for p in task.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(task.critic.parameters(), before.critic.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(task.head.parameters(), before.head.parameters(), strict=True))
    # The lr rule applies to the extra optimiser; its own scheduler steps after each of its steps.
    factor = batch_size / base_batch_size if lr_scaling == "linear" else 1.0
    schedulers = task.lr_schedulers()
    critic_schedulers = [s for s in (schedulers if isinstance(schedulers, list) else [schedulers])
                         if s.optimizer is critic.optimizer]
    assert len(critic_schedulers) == 1
    assert critic_schedulers[0].last_epoch == batches
    assert critic_schedulers[0].base_lrs == pytest.approx([CRITIC_LR * factor])
    assert critic.param_groups[0]["lr"] == pytest.approx(CRITIC_LR * factor * 0.5 ** (batches // CRITIC_STEP_SIZE))
    assert main.param_groups[0]["lr"] == pytest.approx(0.01 * factor)  # no main scheduler here
