"""Index selections that every protocol shares: the validation carve and the low-shot subset.

Both are pure functions of the labels and a seed, so two protocols (or two runs) with the same
seed select the same images, and nothing here ever sees the test split.
"""

from __future__ import annotations

import torch


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def select_shots(labels: torch.Tensor, shots_per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of exactly ``shots_per_class`` labelled images of every class present (sorted).

    The choice is a seeded random draw per class, so it is the same for every protocol and every
    task of a sweep. Unlabeled entries (``-1``) are never chosen. A class with fewer labelled
    images than asked for is an error: silently using fewer would make "k-shot" a lie.
    """
    if shots_per_class < 1:
        raise ValueError(f"shots_per_class must be >= 1 or null (all labels), got {shots_per_class}")
    generator = _generator(seed)
    chosen: list[torch.Tensor] = []
    for cls in torch.unique(labels[labels >= 0]).tolist():
        members = torch.nonzero(labels == cls, as_tuple=False).flatten()
        if len(members) < shots_per_class:
            raise ValueError(
                f"shots_per_class={shots_per_class}, but class {cls} has only {len(members)} labelled "
                "training images; lower shots_per_class or use more training images"
            )
        order = torch.randperm(len(members), generator=generator)
        chosen.append(members[order[:shots_per_class]])
    if not chosen:
        raise ValueError("no labelled training images: low-shot evaluation needs labels")
    return torch.cat(chosen).sort().values


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fit indices, val indices)`` of ``labels``: about ``val_fraction`` of every class held out.

    Stratifying keeps every class in both parts even for small (low-shot) training sets; a class
    with a single image stays entirely in the fit part. Returns an empty val part when no class
    has two images (1-shot): the caller must then skip the hyper-parameter sweep.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    generator = _generator(seed)
    fit: list[torch.Tensor] = []
    val: list[torch.Tensor] = []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls, as_tuple=False).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        if len(members) < 2:
            fit.append(members)
            continue
        num_val = min(len(members) - 1, max(1, round(len(members) * val_fraction)))
        val.append(members[:num_val])
        fit.append(members[num_val:])
    empty = torch.zeros(0, dtype=torch.long)
    fit_index = torch.cat(fit).sort().values if fit else empty
    val_index = torch.cat(val).sort().values if val else empty
    return fit_index, val_index


def labelled_split(labels: torch.Tensor, val_fraction: float, shots_per_class: int | None = None,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train indices, val indices)`` of the labelled entries of ``labels`` (``-1`` = unlabeled).

    The validation part is carved first (stratified, ``val_fraction`` of every class); with
    ``shots_per_class=k`` the training part is then k images per class drawn from the rest, so the
    semi-supervised subsets (RotNet's 20 / 100 / 400 labels per class) never overlap validation and
    every k of one seed shares the same validation images. Both draws are seeded.
    """
    labelled = torch.nonzero(labels >= 0, as_tuple=False).flatten()
    if len(labelled) == 0:
        raise ValueError("evaluation needs labelled training images, but every train label is -1")
    fit, val = stratified_split(labels[labelled], val_fraction, seed)
    fit, val = labelled[fit], labelled[val]
    if shots_per_class is not None:
        fit = fit[select_shots(labels[fit], shots_per_class, seed)]
    return fit, val
