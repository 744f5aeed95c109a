"""End-to-end training throughput against the backbone's own ceiling (benchmark 4, meant for a GPU).

For each task: build the data module, backbone, task and Lightning trainer from the real configs
(as ``pretextlab.train`` does), with the split resident on the device (``data.on_device=true``), and
time ``--steps`` training steps after ``--warmup`` steps: every part of a real step is inside the
measurement (batch gather and augmentation on the device, the pretext transform, backbone, head,
online probe, optimizer, Lightning's loop). The ceiling is the same backbone's forward + backward +
SGD step, under the same precision, on a pre-made batch of exactly the shapes the task fed its
backbone (rotation: 4 × batch images; jigsaw: 9 × batch tiles), with a linear head and
cross-entropy. Both are reported in source images per second; target: end to end ≥ 90 % of the
ceiling.

    # on a GPU (what the issue asks for: ResNet-18, 32 px, bf16):
    python benchmarks/bench_end_to_end.py --tasks rotation,jigsaw --backbone resnet18 --precision bf16-mixed
    # CPU smoke run (what the test suite does; the figures mean little there):
    python benchmarks/bench_end_to_end.py --device cpu --backbone convnet --precision 32-true \\
        --batch 16 --steps 3 --warmup 1 --num-images 64
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from _reference import BackboneInputs, backbone_step

from pretextlab.config import compose_train


class StepTimer(L.Callback):
    """Wall time of training steps ``warmup + 1 .. warmup + steps``, synchronised with the device."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup = warmup
        self.device = device
        self.started: float | None = None
        self.finished: float | None = None
        self.timed_steps = 0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        done = trainer.fit_loop.epoch_loop.batch_progress.total.completed + 1
        if done == self.warmup:
            self._sync()
            self.started = time.perf_counter()
        elif done > self.warmup:
            self.timed_steps += 1
            self._sync()
            self.finished = time.perf_counter()


class FirstStepInputs(L.Callback):
    """Records the backbone input shapes of the first training step (:class:`BackboneInputs`)."""

    def __init__(self) -> None:
        self.recorder = BackboneInputs()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.total.completed == 0:
            self.recorder.start(pl_module.backbone)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.recorder.stop()


def end_to_end(task_name: str, args: argparse.Namespace,
               device: torch.device) -> tuple[float, list[tuple[int, ...]], dict[str, Any]]:
    """Images/s of real training steps, the backbone input shapes of one step, the backbone's build config."""
    overrides = [
        f"task={task_name}", f"backbone={args.backbone}", f"data.batch_size={args.batch}",
        f"data.source.num_train={args.num_images}", "data.source.num_test=16", "data.on_device=true",
        f"trainer.precision={args.precision}", "trainer.enable_progress_bar=false", "logger=none", "eval=none",
        *args.override,
    ]
    if device.type == "cuda":
        overrides.append("trainer=gpu")
    cfg = compose_train(overrides)
    L.seed_everything(0)
    datamodule = instantiate(cfg.data)
    backbone = instantiate(cfg.backbone)
    task = instantiate(cfg.task, _convert_="all", backbone=backbone, num_classes=datamodule.num_classes,
                       mean=datamodule.mean, std=datamodule.std, image_size=datamodule.image_size)
    trainer_options = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(trainer_options, dict)
    if trainer_options.pop("compile", False):
        from pretextlab.train import compile_backbone

        task.backbone = compile_backbone(task.backbone)
    recorder, timer = FirstStepInputs(), StepTimer(args.warmup, device)
    trainer_options.update(max_epochs=-1, max_steps=args.warmup + args.steps, limit_val_batches=0,
                           num_sanity_val_steps=0, enable_checkpointing=False, logger=False)
    trainer = instantiate(trainer_options, callbacks=[recorder, timer])
    trainer.fit(task, datamodule=datamodule)
    assert timer.started is not None and timer.finished is not None and timer.timed_steps > 0
    seconds_per_step = (timer.finished - timer.started) / timer.timed_steps
    return args.batch / seconds_per_step, recorder.recorder.shapes, dict(backbone.build_config)


def ceiling(backbone_config: dict[str, Any], shapes: list[tuple[int, ...]], batch: int, args: argparse.Namespace,
            device: torch.device) -> float:
    """Source images/s of the backbone alone: forward + backward + SGD on pre-made inputs."""
    torch.manual_seed(0)
    step = backbone_step(backbone_config, shapes, device, args.precision)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batch / ((time.perf_counter() - start) / args.steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="rotation,jigsaw")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--batch", type=int, default=256, help="source images per step")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--num-images", type=int, default=5000,
                        help="synthetic training images on the device (rendered on the CPU first: ~2.4 ms each)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--override", nargs="*", default=[], help="extra overrides for the end-to-end runs")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {name}; {args.backbone}, {args.precision}, batch {args.batch}, "
          f"{args.steps} timed steps after {args.warmup}")
    print(f"{'task':<12}{'end to end (img/s)':>20}{'ceiling (img/s)':>18}{'ratio':>8}  backbone inputs")
    figures = []
    for task_name in args.tasks.split(","):
        measured, shapes, backbone_config = end_to_end(task_name, args, device)
        best = ceiling(backbone_config, shapes, args.batch, args, device)
        figures.append({"task": task_name, "end_to_end": measured, "ceiling": best, "ratio": measured / best,
                        "shapes": shapes})
        print(f"{task_name:<12}{measured:>20.0f}{best:>18.0f}{measured / best:>8.2f}  {shapes}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": name, "args": vars(args), "figures": figures}, handle, indent=2)


if __name__ == "__main__":
    main()
