"""Images/s of batched context-pair sampling and hole masks vs a naive per-image Python loop.

    python benchmarks/bench_patches.py                 # batch 256 at 32 and 96 px, CPU
    python benchmarks/bench_patches.py --device cuda   # the batched versions on a GPU as well

The naive versions below do the same work one image at a time (the way a Dataset.__getitem__
would); the ratio printed is batched images/s over naive images/s on the same device. Each
figure is the fastest of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch

from pretextlab.ops.masks import central_mask, random_block_mask, random_region_mask
from pretextlab.ops.patches import NEIGHBOUR_CELLS, PatchLayout, default_patch_layout, sample_patch_pairs


# -- naive references: one image at a time ------------------------------------------------------
def naive_patch_pairs(images: torch.Tensor, layout: PatchLayout, pairs_per_image: int) -> tuple[torch.Tensor, ...]:
    centres, neighbours, labels = [], [], []
    _, _, height, width = images.shape
    for image in images:
        for _ in range(pairs_per_image):
            oy = int(torch.randint(0, height - layout.extent + 1, ()))
            ox = int(torch.randint(0, width - layout.extent + 1, ()))
            label = int(torch.randint(0, 8, ()))
            row, col = NEIGHBOUR_CELLS[label]
            jitter = torch.randint(-layout.jitter, layout.jitter + 1, (4,)).tolist()
            cy, cx = oy + layout.jitter + layout.step + jitter[0], ox + layout.jitter + layout.step + jitter[1]
            ny = oy + layout.jitter + row * layout.step + jitter[2]
            nx = ox + layout.jitter + col * layout.step + jitter[3]
            centres.append(image[:, cy : cy + layout.patch, cx : cx + layout.patch])
            neighbours.append(image[:, ny : ny + layout.patch, nx : nx + layout.patch])
            labels.append(label)
    return torch.stack(centres), torch.stack(neighbours), torch.tensor(labels)


def naive_central(batch: int, size: int, fraction: float, device: str) -> torch.Tensor:
    masks = []
    side = round(math.sqrt(fraction * size * size))
    for _ in range(batch):
        mask = torch.zeros(1, size, size, dtype=torch.bool, device=device)
        top = (size - side) // 2
        mask[:, top : top + side, top : top + side] = True
        masks.append(mask)
    return torch.stack(masks)


def naive_blocks(batch: int, size: int, fraction: float, device: str) -> torch.Tensor:
    block = max(1, round(size / 5))
    masks = []
    for _ in range(batch):
        mask = torch.zeros(1, size, size, dtype=torch.bool, device=device)
        for _ in range(4 * math.ceil(fraction * size * size / block**2) + 4):
            y, x = torch.randint(0, size - block + 1, (2,)).tolist()
            trial = mask.clone()
            trial[:, y : y + block, x : x + block] = True
            if trial.float().mean() > fraction:
                break
            mask = trial
        masks.append(mask)
    return torch.stack(masks)


def naive_regions(batch: int, size: int, fraction: float, device: str) -> torch.Tensor:
    masks = []
    smoothness = max(2, round(size / 8))
    coarse = max(2, math.ceil(size / smoothness))
    for _ in range(batch):
        noise = torch.randn(1, 1, coarse, coarse, device=device)
        field = torch.nn.functional.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)
        mask = torch.zeros(size * size, dtype=torch.bool, device=device)
        mask[field.flatten().topk(round(fraction * size * size)).indices] = True
        masks.append(mask.view(1, size, size))
    return torch.stack(masks)


# -- timing ---------------------------------------------------------------------------------------
def images_per_second(work: Callable[[], object], batch: int, device: str, repeats: int) -> float:
    work()  # warm-up (allocations, kernels)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        work()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    # The fastest repeat: on a shared machine the others measure the neighbours, not this code.
    return batch / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 96])
    parser.add_argument("--pairs-per-image", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    # One intra-op thread by default: on a shared, busy CPU the thread pool's hand-offs dominate
    # small ops (a 256x32x32 bool fill took 5.9 ms with 2 threads vs 0.08 ms with 1, measured here).
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch, device = args.batch, args.device
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, batch {batch}, "
          f"pairs/image {args.pairs_per_image}, mask fraction {args.fraction}")
    print(f"{'operation':<16}{'size':>6}{'batched img/s':>16}{'naive img/s':>14}{'ratio':>9}")
    for size in args.sizes:
        images = torch.rand(batch, 3, size, size, device=device)
        layout = default_patch_layout(size)
        cases: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
            "context pairs": (lambda: sample_patch_pairs(images, layout, args.pairs_per_image),
                              lambda: naive_patch_pairs(images, layout, args.pairs_per_image)),
            "central mask": (lambda: central_mask(batch, size, size, args.fraction, device=device),
                             lambda: naive_central(batch, size, args.fraction, device)),
            "random blocks": (lambda: random_block_mask(batch, size, size, args.fraction, device=device),
                              lambda: naive_blocks(batch, size, args.fraction, device)),
            "random regions": (lambda: random_region_mask(batch, size, size, args.fraction, device=device),
                               lambda: naive_regions(batch, size, args.fraction, device)),
        }
        for name, (batched, naive) in cases.items():
            fast = images_per_second(batched, batch, device, args.repeats)
            slow = images_per_second(naive, batch, device, max(1, args.repeats // 2))
            print(f"{name:<16}{size:>6}{fast:>16,.0f}{slow:>14,.0f}{fast / slow:>8.1f}x", flush=True)


if __name__ == "__main__":
    main()
