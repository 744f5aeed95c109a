"""CIE Lab conversion: sRGB in [0, 1] ↔ CIE L*a*b* (D65), and the sRGB transfer curves.

Everything here is batched over images and pixels, runs on whatever device its input lives on, and
computes in float32 even under ``torch.autocast`` (a bf16 matrix product would cost about one Lab
unit of accuracy, far above the 1e-3 the tests demand).

Conventions:

- RGB is sRGB in [0, 1], channels at dim ``-3``: ``(3, H, W)`` or ``(B, 3, H, W)``;
- Lab is CIE L*a*b* under the D65 white point with the 2° observer (what ``skimage.color.rgb2lab``
  uses by default): L in [0, 100], a and b roughly in [-110, 110].

Colourisation's quantised ab plane (bins, soft encoding, rebalancing, the loss) is in
:mod:`pretextlab.ops.ab_bins`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

#: sRGB (linear) → CIE XYZ, D65 (IEC 61966-2-1; the matrix skimage uses).
RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
#: D65 reference white, 2° observer (skimage's ``"D65", "2"``).
WHITE_D65 = (0.95047, 1.0, 1.08883)
LAB_EPSILON = 216.0 / 24389.0  # (6/29)^3: below it the cube root turns into a line
LAB_KAPPA = 24389.0 / 27.0


@contextlib.contextmanager
def exact_float(tensor: torch.Tensor) -> Iterator[None]:
    """Turn autocast off for the block: colour maths must stay float32 under bf16/fp16 training."""
    device_type = tensor.device.type if tensor.device.type in ("cuda", "cpu", "xpu", "mps") else "cpu"
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def _check_channels(tensor: torch.Tensor, what: str) -> None:
    if tensor.ndim < 3 or tensor.shape[-3] != 3:
        raise ValueError(f"{what} must have 3 channels at dim -3, i.e. (3, H, W) or (B, 3, H, W); "
                         f"got shape {tuple(tensor.shape)}")


def _mix_channels(matrix: tuple[tuple[float, ...], ...], tensor: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(matrix, dtype=tensor.dtype, device=tensor.device)
    return torch.einsum("ij,...jhw->...ihw", weights, tensor)


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """Undo the sRGB transfer curve (piecewise: linear toe, 2.4 power above 0.04045)."""
    return torch.where(rgb > 0.04045, ((rgb.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4, rgb / 12.92)


def linear_to_srgb(linear: torch.Tensor) -> torch.Tensor:
    """Apply the sRGB transfer curve (the inverse of :func:`srgb_to_linear`)."""
    return torch.where(linear > 0.0031308, 1.055 * linear.clamp(min=0.0031308) ** (1 / 2.4) - 0.055,
                       linear * 12.92)


#: sRGB decoding above the toe is ((c + 0.055) / 1.055)^2.4 = (c + 0.055)^2.4 · 1.055^-2.4; the constant
#: factor is folded into the RGB → XYZ matrix so that the pixel pass skips one multiplication.
_SRGB_SCALE = 1.055 ** -2.4
_SRGB_TOE = 0.04045
#: RGB → XYZ with the white point divided out and the sRGB scale folded in (see above).
_RGB_TO_XYZ_FOR_LAB = tuple(tuple(v * _SRGB_SCALE / w for v in row)
                            for row, w in zip(RGB_TO_XYZ, WHITE_D65, strict=True))
#: (f(X), f(Y), f(Z)) → (L + 16, a, b): L = 116 f(Y) - 16, a = 500 (f(X) - f(Y)), b = 200 (f(Y) - f(Z)).
_F_TO_LAB = ((0.0, 116.0, 0.0), (500.0, -500.0, 0.0), (0.0, 200.0, -200.0))
#: On the CPU the batch is converted in slices of about this many values, so that the dozen passes
#: over each slice run in cache (benchmarks/bench_color.py: 1.3x at 96 px, batch 256; no gain at 32 px).
_CPU_SLICE_VALUES = 1 << 18


def _lab_of_slice(rgb: torch.Tensor) -> torch.Tensor:
    """The conversion of :func:`rgb_to_lab` on one float32 ``(B, 3, H, W)`` slice, in few passes.

    Both piecewise curves are written without ``torch.where``: the power branch is evaluated on the
    input clamped to its domain, and the linear branch enters as a correction that is zero above
    the knee (``-(knee - x)⁺ · slope``). The two branches meet at the knee (sRGB: to 1e-9, the
    standard's own rounding; Lab: exactly), so this equals the piecewise definition. The in-place
    ops act on fresh intermediates only, which autograd supports.
    """
    # sRGB → linear, up to the factor _SRGB_SCALE folded into the matrix below
    linear = (rgb + 0.055).clamp_(min=_SRGB_TOE + 0.055).pow_(2.4)
    linear.sub_((_SRGB_TOE - rgb).clamp_(min=0.0), alpha=1.0 / (12.92 * _SRGB_SCALE))
    xyz = _mix_channels(_RGB_TO_XYZ_FOR_LAB, linear)
    # f(t) = t^(1/3) above ε, (κ t + 16) / 116 below: the line continues the cube root at ε
    f = xyz.clamp(min=LAB_EPSILON).pow_(1.0 / 3.0)
    f.add_((xyz - LAB_EPSILON).clamp_(max=0.0), alpha=LAB_KAPPA / 116.0)
    lab = _mix_channels(_F_TO_LAB, f)
    lab[:, 0].sub_(16.0)
    return lab


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] → CIE Lab (D65), float32, same shape; channels at dim -3."""
    _check_channels(rgb, "rgb")
    with exact_float(rgb):
        images = rgb.float().reshape(-1, *rgb.shape[-3:])
        per_image = images[0].numel() if len(images) else 1
        step = max(1, _CPU_SLICE_VALUES // per_image)
        if rgb.device.type != "cpu" or len(images) <= step or (torch.is_grad_enabled() and rgb.requires_grad):
            return _lab_of_slice(images).view(rgb.shape)
        lab = torch.empty_like(images)
        for start in range(0, len(images), step):
            lab[start:start + step] = _lab_of_slice(images[start:start + step])
        return lab.view(rgb.shape)


def lab_to_linear_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab (D65) → linear RGB, NOT clipped: components outside [0, 1] mean out of gamut."""
    _check_channels(lab, "lab")
    with exact_float(lab):
        lightness, a, b = lab.float().unbind(dim=-3)
        fy = (lightness + 16) / 116
        f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=-3)
        xyz = torch.where(f ** 3 > LAB_EPSILON, f ** 3, (116 * f - 16) / LAB_KAPPA)
        white = torch.tensor(WHITE_D65, dtype=xyz.dtype, device=xyz.device).view(3, 1, 1)
        xyz_to_rgb = torch.linalg.inv(torch.tensor(RGB_TO_XYZ, dtype=torch.float64)).tolist()
        return _mix_channels(tuple(map(tuple, xyz_to_rgb)), xyz * white)


def lab_to_rgb(lab: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """CIE Lab (D65) → sRGB; ``clip`` limits out-of-gamut colours to [0, 1] (as skimage does)."""
    linear = lab_to_linear_rgb(lab)
    if clip:
        linear = linear.clamp(0, 1)
    with exact_float(linear):
        return linear_to_srgb(linear)


def scaled_lightness(lightness: torch.Tensor) -> torch.Tensor:
    """CIE L in [0, 100] → [-1, 1] (``L / 50 - 1``): how a backbone that sees lightness only takes it."""
    return lightness / 50.0 - 1.0


def lightness_input(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] ``(..., 3, H, W)`` → its scaled CIE L ``(..., 1, H, W)``: the input of a 1-channel
    backbone (colorization's, and the random-init floor built for it)."""
    return scaled_lightness(rgb_to_lab(rgb)[..., :1, :, :])


def chroma(lab: torch.Tensor) -> torch.Tensor:
    """Per-pixel chroma ``sqrt(a² + b²)`` of a Lab tensor: ``(..., 3, H, W)`` → ``(..., H, W)``."""
    return lab[..., 1:, :, :].float().pow(2).sum(dim=-3).sqrt()
