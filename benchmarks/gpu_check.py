"""The GPU acceptance run: every check a GPU machine should pass, in one command, in under 6 minutes.

Run it through ``benchmarks/gpu_check.sh`` (which adds an outer time limit). Each step runs in its
own process group with a time cap; the whole run stops at ``--limit-s`` (360 s) whatever happens,
and the report (one JSON file: every figure, every failure, the tail of each failing step's log)
is rewritten after every step, so even a killed run leaves one. A failing step never stops the
steps after it. Steps, in order:

1. ``environment``: torch, CUDA, the GPUs present.
2. ``jpeg_folder``: a generated ImageFolder of JPEGs (ImageNet-like sizes) for the streaming runs.
3. ``streaming_bf16`` / ``streaming_16mixed``: every task for a few hundred steps on ResNet-18 (MAE:
   ViT-S/16) at 224 px, reading the JPEGs during training (``data=imagefolder
   data.source.in_memory=false``), in bf16-mixed and 16-mixed. A checkout without the streaming
   source reports that in one line and goes on.
4. ``on_device``: CIFAR-size data resident on the GPU (``data.on_device=true``), rotation and jigsaw.
5. ``compile``: the same with ``trainer.compile=true`` (and whether compilation fell back).
6. ``ddp``: ``trainer=ddp`` on every GPU present, inside a multirun.
7. ``bench_end_to_end``: benchmark 4 (end to end images/s against the backbone's own step).
8. ``bench_step_overhead``: the step-overhead benchmark with ``--device cuda``.

``--dry-run`` runs the same steps on the CPU at tiny sizes (what the test suite does, so that the
script keeps working before a GPU arrives); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["rotation", "jigsaw", "colorization", "context", "inpainting", "supervised"]
#: The streaming source's switch; a checkout without it cannot run the streaming steps.
STREAMING_KEY = "data.source.in_memory"


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and the CPU dry run."""

    device: str
    backbone: str            # convolutional tasks
    vit: list[str]           # MAE's backbone overrides
    image_size: int
    jpeg_count: int          # training JPEGs in the generated folder
    jpeg_shape: tuple[int, int]
    stream_batch: int
    stream_steps: dict[str, int]  # per precision
    stream_tasks: dict[str, tuple[str, ...]]  # per precision: the tasks each streaming step pretrains
    precisions: dict[str, str]    # the precision each streaming step runs in (the CPU has no 16-mixed)
    workers: int
    cifar_images: int
    cifar_batch: int
    cifar_steps: int
    ddp: list[str]           # overrides of the DDP sweep (tasks, trainer)
    bench_end_to_end: list[str]
    bench_step_overhead: list[str]
    caps: dict[str, float] = field(default_factory=dict)  # seconds each step may take at most


GPU = Sizes(
    device="cuda", backbone="resnet18_imagenet_stem", vit=["backbone=vit_small"], image_size=224,
    jpeg_count=2048, jpeg_shape=(400, 300), stream_batch=64,
    stream_steps={"bf16-mixed": 200, "16-mixed": 100}, precisions={"bf16-mixed": "bf16-mixed", "16-mixed": "16-mixed"},
    stream_tasks={"bf16-mixed": (*TASKS, "mae"), "16-mixed": (*TASKS, "mae")},
    workers=8,
    cifar_images=2048, cifar_batch=256, cifar_steps=200,
    ddp=["task=rotation,jigsaw", "trainer=ddp", "trainer.devices=-1"],
    bench_end_to_end=["--device", "cuda", "--tasks", "rotation,jigsaw", "--backbone", "resnet18",
                      "--precision", "bf16-mixed", "--steps", "50", "--warmup", "10", "--num-images", "2048"],
    bench_step_overhead=["--device", "cuda", "--precision", "bf16-mixed", "--repeats", "11"],
    # Estimates (no GPU has run this yet); they add up to the 360 s limit less a few seconds of margin.
    caps={"jpeg_folder": 20, "streaming_bf16": 90, "streaming_16mixed": 50, "on_device": 30, "compile": 60,
          "ddp": 35, "bench_end_to_end": 35, "bench_step_overhead": 35},
)
DRY = Sizes(
    device="cpu", backbone="convnet", vit=["backbone=vit_tiny", "backbone.patch_size=4"], image_size=32,
    jpeg_count=16, jpeg_shape=(48, 40), stream_batch=8, stream_steps={"bf16-mixed": 2, "16-mixed": 2},
    precisions={"bf16-mixed": "bf16-mixed", "16-mixed": "32-true"}, workers=0,
    # the CPU has no 16-mixed: its step repeats the first in 32-true, so one task keeps it exercised
    stream_tasks={"bf16-mixed": (*TASKS, "mae"), "16-mixed": ("rotation",)},
    cifar_images=64, cifar_batch=16, cifar_steps=2,
    ddp=["task=rotation", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
         "trainer.sync_batchnorm=false", "trainer.benchmark=false"],
    bench_end_to_end=["--device", "cpu", "--tasks", "rotation,jigsaw", "--backbone", "convnet", "--precision",
                      "32-true", "--batch", "16", "--steps", "2", "--warmup", "1", "--num-images", "64"],
    bench_step_overhead=["--device", "cpu", "--tasks", "rotation,jigsaw", "--batch", "8", "--repeats", "1"],
    caps={"jpeg_folder": 60, "streaming_bf16": 240, "streaming_16mixed": 240, "on_device": 180, "compile": 180,
          "ddp": 300, "bench_end_to_end": 180, "bench_step_overhead": 180},
)


@dataclass
class StepResult:
    name: str
    status: str = "skipped: not reached"
    seconds: float = 0.0
    commands: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    log_tail: str = ""


class Run:
    """The report and the clock of one acceptance run."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes) -> None:
        self.args, self.sizes = args, sizes
        self.work = Path(args.work_dir).resolve()
        self.report_path = Path(args.report).resolve()
        self.started = time.monotonic()
        self.deadline = self.started + args.limit_s
        self.steps: list[StepResult] = []
        self.environment: dict[str, Any] = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def write_report(self) -> None:
        report = {
            "mode": "dry-run (CPU, tiny sizes: the figures mean nothing)" if self.args.dry_run else "gpu",
            "limit_s": self.args.limit_s,
            "elapsed_s": round(time.monotonic() - self.started, 1),
            "environment": self.environment,
            "failures": [f"{step.name}: {step.status}" for step in self.steps if not step.status.startswith("ok")],
            "steps": [vars(step) for step in self.steps],
        }
        self.report_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.report_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(report, indent=2, default=str))
        temporary.replace(self.report_path)

    def step(self, name: str, action: Callable[[StepResult, float], None]) -> StepResult:
        """Run one step within its cap and the run's limit; record whatever happens; never raise."""
        result = StepResult(name)
        self.steps.append(result)
        budget = min(self.sizes.caps.get(name, 30.0), self.left() - 5)
        if budget <= 1:
            result.status = f"skipped: the {self.args.limit_s:.0f} s limit was reached"
            self.write_report()
            return result
        started = time.monotonic()
        try:
            action(result, budget)
            if result.status.startswith("skipped: not reached"):
                result.status = "ok"
        except StepFailed as failure:
            result.status = f"failed: {failure}"
        except Exception as error:  # a bug in a step must not stop the run
            result.status = f"failed: {type(error).__name__}: {error}"
        result.seconds = round(time.monotonic() - started, 1)
        print(f"[gpu_check] {name}: {result.status} ({result.seconds} s)", flush=True)
        self.write_report()
        return result

    def command(self, result: StepResult, command: list[str], budget: float, **env: str) -> str:
        """Run a command in its own process group (killed whole at the budget); its output, or StepFailed."""
        result.commands.append(shlex.join(command))
        with subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True) as process:
            try:
                output, _ = process.communicate(timeout=budget)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                output, _ = process.communicate()
                result.log_tail = output[-3000:]
                raise StepFailed(f"timed out after {budget:.0f} s (its share of the {self.args.limit_s:.0f} s limit)")
        if process.returncode != 0:
            result.log_tail = output[-3000:]
            raise StepFailed(f"exit code {process.returncode}: {_last_error_line(output)}")
        return output


class StepFailed(Exception):
    """A step's own failure, in one line for the report."""


def _last_error_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"error|Error|Exception|Traceback", line):
            return line[:300]
    return lines[-1][:300] if lines else "no output"


# -- steps ---------------------------------------------------------------------------------------


def environment(run: Run) -> None:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
        info["cuda"] = torch.version.cuda
    run.environment = info
    if not run.args.dry_run and not torch.cuda.is_available():
        raise StepFailed("no CUDA device visible to torch; run with --dry-run on a CPU machine")


def jpeg_folder(run: Run, result: StepResult, budget: float) -> None:
    """root/{train,test}/<class>/*.jpg of smooth random images, at an ImageNet-like size."""
    import numpy as np
    from PIL import Image

    root, sizes = run.work / "jpegs", run.sizes
    rng = np.random.default_rng(0)
    width, height = sizes.jpeg_shape
    counts = {"train": sizes.jpeg_count, "test": max(16, sizes.jpeg_count // 16)}
    for split, count in counts.items():
        for index in range(count):
            label = index % 2
            path = root / split / f"class{label}" / f"{index:05d}.jpg"
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            coarse = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
            image.save(path, quality=90)
    result.figures = {"root": str(root), **{f"{split}_images": count for split, count in counts.items()},
                      "image_size": f"{width}x{height}"}


def streaming(run: Run, result: StepResult, budget: float, precision: str) -> None:
    sizes, root = run.sizes, run.work / "jpegs"
    data = ["data=imagefolder", f"data.source.root={root}", f"data.source.image_size={sizes.image_size}",
            f"{STREAMING_KEY}=false", f"data.num_workers={sizes.workers}"]
    missing = _unknown_key(data)
    if missing:
        raise StepFailed(missing)
    steps = sizes.stream_steps[precision]
    common = [*data, f"data.batch_size={sizes.stream_batch}", *_gpu(run),
              f"trainer.precision={sizes.precisions[precision]}", *_training(steps)]
    sweep = run.work / f"streaming_{precision}"
    deadline = time.monotonic() + budget
    tasks = [task for task in sizes.stream_tasks[precision] if task != "mae"]
    if tasks:
        run.command(result, _train(f"task={','.join(tasks)}", f"backbone={sizes.backbone}", *common,
                                   f"hydra.sweep.dir={sweep}/convnet"), budget)
    if "mae" in sizes.stream_tasks[precision]:
        run.command(result, _train("task=mae", *sizes.vit, *common, f"hydra.sweep.dir={sweep}/mae"),
                    max(1.0, deadline - time.monotonic()))
    result.figures = _sweep_figures(sweep, sizes.stream_batch)
    _fail_on_failed_jobs(result)


def on_device(run: Run, result: StepResult, budget: float, compile_backbone: bool) -> None:
    sizes = run.sizes
    sweep = run.work / ("compile" if compile_backbone else "on_device")
    overrides = ["task=rotation,jigsaw" if not compile_backbone else "task=rotation",
                 "backbone=resnet18" if not run.args.dry_run else "backbone=convnet",
                 "data=synthetic", f"data.source.num_train={sizes.cifar_images}", "data.source.num_test=16",
                 "data.on_device=true", f"data.batch_size={sizes.cifar_batch}",
                 f"trainer.compile={str(compile_backbone).lower()}", *_gpu(run), *_training(sizes.cifar_steps),
                 f"hydra.sweep.dir={sweep}"]
    if not run.args.dry_run:
        overrides.append("trainer.precision=bf16-mixed")
    env = {"TORCH_COMPILE_DISABLE": "1"} if compile_backbone and run.args.dry_run else {}
    output = run.command(result, _train(*overrides), budget, **env)
    result.figures = _sweep_figures(sweep, sizes.cifar_batch)
    if compile_backbone:
        fell_back = "running the backbone uncompiled" in output or "WON'T CONVERT" in output
        result.figures["compiled"] = not fell_back and not env
        if env:
            result.figures["note"] = "dry run: TORCH_COMPILE_DISABLE=1 (CPU inductor compilation takes minutes)"
    _fail_on_failed_jobs(result)


def ddp(run: Run, result: StepResult, budget: float) -> None:
    sizes = run.sizes
    sweep = run.work / "ddp"
    batch, steps = sizes.cifar_batch // 2, max(2, sizes.cifar_steps // 2)
    overrides = ["backbone=resnet18" if not run.args.dry_run else "backbone=convnet", "data=synthetic",
                 f"data.source.num_train={sizes.cifar_images}", "data.source.num_test=16", f"data.batch_size={batch}",
                 *sizes.ddp, *_training(steps), f"hydra.sweep.dir={sweep}"]
    run.command(result, _train(*overrides), budget)
    result.figures = _sweep_figures(sweep, batch)
    import torch

    result.figures["processes"] = torch.cuda.device_count() if not run.args.dry_run else 2
    _fail_on_failed_jobs(result)


def bench_end_to_end(run: Run, result: StepResult, budget: float) -> None:
    figures_file = run.work / "bench_end_to_end.json"
    run.command(result, [sys.executable, "benchmarks/bench_end_to_end.py", *run.sizes.bench_end_to_end,
                         "--json", str(figures_file)], budget)
    result.figures = json.loads(figures_file.read_text())


def bench_step_overhead(run: Run, result: StepResult, budget: float) -> None:
    output = run.command(result, [sys.executable, "benchmarks/bench_step_overhead.py",
                                  *run.sizes.bench_step_overhead], budget)
    rows = {}
    for line in output.splitlines():
        cells = line.split()
        if len(cells) >= 6 and re.fullmatch(r"[a-z_]+", cells[0]) and _numbers(cells[1:6]):
            step, supervised, ratio, images, bare = map(float, cells[1:6])
            rows[cells[0]] = {"step_s": step, "supervised_s": supervised, "ratio": ratio,
                              "ratio_probe_on_images": images, "ratio_no_probe": bare}
    if not rows:
        raise StepFailed("no result rows in the benchmark's output")
    result.figures = rows


# -- helpers -------------------------------------------------------------------------------------


def _train(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "pretextlab.train", "-m", *overrides]


def _gpu(run: Run) -> list[str]:
    return [] if run.args.dry_run else ["trainer=gpu"]


def _training(steps: int) -> list[str]:
    """A fixed number of steps, no evaluation, metrics in CSV (the images/s figures come from there)."""
    log_every = 1 if steps < 20 else 5
    return [f"++trainer.max_steps={steps}", "trainer.max_epochs=10000", f"trainer.log_every_n_steps={log_every}",
            "trainer.enable_progress_bar=false", "task.panel_images=0", "eval=none", "logger=csv"]


def _unknown_key(overrides: list[str]) -> str | None:
    """One line when the config has no streaming source (it arrives with the streaming-data work)."""
    from pretextlab.config import compose_train

    try:
        compose_train(overrides)
    except Exception as error:
        if STREAMING_KEY.rsplit(".", 1)[1] in str(error):
            return (f"{STREAMING_KEY} is not a key of data=imagefolder in this checkout: it has no streaming "
                    "source yet, so the streaming runs cannot start")
        return f"the streaming config does not compose: {str(error).splitlines()[0]}"
    return None


def _sweep_figures(sweep: Path, batch: int) -> dict[str, Any]:
    """Per job: status, steps, and training images/s (median of the logged values after the first)."""
    jobs: dict[str, Any] = {}
    for results_file in sorted(sweep.rglob("results.json")):
        results = json.loads(results_file.read_text())
        job: dict[str, Any] = {"status": results.get("status"), "steps": results.get("steps"),
                               "pretrain_s": (results.get("wall_time") or {}).get("pretrain"),
                               "batch_per_process": batch}
        rates = _logged(results_file.parent / "csv" / "metrics.csv", "throughput/images_per_sec")
        if rates:
            job["images_per_s"] = statistics.median(rates[1:] or rates)
        key = results_file.parent.relative_to(sweep).as_posix()
        jobs[key] = job
    if not jobs:
        raise StepFailed(f"no job wrote results under {sweep}")
    return jobs


def _logged(metrics_csv: Path, column: str) -> list[float]:
    import csv

    if not metrics_csv.exists():
        return []
    with metrics_csv.open() as handle:
        return [float(row[column]) for row in csv.DictReader(handle) if row.get(column)]


def _fail_on_failed_jobs(result: StepResult) -> None:
    failed = [f"{name}: {job['status']}" for name, job in result.figures.items()
              if isinstance(job, dict) and job.get("status") not in (None, "ok")]
    if failed:
        raise StepFailed("; ".join(failed))


def _numbers(cells: list[str]) -> bool:
    return all(re.fullmatch(r"\d+(\.\d+)?", cell) for cell in cells)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the script, not the GPU")
    parser.add_argument("--report", default="gpu_check_report.json", help="the one report file (JSON)")
    parser.add_argument("--work-dir", default=None, help="generated data and run directories (default: next to "
                                                         "the report)")
    parser.add_argument("--limit-s", type=float, default=None,
                        help="hard limit for the whole run (default 360 s; 900 s for a dry run on a slow CPU)")
    args = parser.parse_args()
    if args.limit_s is None:
        args.limit_s = 900.0 if args.dry_run else 360.0
    if args.work_dir is None:
        args.work_dir = str(Path(args.report).resolve().parent / "gpu_check_work")
    sizes = DRY if args.dry_run else GPU
    run = Run(args, sizes)
    run.step("environment", lambda result, budget: environment(run))
    run.step("jpeg_folder", lambda result, budget: jpeg_folder(run, result, budget))
    run.step("streaming_bf16", lambda result, budget: streaming(run, result, budget, "bf16-mixed"))
    run.step("streaming_16mixed", lambda result, budget: streaming(run, result, budget, "16-mixed"))
    run.step("on_device", lambda result, budget: on_device(run, result, budget, compile_backbone=False))
    run.step("compile", lambda result, budget: on_device(run, result, budget, compile_backbone=True))
    run.step("ddp", lambda result, budget: ddp(run, result, budget))
    run.step("bench_end_to_end", lambda result, budget: bench_end_to_end(run, result, budget))
    run.step("bench_step_overhead", lambda result, budget: bench_step_overhead(run, result, budget))
    run.write_report()
    failures = [step for step in run.steps if not step.status.startswith("ok")]
    print(f"[gpu_check] report: {run.report_path} ({len(run.steps) - len(failures)} of {len(run.steps)} steps ok, "
          f"{time.monotonic() - run.started:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
