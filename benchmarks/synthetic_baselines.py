"""How hard is the embedded dataset? Linear-probe accuracy of raw pixels on `synthetic`.

A linear classifier on raw (normalised) pixels is the floor a learned representation must beat; the
same probe protocol as ``eval=linear`` (lr/wd picked on a validation split of train) is used, so the
figure compares directly with the table's linear columns.

    .venv/bin/python benchmarks/synthetic_baselines.py [--num-train 5000] [--num-test 1000]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from pretextlab.data import SyntheticSource
from pretextlab.evaluation import FeatureSet, LinearProbe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-train", type=int, default=5000)
    parser.add_argument("--num-test", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args()
    source = SyntheticSource(num_train=args.num_train, num_test=args.num_test, image_size=args.image_size)
    mean = torch.tensor(source.mean).view(1, 3, 1, 1)
    std = torch.tensor(source.std).view(1, 3, 1, 1)

    def features(split: str) -> dict[str, torch.Tensor]:
        images = (source.load(split).images.float() / 255 - mean) / std
        return {
            "pixels": images.flatten(1),
            # Pooled colour layout: a cheap hand-made feature, to show how much colour alone gives.
            "pixels_8x8": F.adaptive_avg_pool2d(images, 8).flatten(1),
        }

    start = time.perf_counter()
    train = FeatureSet(features("train"), source.load("train").labels)
    test = FeatureSet(features("test"), source.load("test").labels)
    result = LinearProbe(epochs=30).run(train, test, source.num_classes)
    print(f"synthetic {args.num_train} train / {args.num_test} test, {args.image_size} px, "
          f"{source.num_classes} classes (chance {100 / source.num_classes:.1f} %)")
    for stage, values in result["per_stage"].items():
        print(f"  linear probe on {stage:<11}: top-1 {100 * values['top1']:.1f} %  top-5 {100 * values['top5']:.1f} %")
    print(f"  ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
