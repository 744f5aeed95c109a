"""Throughput of the batched RGB → Lab conversion against a naive per-image loop.

    .venv/bin/python benchmarks/bench_color.py [--threads 1] [--repeats 5] [--device cpu]

For batch 256 at 32 px and 96 px it prints images/s of
- ``pretextlab.ops.lab.rgb_to_lab`` on the whole batch (one call),
- a per-image loop of ``skimage.color.rgb2lab`` (the naive way: tensor → numpy HWC → Lab → back),
- a per-image loop of ``rgb_to_lab`` (same maths, Python loop over images),
and the ratios, plus the Lab agreement with skimage on the benchmark batch and the throughput of
the soft encoding of the 1/4-resolution targets that colourisation computes every step (searching
all bins, and the lattice window the task uses), and colourisation's loss pieces around the head
(logit upsampling + soft cross-entropy, forward and backward, at batch 128).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from skimage.color import rgb2lab

from pretextlab.ops import ab_bins
from pretextlab.ops import lab as lab_conversion


def _best_seconds(function: Callable[[], object], repeats: int, synchronize: Callable[[], None]) -> float:
    function()  # warm-up (allocations, lazy init)
    synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions; the best is reported")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    centres = ab_bins.in_gamut_ab_bins(device=device)

    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"best of {args.repeats}")
    for size in (32, 96):
        images = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(size)).to(device)

        def batched() -> torch.Tensor:
            return lab_conversion.rgb_to_lab(images)

        def batched_unsliced() -> torch.Tensor:  # the same passes over the whole batch at once
            slice_values, lab_conversion._CPU_SLICE_VALUES = lab_conversion._CPU_SLICE_VALUES, 1 << 62
            try:
                return lab_conversion.rgb_to_lab(images)
            finally:
                lab_conversion._CPU_SLICE_VALUES = slice_values

        def skimage_loop() -> torch.Tensor:
            out = [torch.from_numpy(rgb2lab(image.permute(1, 2, 0).cpu().numpy())).permute(2, 0, 1)
                   for image in images]
            return torch.stack(out)

        def torch_loop() -> torch.Tensor:
            return torch.stack([lab_conversion.rgb_to_lab(image) for image in images])

        targets = torch.nn.functional.adaptive_avg_pool2d(batched()[:, 1:], size // 4)

        def encode() -> object:
            return ab_bins.soft_encode(targets, centres)

        def encode_windowed() -> object:  # the 5x5 lattice window, its lattice rebuilt per call (the task keeps one)
            return ab_bins.soft_encode(targets, centres, lattice=ab_bins.bin_lattice(centres, 10.0))

        times = {name: _best_seconds(fn, args.repeats, synchronize)
                 for name, fn in (("batched", batched), ("unsliced", batched_unsliced), ("skimage loop", skimage_loop),
                                  ("torch loop", torch_loop),
                                  ("soft encode", encode), ("soft encode windowed", encode_windowed))}
        agreement = np.abs(batched().cpu().numpy() - skimage_loop().numpy()).max()
        rate = {name: args.batch / seconds for name, seconds in times.items()}
        print(f"{size:3d} px: batched {rate['batched']:10.0f} img/s (one slice: {rate['unsliced']:.0f}) | skimage per image {rate['skimage loop']:8.0f} "
              f"img/s (x{rate['batched'] / rate['skimage loop']:.1f}) | torch per image {rate['torch loop']:8.0f} "
              f"img/s (x{rate['batched'] / rate['torch loop']:.1f}) | max |Lab - skimage| {agreement:.1e} | "
              f"soft-encode {size // 4}x{size // 4} targets: all bins {rate['soft encode']:8.0f} img/s, "
              f"window {rate['soft encode windowed']:8.0f} img/s")
    time_loss_pieces(128, args.repeats, synchronize, device)


def time_loss_pieces(batch: int, repeats: int, synchronize: Callable[[], None], device: torch.device) -> None:
    """Colourisation's per-step pieces around the head, forward + backward, old way vs the task's way."""
    from torch.nn import functional as F

    from pretextlab.ops.resize import bilinear_to_channels_last

    generator = torch.Generator().manual_seed(1)
    bins, source, target = 262, 4, 8  # 32 px images: the head's 4x4 map, 8x8 targets
    raw = torch.randn(batch, bins, source, source, generator=generator).to(device).requires_grad_()
    indices = torch.randint(0, bins, (batch, target, target, 5), generator=generator).to(device)
    weights = torch.softmax(torch.randn(batch, target, target, 5, generator=generator), -1).to(device)

    def interpolate_then_log_softmax() -> None:  # the previous composition, bins at dim 1
        logits = F.interpolate(raw, size=(target, target), mode="bilinear", align_corners=False)
        loss = -(weights.permute(0, 3, 1, 2) * F.log_softmax(logits, 1).gather(1, indices.permute(0, 3, 1, 2))).sum()
        logits.detach().argmax(1)
        loss.backward()

    def matrix_then_fused() -> None:  # what ColorizationTask does now
        logits = bilinear_to_channels_last(raw, (target, target))
        loss, _ = ab_bins.sparse_soft_cross_entropy(logits, indices, weights)
        loss.sum().backward()

    old = _best_seconds(interpolate_then_log_softmax, repeats, synchronize)
    new = _best_seconds(matrix_then_fused, repeats, synchronize)
    print(f"colorization logits {batch}x{bins}x{source}x{source} -> {target}x{target}, soft CE + argmax, fwd+bwd: "
          f"interpolate + log_softmax/gather {old * 1e3:.2f} ms, matrix upsample (channels last) + fused CE "
          f"{new * 1e3:.2f} ms (x{old / new:.1f})")


if __name__ == "__main__":
    main()
