"""Step overhead of each pretext task relative to a supervised step on the same backbone inputs.

For every task: time a full training step (pretext transform + backbone + head + loss + online probe +
backward + optimizer step) on a batch of clean images, and time a plain supervised step (backbone +
linear head + cross-entropy + backward + step) on random tensors of exactly the shape(s) the task fed
its backbone. The ratio is what the pretext logic costs around the backbone; target <= 1.15.

The task step is timed three times: as configured by default (online probe on the features the
step computed anyway: ``task.online_probe_features=pretext``), with the probe on whole images
(``images``: one more no-grad backbone pass for tasks that feed the backbone tiles, patches or
masked inputs) and with ``task.online_probe=false``, which isolates the pretext logic itself.
``--override`` applies extra task overrides to every measurement (e.g. ``task.head_hidden=0`` to
see what a task's own head costs).

    .venv/bin/python benchmarks/bench_step_overhead.py [--batch 128] [--repeats 5] [--tasks rotation,jigsaw]
        [--override task.head_hidden=0 ...] [--device cuda --precision bf16-mixed]
"""

from __future__ import annotations

import argparse
import time

import torch
from hydra.utils import instantiate

from _reference import BackboneInputs, autocast, backbone_step

from pretextlab.config import compose_train

BACKBONE_FOR = {"mae": "vit_tiny"}


def _paired_times(task_step, reference_step, repeats: int, synchronize) -> tuple[float, float, float]:
    """Median task time, median reference time and median of the per-pair ratios.

    The two steps alternate (task, reference, task, ...), so a burst of load from other jobs on
    the shared machine hits both sides of a pair instead of skewing one of the two medians.
    """
    task_step()
    reference_step()  # warm-up
    synchronize()
    task_times, reference_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        task_step()
        synchronize()
        middle = time.perf_counter()
        reference_step()
        synchronize()
        task_times.append(middle - start)
        reference_times.append(time.perf_counter() - middle)
    ratios = sorted(t / r for t, r in zip(task_times, reference_times, strict=True))
    return sorted(task_times)[repeats // 2], sorted(reference_times)[repeats // 2], ratios[repeats // 2]


def measure(task_name: str, batch: int, repeats: int, overrides: list[str], device: torch.device,
            precision: str) -> tuple[float, float, float, list[tuple[int, ...]]]:
    backbone_option = BACKBONE_FOR.get(task_name, "convnet")
    cfg = compose_train([f"task={task_name}", f"backbone={backbone_option}", *overrides])
    backbone = instantiate(cfg.backbone)
    task = instantiate(cfg.task, backbone=backbone, num_classes=10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                       image_size=32, _convert_="all")
    task.to(device).train()
    optimizer = torch.optim.SGD(task.parameters(), lr=1e-3, momentum=0.9)
    images = torch.rand(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    # Only inputs that are trained through count as "backbone inputs"; the online probe's no-grad
    # forward on clean images is part of the overhead being measured.
    recorder = BackboneInputs()
    recorder.start(backbone)
    task.log = lambda *a, **k: None  # type: ignore[method-assign]  (no trainer attached)
    task.log_dict = lambda *a, **k: None  # type: ignore[method-assign]

    def task_step() -> None:
        with autocast(device, precision):
            loss = task.training_step((images, labels), 0) if task.automatic_optimization else None
            if loss is None:
                output = task.pretext_step(images, labels)
                loss = output.loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    task_step()
    recorder.stop()
    # MAE's encoder sees visible tokens through its own path, not backbone.forward: fall back to the
    # clean batch shape when no call was recorded.
    recorded = recorder.shapes or [tuple(images.shape)]
    reference_step = backbone_step(backbone.build_config, recorded, device, precision)

    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    return (*_paired_times(task_step, reference_step, repeats, synchronize), recorded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tasks", default="rotation,jigsaw,colorization,context,inpainting,mae,supervised")
    parser.add_argument("--override", nargs="*", default=[], help="extra overrides for every measurement")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true", help="32-true, bf16-mixed or 16-mixed (autocast)")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    print(f"batch {args.batch}, 32 px, {device}, {args.precision}, threads {torch.get_num_threads()}, median of "
          f"{args.repeats} alternating task/reference pairs (ratio: median of per-pair ratios); "
          f"overrides {args.override or 'none'}")
    print(f"{'task':<14}{'step (s)':>10}{'supervised (s)':>16}{'ratio':>8}{'ratio, probe on images':>24}"
          f"{'ratio, no probe':>17}  backbone inputs")
    for name in args.tasks.split(","):
        setting = (device, args.precision)
        task_time, reference_time, ratio, shapes = measure(name, args.batch, args.repeats, args.override, *setting)
        _, _, images_ratio, _ = measure(name, args.batch, args.repeats,
                                        [*args.override, "task.online_probe_features=images"], *setting)
        _, _, bare_ratio, _ = measure(name, args.batch, args.repeats, [*args.override, "task.online_probe=false"],
                                      *setting)
        print(f"{name:<14}{task_time:>10.3f}{reference_time:>16.3f}{ratio:>8.2f}{images_ratio:>24.2f}"
              f"{bare_ratio:>17.2f}  {shapes}")


if __name__ == "__main__":
    main()
