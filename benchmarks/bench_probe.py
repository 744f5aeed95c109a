"""Seconds for the offline probes on cached features: the layer-wise linear probe (all stages) and kNN.

    .venv/bin/python benchmarks/bench_probe.py                       # synthetic clusters, 10k train / 2k test
    .venv/bin/python benchmarks/bench_probe.py --cifar --before      # one CIFAR-10 row: 50k / 10k, before vs after
    .venv/bin/python benchmarks/bench_probe.py --cifar --checkpoint outputs/runs/<run>/checkpoints/last.ckpt

Without ``--cifar`` the features are Gaussian clusters shaped like the width-16 convnet's four
stages under the layer-wise pooling rule (1,024 / 2,048 / 1,024 / 2,048 dims at 32 px). With
``--cifar`` they are the real thing: the CIFAR-10 JPEG copy (the repository preset ``conf/data/cifar10_jpeg.yaml``), all
50,000 train and 10,000 test images, through the width-16 convnet (random init, or the backbone of a
pretraining checkpoint), pooled per stage as ``eval=linear`` pools them; they are extracted once
and cached in ``--cache`` (the extraction is not part of the timed probe).

``--before`` also times the probe of an earlier commit (``--before-commit``, read with ``git show``)
on the same features in the same process, so the before/after ratio is measured under the same load.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pretextlab.evaluation import FeatureSet, KNNProbe, LinearProbe

ROOT = Path(__file__).resolve().parents[1]
#: The commit whose probe is the "before" (the old protocol's LinearProbe: autograd, one padded stack).
BEFORE_COMMIT = "0706217"


def clustered_features(num: int, dims: list[int], num_classes: int, seed: int) -> FeatureSet:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (num,), generator=generator)
    features = {}
    for index, dim in enumerate(dims):
        centers = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(100 + index))
        features[f"stage{index + 1}"] = centers[labels] + 2.0 * torch.randn(num, dim, generator=generator)
    return FeatureSet(features, labels)


def cifar_features(checkpoint: Path | None, cache: Path) -> tuple[FeatureSet, FeatureSet]:
    """Train / test features of CIFAR-10 through the convnet, pooled by the layer-wise rule (cached)."""
    if cache.exists():
        payload = torch.load(cache, weights_only=True)
        return FeatureSet.from_dict(payload["train"]), FeatureSet.from_dict(payload["test"])
    from hydra.utils import instantiate

    from pretextlab.config import compose_train
    from pretextlab.evaluation.runner import _features, resolve_stages, stage_pooling

    repository_presets = Path(__file__).resolve().parents[1] / "conf"  # data=cifar10_jpeg lives there
    cfg = compose_train(["experiment=table_cifar10_cpu", "task=rotation", "eval=linear", "logger=none"],
                        config_dirs=[repository_presets])
    datamodule = instantiate(cfg.data)
    task = instantiate(cfg.task, _convert_="all", backbone=instantiate(cfg.backbone),
                       num_classes=datamodule.num_classes, mean=datamodule.mean, std=datamodule.std,
                       image_size=datamodule.image_size)
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        task.backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in state.items()
                                       if k.startswith("backbone.")})
    encoder = task.encoder()
    train, test, _ = _features(encoder, datamodule, resolve_stages(encoder, "all"), stage_pooling(cfg.eval), "cpu", None)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"train": train.to_dict(), "test": test.to_dict()}, cache)
    return train, test


def before_probe_class(commit: str) -> Any:
    """``LinearProbe`` as it was at ``commit`` (its module source from git, imported under another name)."""
    source = subprocess.run(["git", "show", f"{commit}:src/pretextlab/evaluation/linear.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
        handle.write(source)
    spec = importlib.util.spec_from_file_location("pretextlab_linear_before", handle.name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    os.unlink(handle.name)
    return module.LinearProbe


def time_probe(name: str, probe: Any, train: FeatureSet, test: FeatureSet, classes: int) -> float:
    start, cpu_start = time.perf_counter(), time.process_time()
    result = probe.run(train, test, classes)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    grid = len(probe.lrs) * len(probe.weight_decays)
    stages = ", ".join(f"{s} {100 * r['top1']:.1f}" for s, r in result["per_stage"].items())
    print(f"{name}: {seconds:.1f} s wall, {cpu:.1f} s CPU (all threads) ({grid}-point lr/wd grid, {probe.epochs} "
          f"epochs; best stage {result['best_stage']} top-1 {100 * result['top1']:.1f} %; per stage {stages})",
          flush=True)
    return seconds


def subset(features: FeatureSet, count: int | None, seed: int = 0) -> FeatureSet:
    """A seeded random choice of ``count`` images (all when None); the splits are stored class by class."""
    if count is None:
        return features
    keep = torch.randperm(len(features.labels), generator=torch.Generator().manual_seed(seed))[:count]
    return FeatureSet({s: f[keep] for s, f in features.features.items()}, features.labels[keep])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--train", type=int, default=10_000)
    parser.add_argument("--test", type=int, default=2_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[1024, 2048, 1024, 2048])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cifar", action="store_true", help="real CIFAR-10 features (50k / 10k) instead of clusters")
    parser.add_argument("--checkpoint", type=Path, default=None, help="pretraining checkpoint for --cifar")
    parser.add_argument("--cache", type=Path, default=ROOT / "outputs" / "bench_probe" / "cifar_features.pt")
    parser.add_argument("--before", action="store_true", help="also time the probe of --before-commit")
    parser.add_argument("--before-commit", default=BEFORE_COMMIT)
    parser.add_argument("--no-knn", action="store_true")
    parser.add_argument("--subset", type=int, nargs=2, default=None, metavar=("TRAIN", "TEST"),
                        help="with --cifar: probe only the first TRAIN / TEST images")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.cifar:
        train, test = cifar_features(args.checkpoint, args.cache)
        if args.subset is not None:
            train, test = subset(train, args.subset[0]), subset(test, args.subset[1])
    else:
        train = clustered_features(args.train, args.dims, args.classes, seed=0)
        test = clustered_features(args.test, args.dims, args.classes, seed=1)
    dims = [f.shape[1] for f in train.features.values()]
    print(f"features: {len(train.labels)} train / {len(test.labels)} test, stages {dims} dims, {args.classes} "
          f"classes, {args.threads} threads, load average {os.getloadavg()[0]:.1f}", flush=True)

    after = time_probe("linear probe (this commit)", LinearProbe(), train, test, args.classes)
    if args.before:
        before = time_probe(f"linear probe (commit {args.before_commit})", before_probe_class(args.before_commit)(),
                            train, test, args.classes)
        print(f"before / after: {before / after:.1f}x; load average now {os.getloadavg()[0]:.1f}")
    if not args.no_knn:
        knn = KNNProbe()
        start = time.perf_counter()
        result = knn.run(train, test, args.classes)
        print(f"kNN (k={knn.k}, T={knn.temperature}), stage {result['stage']}: {time.perf_counter() - start:.2f} s "
              f"(top-1 {100 * result['top1']:.1f} %)")


if __name__ == "__main__":
    sys.exit(main())
