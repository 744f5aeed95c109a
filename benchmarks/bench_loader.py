"""The streaming loader against torchvision's ImageFolder + DataLoader, and its memory while streaming.

Throughput: images/s of pretextlab's streaming training loader (``data.source.in_memory=false``:
the DataModule's own ``train_dataloader``) and of plain ``torchvision.datasets.ImageFolder`` (PIL
decoding) + ``DataLoader`` with the same geometry — a random-resized crop to 224 px and a flip,
uint8 out — the same batch size and the same number of workers, on a generated folder of
ImageNet-sized JPEGs. The two alternate within one run (A B A B ...), each timed over one epoch after
its first batch (worker start-up excluded); the ratio of each pair is reported, and their median.

Memory: the peak unique set size (USS: private pages) and proportional set size (PSS: shared
pages split among the processes mapping them) of the main process plus its loader workers, sampled every 20 ms in a fresh process while streaming ``--memory-batches``
batches (at most an epoch) of the folder and of a folder ``--memory-copies`` times larger (hard
links to the same files, so it costs no disk): flat in the dataset size means the peak does not grow
with the folder, whose decoded size is many times the memory the run holds.

    .venv/bin/python benchmarks/bench_loader.py --images 3000 --workers 2 --repeats 3 --memory-copies 6
    .venv/bin/python benchmarks/bench_loader.py --images 64 --workers 0 --repeats 1 --memory-copies 2  # smoke

The folder is generated once into ``--cache-dir`` (default ``$PRETEXTLAB_CACHE/bench_loader``,
i.e. ``~/.cache/pretextlab/bench_loader``) and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pretextlab.data import PretextDataModule, StreamingFolderSource

CLASSES = 10


def generate_folder(root: Path, images: int, width: int, height: int) -> Path:
    """``images`` JPEGs of ``width × height`` in ``CLASSES`` class folders (smooth colour fields with
    texture, which compress to realistic sizes, unlike white noise); reused when already there."""
    folder = root / f"{images}x{width}x{height}" / "train"
    done = folder / ".complete"
    if done.exists():
        return folder.parent
    rng = np.random.default_rng(0)
    for index in range(images):
        class_dir = folder / f"class{index % CLASSES:02d}"
        class_dir.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize((width, height),
                                                                                        Image.Resampling.BICUBIC)
        texture = rng.normal(0, 12, (height, width, 3))
        pixels = np.clip(np.asarray(coarse, dtype=np.float64) + texture, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(class_dir / f"{index:06d}.jpg", quality=90)
    done.touch()
    return folder.parent


def replicate_folder(root: Path, copies: int) -> Path:
    """``root`` with every file hard-linked ``copies`` times (a bigger dataset at no disk cost)."""
    big = root.parent / f"{root.name}-x{copies}"
    done = big / ".complete"
    if done.exists():
        return big
    for source in sorted((root / "train").rglob("*.jpg")):
        for copy in range(copies):
            target = big / "train" / source.parent.name / f"{copy}-{source.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.link(source, target)
    done.touch()
    return big


def streaming_loader(root: Path, batch: int, workers: int) -> DataLoader:
    source = StreamingFolderSource(str(root), image_size=224, test_dir=None, mean=(0.5,) * 3, std=(0.25,) * 3)
    module = PretextDataModule(source, batch_size=batch, num_workers=workers)
    return module.train_dataloader()


def torchvision_loader(root: Path, batch: int, workers: int) -> DataLoader:
    import torchvision
    from torchvision.transforms import v2

    transform = v2.Compose([v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(), v2.PILToTensor()])
    dataset = torchvision.datasets.ImageFolder(str(root / "train"), transform=transform)
    return DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                      persistent_workers=workers > 0)


def images_per_second(loader: DataLoader) -> tuple[float, int]:
    """One epoch, timed from its first batch; returns (images/s, images timed)."""
    iterator = iter(loader)
    next(iterator)  # worker start-up and the first batch are not timed
    count, start = 0, time.perf_counter()
    for images, _ in iterator:
        assert images.dtype == torch.uint8 and images.shape[-2:] == (224, 224)
        count += len(images)
    return count / (time.perf_counter() - start), count


def _memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, USS) of ``pid`` in KiB; USS = its private pages only, blind to who else maps a library."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            fields = {line.split(":")[0]: int(line.split()[1]) for line in handle if line.split()[-1:] == ["kB"]}
    except OSError:
        return 0, 0
    return fields.get("Pss", 0), fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(child) for child in handle.read().split()]
    except OSError:
        return []


class PeakMemory:
    """Samples PSS and USS of this process plus its children in a thread; peaks (MiB) after ``stop``.

    USS (private pages) is the memory the run itself holds; PSS also charges a share of the shared
    libraries, which moves with how many other processes on the machine map the same torch build.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.peak_pss_kib, self.peak_uss_kib, self._stop = interval, 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pid = os.getpid()
        while not self._stop.is_set():
            samples = [_memory_kib(p) for p in (pid, *_children(pid))]
            self.peak_pss_kib = max(self.peak_pss_kib, sum(pss for pss, _ in samples))
            self.peak_uss_kib = max(self.peak_uss_kib, sum(uss for _, uss in samples))
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return self.peak_pss_kib / 1024

    @property
    def peak_uss_mib(self) -> float:
        return self.peak_uss_kib / 1024


def _memory_in_a_fresh_process(folder: Path, args: argparse.Namespace) -> dict[str, float]:
    # A fresh process: workers of the throughput loaders must not count, nor their freed memory.
    command = [sys.executable, __file__, "--stream-only", str(folder), "--batch", str(args.batch), "--workers",
               str(args.workers), "--memory-batches", str(args.memory_batches)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    row: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    pixels = args.width * args.height * 3 / 2**20
    row.update(folder_decoded_mib=row["images"] * pixels, streamed_decoded_mib=row["streamed"] * pixels)
    return row


def stream_only(folder: Path, batch: int, workers: int, max_batches: int) -> None:
    """Stream up to ``max_batches`` batches of ``folder``; print one JSON line with the peak PSS."""
    loader = streaming_loader(folder, batch, workers)
    with PeakMemory() as peak:
        iterator = iter(loader)
        next(iterator)
        streamed, start = 0, time.perf_counter()
        for index, (images, _) in enumerate(iterator):
            streamed += len(images)
            if index + 2 >= max_batches:
                break
        rate = streamed / (time.perf_counter() - start)
    images = sum(1 for _ in (folder / "train").rglob("*.jpg"))
    print(json.dumps({"images": images, "streamed": streamed + batch, "peak_pss_mib": peak.peak_mib,
                      "peak_uss_mib": peak.peak_uss_mib, "images_per_s": rate}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-copies", type=int, default=6,
                        help="the big folder of the peak-memory figure holds this many copies of the folder "
                             "(0: no memory figure)")
    parser.add_argument("--memory-batches", type=int, default=100,
                        help="batches streamed from each folder for the peak-memory figure (at most an epoch)")
    parser.add_argument("--stream-only", type=Path, default=None, help=argparse.SUPPRESS)
    default_cache = Path(os.environ.get("PRETEXTLAB_CACHE", Path.home() / ".cache" / "pretextlab")) / "bench_loader"
    parser.add_argument("--cache-dir", type=Path, default=default_cache)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.stream_only is not None:
        stream_only(args.stream_only, args.batch, args.workers, args.memory_batches)
        return

    started = time.perf_counter()
    root = generate_folder(args.cache_dir, args.images, args.width, args.height)
    files = sorted((root / "train").rglob("*.jpg"))
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    decoded_mb = len(files) * args.width * args.height * 3 / 1e6
    print(f"folder {root}: {len(files)} JPEGs of {args.width}x{args.height}, {size_mb:.0f} MB on disk, "
          f"{decoded_mb:.0f} MB decoded (ready in {time.perf_counter() - started:.0f} s)")

    rows: list[dict[str, float]] = []
    for repeat in range(args.repeats):
        ours, timed = images_per_second(streaming_loader(root, args.batch, args.workers))
        theirs, _ = images_per_second(torchvision_loader(root, args.batch, args.workers))
        rows.append({"streaming": ours, "torchvision": theirs, "ratio": ours / theirs})
        print(f"repeat {repeat + 1}: streaming {ours:.1f} img/s, torchvision ImageFolder {theirs:.1f} img/s, "
              f"ratio {ours / theirs:.3f} ({timed} images timed each)")
    ratios = [row["ratio"] for row in rows]
    if ratios:
            print(f"ratio streaming / torchvision: median {statistics.median(ratios):.3f}, "
              f"min {min(ratios):.3f}, max {max(ratios):.3f} over {len(ratios)} pairs "
              f"(batch {args.batch}, {args.workers} workers, 1 thread each)")

    memory: list[dict[str, float]] = []
    if args.memory_copies > 0:
        for folder in (root, replicate_folder(root, args.memory_copies)):
            memory.append(_memory_in_a_fresh_process(folder, args))
            row = memory[-1]
            print(f"streaming {row['streamed']} of {row['images']} images ({row['folder_decoded_mib']:.0f} MiB decoded "
                  f"in the folder, {row['streamed_decoded_mib']:.0f} MiB streamed): peak of the process and its "
                  f"workers: USS {row['peak_uss_mib']:.0f} MiB, PSS {row['peak_pss_mib']:.0f} MiB; "
                  f"{row['images_per_s']:.1f} img/s")
    if args.json is not None:
        args.json.write_text(json.dumps({"throughput": rows, "memory": memory, "images": len(files)}, indent=2))


if __name__ == "__main__":
    main()
