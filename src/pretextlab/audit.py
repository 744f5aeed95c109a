"""Shortcut audit: can a trained pretext model solve its puzzle from inputs that carry no content?

    python -m pretextlab.audit outputs/sweeps/<sweep>/<job> [more run dirs] [--images 2000]

For every run directory the trained task is rebuilt from ``results.json`` and
``checkpoints/last.ckpt`` and its pretext accuracy is measured twice on the same images, with the
training-time augmentation (the DataModule's pad-crop in the task's ``crop_padding_mode``, flip)
and the task's own random transform:

- on the images as they are (**content**);
- on :meth:`PretextTask.content_free_images` of them (**content-free**: by default each image
  flattened to its mean colour), so that all a model can still read is what the task's transform
  adds — padding strips, borders, tile and patch positions.

A model that learnt the puzzle from content is at chance on content-free inputs; one that is far
above chance there has found a shortcut and is **flagged**. The result goes into the run's
``results.json`` under ``audit`` (the table's status column shows the flag) and is printed.
Tasks without a chance accuracy (reconstruction: inpainting, MAE) are reported as not applicable.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from pretextlab.results import RESULTS_FILE, write_results
from pretextlab.tasks.base import PretextTask

#: Smallest excess over chance (absolute accuracy) that counts as "far above chance".
DEFAULT_MARGIN = 0.05


class AuditError(ValueError):
    """A run directory the audit cannot use (the message names what is missing)."""


def flag_threshold(chance: float, samples: int, margin: float = DEFAULT_MARGIN) -> float:
    """Content-free accuracy above which a task is flagged.

    Chance plus the larger of ``margin`` and four binomial standard errors of a chance-level
    guesser over ``samples`` puzzles, so that a small audit never flags sampling noise.
    """
    standard_error = math.sqrt(chance * (1.0 - chance) / max(samples, 1))
    return chance + max(margin, 4.0 * standard_error)


def _uint8(images: torch.Tensor) -> torch.Tensor:
    return images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def pretext_accuracy(task: PretextTask, datamodule: Any, images: torch.Tensor, content_free: bool,
                     batch_size: int = 250, seed: int = 0) -> float:
    """Mean pretext accuracy of ``task`` (eval mode) on uint8 ``images`` with training augmentation.

    ``content_free``: the images go through ``task.content_free_images`` BEFORE the augmentation,
    so that the pad-crop's borders are added to flat images exactly as in training.
    """
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    was_training = task.training
    task.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size]
                if content_free:
                    batch = _uint8(task.content_free_images(batch.float().div(255.0)))
                floats = datamodule.prepare_images(batch, augment=True, padding_mode=task.crop_padding_mode)
                labels = torch.full((len(batch),), -1, dtype=torch.long)
                output = task.pretext_step(floats, labels)
                total += float(output.metrics["acc"]) * len(batch)
                count += len(batch)
    finally:
        task.train(was_training)
        torch.set_rng_state(generator_state)
    return total / max(count, 1)


def audit_task(task: PretextTask, datamodule: Any, images: torch.Tensor, margin: float = DEFAULT_MARGIN,
               seed: int = 0) -> dict[str, Any]:
    """The audit of one trained task on uint8 ``images``: both accuracies, chance, threshold, flag."""
    chance = task.chance_accuracy
    if chance is None:
        return {"applicable": False, "flagged": False,
                "reason": "no chance accuracy: a reconstruction task has no puzzle to guess"}
    content = pretext_accuracy(task, datamodule, images, content_free=False, seed=seed)
    empty = pretext_accuracy(task, datamodule, images, content_free=True, seed=seed)
    threshold = flag_threshold(float(chance), len(images), margin)
    return {
        "applicable": True,
        "content_acc": content,
        "content_free_acc": empty,
        "chance": float(chance),
        "threshold": threshold,
        "flagged": empty > threshold,
        "images": len(images),
        "padding_mode": task.crop_padding_mode,
        "seed": seed,
    }


def load_run(run_dir: Path) -> tuple[PretextTask, Any, dict[str, Any]]:
    """Rebuild a run's task (trained weights loaded) and DataModule from its directory."""
    from hydra.utils import instantiate

    from pretextlab.checkpoints import read_checkpoint

    path = run_dir / "results.json"
    if not path.is_file():
        raise AuditError(f"{run_dir} has no results.json; the audit needs a run directory written by pretextlab.train")
    try:
        results = json.loads(path.read_text())
        config = results["config"]
    except (json.JSONDecodeError, KeyError) as error:
        raise AuditError(f"{path} does not hold a run's resolved config: {error}") from error
    if results.get("status") != "ok":
        raise AuditError(f"{run_dir} did not finish (status {results.get('status')!r}): nothing to audit")
    datamodule = instantiate(config["data"])
    task: PretextTask = instantiate(config["task"], _convert_="all", backbone=instantiate(config["backbone"]),
                                    num_classes=datamodule.num_classes, mean=datamodule.mean, std=datamodule.std,
                                    image_size=datamodule.image_size)
    if task.pretrains:
        checkpoint = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
        task.load_state_dict(checkpoint["state_dict"])
    return task, datamodule, results


def audit_run(run_dir: str | Path, images: int = 2000, margin: float = DEFAULT_MARGIN, seed: int = 0,
              write: bool = True) -> dict[str, Any]:
    """Audit one run directory on the first ``images`` test images; record it in ``results.json``.

    The pretext task never sees labels, so its own validation images (the test split, as in
    training's pretext validation) are used; no label is read.
    """
    folder = Path(run_dir)
    task, datamodule, results = load_run(folder)
    if images < 1:
        raise AuditError(f"--images={images} must be >= 1")
    split = datamodule.split("test")
    audit = audit_task(task, datamodule, split.images[:images], margin, seed)
    if write:
        results["audit"] = audit
        write_results(folder / RESULTS_FILE, results)
    return audit


def describe(run_dir: str | Path, audit: dict[str, Any]) -> str:
    """One line per run for the terminal."""
    if not audit.get("applicable"):
        return f"{run_dir}: not applicable ({audit.get('reason')})"
    verdict = "FLAGGED: shortcut" if audit["flagged"] else "ok"
    return (f"{run_dir}: {verdict} — pretext acc {100 * audit['content_acc']:.1f} % on images, "
            f"{100 * audit['content_free_acc']:.1f} % without content (chance {100 * audit['chance']:.1f} %, "
            f"flag above {100 * audit['threshold']:.1f} %; {audit['images']} images, padding {audit['padding_mode']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretextlab.audit", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories written by pretextlab.train")
    parser.add_argument("--images", type=int, default=2000, help="test images to audit on (default 2000)")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                        help=f"least excess over chance that flags a task (default {DEFAULT_MARGIN})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only; leave results.json alone")
    args = parser.parse_args(argv)
    flagged = False
    for run_dir in args.run_dirs:
        try:
            audit = audit_run(run_dir, args.images, args.margin, args.seed, write=not args.no_write)
        except (ValueError, FileNotFoundError, OSError) as error:
            print(f"pretextlab: error: {error}", file=sys.stderr)
            return 2
        flagged |= bool(audit.get("flagged"))
        print(describe(run_dir, audit))
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
