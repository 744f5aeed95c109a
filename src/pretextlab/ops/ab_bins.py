"""The quantised ab plane of colourisation (Zhang et al. 2016): gamut bins, soft encoding, class
rebalancing, the sparse soft cross-entropy and the annealed-mean decoding.

Batched, device-agnostic and float32 under autocast, like :mod:`pretextlab.ops.lab` (whose Lab
conversion constants it shares). ab bins are the centres of a regular grid of spacing ``grid``
(multiples of ``grid``), kept when some sRGB colour has its ab in that bin's cell
(:func:`in_gamut_ab_bins`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from pretextlab.ops.lab import LAB_EPSILON, LAB_KAPPA, RGB_TO_XYZ, WHITE_D65, exact_float, srgb_to_linear


def _cube_surface_linear_rgb(samples_per_face_edge: int, samples_per_cube_edge: int) -> torch.Tensor:
    """Linear-RGB samples ``(3, N)`` of the six faces and, denser, the twelve edges of the RGB cube."""
    # the transfer curve acts per channel, so linearise the 1-D steps once instead of every sample
    face_steps = srgb_to_linear(torch.linspace(0, 1, samples_per_face_edge, dtype=torch.float64))
    edge_steps = srgb_to_linear(torch.linspace(0, 1, samples_per_cube_edge, dtype=torch.float64))
    u, v = (grid.reshape(-1) for grid in torch.meshgrid(face_steps, face_steps, indexing="ij"))
    samples = []
    for axis in range(3):
        for level in (0.0, 1.0):
            channels = [u, v]
            channels.insert(axis, torch.full_like(u, level))
            samples.append(torch.stack(channels))
            for other_level in (0.0, 1.0):
                channels = [torch.full_like(edge_steps, level), torch.full_like(edge_steps, other_level)]
                channels.insert(axis, edge_steps)
                samples.append(torch.stack(channels))
    return torch.cat(samples, dim=1)


@functools.lru_cache(maxsize=8)
def _in_gamut_ab_bins_cpu(grid: float, samples_per_face_edge: int, samples_per_cube_edge: int) -> torch.Tensor:
    # The ab footprint of the sRGB solid equals the ab footprint of its surface (every vertical line
    # through an inner point meets the surface), so the cube's faces, sampled densely, reach every
    # bin that any in-gamut colour reaches. Slivers at the footprint's tips sit on the cube's edges,
    # which get a denser sampling. float64 so that cell edges are decided the same way everywhere.
    linear = _cube_surface_linear_rgb(samples_per_face_edge, samples_per_cube_edge)
    white = torch.tensor(WHITE_D65, dtype=torch.float64).view(3, 1)
    xyz = torch.tensor(RGB_TO_XYZ, dtype=torch.float64) @ linear / white
    f = torch.where(xyz > LAB_EPSILON, xyz.clamp(min=LAB_EPSILON) ** (1 / 3), (LAB_KAPPA * xyz + 16) / 116)
    ab = torch.stack([500 * (f[0] - f[1]), 200 * (f[1] - f[2])], dim=1)
    cells = torch.round(ab / grid).long()  # nearest grid centre = the bin's cell
    # one integer key per cell: a 1-D unique is far faster than a unique over rows
    offset = int(cells.abs().max()) + 1
    width = 2 * offset + 1
    keys = torch.unique((cells[:, 0] + offset) * width + (cells[:, 1] + offset))  # sorted: by a, then b
    cells = torch.stack([keys // width - offset, keys % width - offset], dim=1)
    return (cells.double() * grid).float()


def in_gamut_ab_bins(grid: float = 10.0, samples_per_face_edge: int = 256, samples_per_cube_edge: int = 8192,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Centres ``(Q, 2)`` (a, b) of the grid cells that some sRGB colour falls into, sorted by (a, b).

    A cell is the square of side ``grid`` around a centre at a multiple of ``grid``; a colour falls
    into the cell of its nearest centre. With ``grid=10`` this keeps Q = 262 bins, a in [-90, 100],
    b in [-110, 90] (the same set as a 2048² sampling of every cube face). Zhang et al. report 313;
    their released set was not derived this way (cells with a neighbour in this set: 324; cells
    whose centre itself is an sRGB colour at some L: 229). Cached per argument set.
    """
    if grid <= 0:
        raise ValueError(f"ab grid spacing must be > 0, got {grid}")
    return _in_gamut_ab_bins_cpu(float(grid), int(samples_per_face_edge), int(samples_per_cube_edge)).to(device)


def squared_distances(ab: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``ab`` ``(N, 2)`` × ``centres`` ``(Q, 2)`` → ``(N, Q)`` squared Euclidean distances.

    Expanded as |x|² - 2 x·c + |c|² (one matrix product: about twice as fast as broadcasting the
    differences); in float32 with |a|, |b| ≤ 130 the rounding error measured at most 0.0093, far under
    the 100 (squared spacing) that separates neighbouring bins.
    """
    return (ab.pow(2).sum(1, keepdim=True) - 2 * ab @ centres.T + centres.pow(2).sum(1)).clamp(min=0)


def _pixels(ab: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(B, 2, H, W)`` ab map → ``(B·H·W, 2)`` pixel rows and the ``(B, H, W)`` shape to restore."""
    if ab.ndim != 4 or ab.shape[1] != 2:
        raise ValueError(f"expected an ab map of shape (B, 2, H, W), got {tuple(ab.shape)}")
    batch, _, height, width = ab.shape
    return ab.float().permute(0, 2, 3, 1).reshape(-1, 2), (batch, height, width)


def nearest_bin(ab: torch.Tensor, centres: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Index of the nearest bin centre for every pixel of a ``(B, 2, H, W)`` ab map → ``(B, H, W)``.

    Processed in chunks of ``chunk`` pixels so that the (pixels × Q) distance table stays small.
    """
    with exact_float(ab):
        rows, shape = _pixels(ab)
        centres = centres.to(rows)
        indices = [squared_distances(part, centres).argmin(dim=1) for part in rows.split(chunk)]
        return torch.cat(indices).view(shape)


@dataclass(frozen=True)
class BinLattice:
    """Where the bin centres sit on their lattice ``grid · Z²``, for :func:`soft_encode`'s window search.

    ``table[i, j]`` is the index of the bin at lattice point ``(low + (i, j) - radius)``, or -1; the
    table is padded by ``radius`` on every side so that every window around a clamped cell fits.
    Build it once with :func:`bin_lattice` (its check that the centres lie on the lattice reads a
    value back from the device, a host sync on a GPU) and pass it to every step.
    """

    grid: float
    radius: int
    low: torch.Tensor  # (2,) int64: the smallest lattice coordinates of a bin
    high: torch.Tensor  # (2,) int64: the largest
    table: torch.Tensor  # (A, B) int64


def bin_lattice(centres: torch.Tensor, grid: float, radius: int = 2) -> BinLattice:
    """The :class:`BinLattice` of ``centres`` ``(Q, 2)`` (on their device) at spacing ``grid``."""
    lattice = torch.round(centres / grid).long()  # (Q, 2)
    if not torch.allclose(lattice.to(centres) * grid, centres, atol=1e-3):
        raise ValueError(f"the bin centres are not on a lattice of spacing {grid}")
    low, high = lattice.min(0).values, lattice.max(0).values
    extent = high - low + 1 + 2 * radius
    table = torch.full((int(extent[0]), int(extent[1])), -1, dtype=torch.long, device=centres.device)
    table[lattice[:, 0] - low[0] + radius, lattice[:, 1] - low[1] + radius] = torch.arange(
        len(centres), device=centres.device)
    return BinLattice(float(grid), int(radius), low, high, table)


def _nearest_in_window(rows: torch.Tensor, centres: torch.Tensor, neighbours: int,
                       lattice: BinLattice) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``neighbours`` nearest centres of each row, searched in a window of the lattice only.

    Centres sit on the lattice ``grid · Z²``. Each row looks at the (2r+1)² lattice points around
    its nearest lattice point (r = ``radius``) instead of all Q centres: 25 candidates instead of
    262 at the default grid. Exact: every lattice point outside the window lies at least
    ``safe = (r+1)·grid − max(|row − cell·grid|)`` away, so a row whose ``neighbours``-th candidate
    is closer than ``safe`` has its answer inside the window; the few rows that do not (at the
    gamut's edge, where the window holds few bins, or rows far outside the grid) are searched in
    full. Returns squared distances and indices, ``(N, neighbours)`` each, nearest first.
    """
    grid, radius, low, high, table = lattice.grid, lattice.radius, lattice.low, lattice.high, lattice.table
    cell = torch.round(rows / grid).long()
    cell = torch.maximum(torch.minimum(cell, high), low)  # far-away rows: the fallback handles them
    steps = torch.arange(-radius, radius + 1, device=rows.device)
    offset_a, offset_b = (offset.reshape(1, -1) for offset in torch.meshgrid(steps, steps, indexing="ij"))
    # flat indices and take(): a 1-D gather is several times faster than 2-D advanced indexing
    flat = (cell[:, :1] - low[0] + radius + offset_a) * table.shape[1] + (cell[:, 1:] - low[1] + radius + offset_b)
    candidates = table.view(-1).take(flat)  # (N, (2r+1)²), -1 where the lattice point is no bin
    present = candidates >= 0
    known = candidates.clamp(min=0)
    distances = ((rows[:, :1] - centres[:, 0].take(known)).square_()
                 .add_((rows[:, 1:] - centres[:, 1].take(known)).square_())
                 .masked_fill_(~present, float("inf")))
    nearest_sq, slots = distances.topk(neighbours, dim=1, largest=False, sorted=True)
    indices = candidates.gather(1, slots)
    safe = (radius + 1) * grid - (rows - cell.to(rows) * grid).abs().amax(dim=1)
    unsure = ~(nearest_sq[:, -1] < safe.clamp(min=0).pow(2))
    if unsure.any():
        full_sq, full_indices = squared_distances(rows[unsure], centres).topk(
            neighbours, dim=1, largest=False, sorted=True)
        nearest_sq[unsure], indices[unsure] = full_sq, full_indices
    return nearest_sq, indices


def soft_encode(ab: torch.Tensor, centres: torch.Tensor, neighbours: int = 5, sigma: float = 5.0,
                lattice: BinLattice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zhang et al.'s soft targets: a Gaussian over the ``neighbours`` nearest bins of each pixel.

    ``ab`` ``(B, 2, H, W)`` → ``(indices, weights)``, both ``(B, H, W, neighbours)``; ``indices``
    are sorted nearest first (so ``indices[..., 0]`` is the hard bin) and ``weights`` are
    ``exp(-d² / 2σ²)`` normalised to sum to 1 per pixel. Kept sparse: the dense ``(B, Q, H, W)``
    target is never needed, the loss gathers the log-probabilities at ``indices``.

    With ``lattice`` (:func:`bin_lattice` of the centres at the spacing they were built with,
    :func:`in_gamut_ab_bins`; build it once) the search looks only at the lattice window around
    each pixel (:func:`_nearest_in_window`, same result); without it, every pixel is compared with
    every centre.
    """
    if neighbours < 1 or neighbours > centres.shape[0]:
        raise ValueError(f"soft encoding needs 1 <= neighbours <= number of bins ({centres.shape[0]}), "
                         f"got {neighbours}")
    if sigma <= 0:
        raise ValueError(f"soft-encoding sigma must be > 0, got {sigma}")
    with exact_float(ab):
        rows, shape = _pixels(ab)
        centres = centres.to(rows)
        if lattice is None:
            nearest_sq, indices = squared_distances(rows, centres).topk(neighbours, dim=1, largest=False,
                                                                        sorted=True)
        else:
            nearest_sq, indices = _nearest_in_window(rows, centres, neighbours, lattice)
        # normalised Gaussian weights exp(-d²/2σ²) / Σ, shifted by the nearest d² (column 0, the
        # smallest) so that far-away pixels do not underflow; written out because torch.softmax
        # over rows of 5 is several times slower than these three small passes
        weights = ((nearest_sq[:, :1] - nearest_sq) / (2 * sigma**2)).exp_()
        weights /= weights.sum(dim=1, keepdim=True)
        return indices.view(*shape, neighbours), weights.view(*shape, neighbours)


def densify(indices: torch.Tensor, weights: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Sparse soft targets ``(B, H, W, K)`` → dense distributions ``(B, Q, H, W)`` (tests, plots)."""
    dense = weights.new_zeros(*indices.shape[:-1], num_bins)
    dense.scatter_(-1, indices, weights)
    return dense.permute(0, 3, 1, 2)


class _SparseSoftCrossEntropy(torch.autograd.Function):
    """Cross-entropy against soft targets that are non-zero on K of Q classes, in three passes.

    ``-Σ_k w_k log softmax(z)[i_k] = logsumexp(z) · Σ_k w_k - Σ_k w_k z[i_k]``. The forward pass
    reads the logits twice (max with its argmax, then the exponential sum) and never writes a
    ``(…, Q)`` tensor; the backward pass writes the one gradient ``softmax(z) · Σw - scatter(w)``.
    The autograd composition ``log_softmax → gather`` instead writes the log-probabilities, a
    zero-filled ``(…, Q)`` gather gradient and the softmax gradient: about twice the memory traffic.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, indices: torch.Tensor,
                weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        peak, argmax = logits.max(dim=-1, keepdim=True)
        log_sum = (logits - peak).exp_().sum(dim=-1, keepdim=True).log_().add_(peak)  # logsumexp
        loss = log_sum.squeeze(-1) * weights.sum(-1) - (weights * logits.gather(-1, indices)).sum(-1)
        ctx.save_for_backward(logits, log_sum, indices, weights)
        ctx.mark_non_differentiable(argmax)
        return loss, argmax.squeeze(-1)

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_argmax: torch.Tensor | None) -> Any:
        logits, log_sum, indices, weights = ctx.saved_tensors
        grad_loss = grad_loss.unsqueeze(-1)
        grad = (logits - log_sum).exp_().mul_(grad_loss * weights.sum(-1, keepdim=True))
        grad.scatter_add_(-1, indices, -weights * grad_loss)
        return grad, None, None


def sparse_soft_cross_entropy(logits: torch.Tensor, indices: torch.Tensor,
                              weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row cross-entropy of ``logits`` ``(..., Q)`` against sparse soft targets, and the argmax.

    ``indices`` ``(..., K)`` (int64) and ``weights`` ``(..., K)`` are the targets as
    :func:`soft_encode` gives them: row r's target puts ``weights[r, k]`` on class
    ``indices[r, k]``; being targets, the weights get no gradient. Returns the loss ``(...)``,
    equal to ``-(weights * log_softmax(logits).gather(-1, indices)).sum(-1)``, and
    ``logits.argmax(-1)`` ``(...)``, which the forward pass finds anyway (for accuracy metrics).
    Computed in float32, also under autocast.
    """
    if indices.shape != weights.shape or indices.shape[:-1] != logits.shape[:-1]:
        raise ValueError(f"sparse targets {tuple(indices.shape)} / weights {tuple(weights.shape)} do not match "
                         f"logits {tuple(logits.shape)} (..., Q) with (..., K) targets")
    with exact_float(logits):
        loss, argmax = _SparseSoftCrossEntropy.apply(logits.float(), indices, weights.float().detach())
    return loss, argmax


def bin_histogram(bin_indices: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Counts ``(Q,)`` float of hard bin indices of any shape."""
    return torch.bincount(bin_indices.reshape(-1), minlength=num_bins).float()


def smooth_distribution(distribution: torch.Tensor, centres: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """Gaussian-smooth a distribution over bins in the ab plane (σ in ab units) and renormalise.

    The kernel ``exp(-|c_q - c_r|² / 2σ²)`` acts on the bin centres themselves, which is a Gaussian
    filter of the ab histogram restricted to the in-gamut bins.
    """
    if sigma <= 0:
        return distribution / distribution.sum()
    with exact_float(distribution):
        centres = centres.to(distribution.device).float()
        kernel = torch.exp(-squared_distances(centres, centres) / (2 * sigma**2))
        smoothed = kernel @ distribution.float()
        return smoothed / smoothed.sum()


def rebalancing_weights(distribution: torch.Tensor, uniform_mix: float = 0.5) -> torch.Tensor:
    """Class-rebalancing weights ``w ∝ ((1-λ)p + λ/Q)^-1`` normalised so that ``Σ_q p_q w_q = 1``.

    ``distribution`` is the (smoothed) empirical bin distribution p; ``uniform_mix`` is λ.
    """
    if not 0.0 <= uniform_mix <= 1.0:
        raise ValueError(f"rebalancing needs 0 <= lambda <= 1, got {uniform_mix}")
    p = distribution.float() / distribution.float().sum()
    num_bins = p.numel()
    weights = 1.0 / ((1 - uniform_mix) * p + uniform_mix / num_bins)
    return weights / (p * weights).sum()


def annealed_mean(logits: torch.Tensor, centres: torch.Tensor, temperature: float = 0.38,
                  dim: int = 1) -> torch.Tensor:
    """Decode per-pixel bin logits to ab by the annealed mean of Zhang et al. (T = 0.38).

    ``f_T(z) ∝ exp(log z / T)`` re-sharpens the predicted distribution z before taking its mean
    over bin centres: T = 1 is the plain mean (desaturated), T → 0 the mode (patchy). Because
    ``log softmax(x) / T = x / T + const``, this is ``softmax(logits / T)`` weighted centres.
    ``logits`` ``(B, Q, H, W)`` (bins at ``dim``) → ``(B, 2, H, W)``.
    """
    if temperature <= 0:
        raise ValueError(f"annealed-mean temperature must be > 0, got {temperature}")
    with exact_float(logits):
        probabilities = torch.softmax(logits.float() / temperature, dim=dim)
        centres = centres.to(probabilities)
        return torch.einsum("bq...,qc->bc...", probabilities.movedim(dim, 1), centres)
