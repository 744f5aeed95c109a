"""Seconds for the offline probes on cached features: the linear probe (all stages) and kNN.

    .venv/bin/python benchmarks/bench_probe.py                 # 10k train / 2k test, stages of 16..128 dims
    .venv/bin/python benchmarks/bench_probe.py --train 50000 --test 10000 --threads 2

The features are synthetic Gaussian clusters shaped like the width-16 convnet's four stages
(16, 32, 64, 128 dims), so the timing is that of real probes without needing a trained model.
``--threads`` sets torch's thread count; the linear probe itself drops to one thread for problems
this small (see ``pretextlab.evaluation.linear.cpu_threads``), so it mainly affects kNN.
"""

from __future__ import annotations

import argparse
import time

import torch

from pretextlab.evaluation import FeatureSet, KNNProbe, LinearProbe


def clustered_features(num: int, dims: list[int], num_classes: int, seed: int) -> FeatureSet:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (num,), generator=generator)
    features = {}
    for index, dim in enumerate(dims):
        centers = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(100 + index))
        features[f"stage{index + 1}"] = centers[labels] + 2.0 * torch.randn(num, dim, generator=generator)
    return FeatureSet(features, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=10_000)
    parser.add_argument("--test", type=int, default=2_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = clustered_features(args.train, args.dims, args.classes, seed=0)
    test = clustered_features(args.test, args.dims, args.classes, seed=1)
    print(f"features: {args.train} train / {args.test} test, stages {args.dims} dims, {args.classes} classes, "
          f"{args.threads} threads")

    linear = LinearProbe()  # the defaults of conf/eval/linear.yaml
    start = time.perf_counter()
    result = linear.run(train, test, args.classes)
    seconds = time.perf_counter() - start
    grid = len(linear.lrs) * len(linear.weight_decays)
    print(f"linear probe, {len(args.dims)} stages, {grid}-point lr/wd grid + refit, {linear.epochs} epochs: "
          f"{seconds:.2f} s (best stage {result['best_stage']} top-1 {100 * result['top1']:.1f} %)")

    knn = KNNProbe()
    start = time.perf_counter()
    result = knn.run(train, test, args.classes)
    seconds = time.perf_counter() - start
    print(f"kNN (k={knn.k}, T={knn.temperature}), stage {result['stage']}: {seconds:.2f} s "
          f"(top-1 {100 * result['top1']:.1f} %)")


if __name__ == "__main__":
    main()
