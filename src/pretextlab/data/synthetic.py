"""The embedded dataset: procedurally drawn outdoor scenes, deterministic in (seed, index).

Every pretext task needs signal that a real photo would give it, so each scene has
- a canonical up: sky (with sun and clouds) above a ground plane, objects standing on the ground;
  half of the scenes are close-ups on a plain backdrop, where only the upright object shows "up";
- colours tied to content: blue/orange skies, green/sand/snow/soil grounds, green tree crowns,
  brown trunks, black wheels, yellow lamps, white snowmen — so that colourisation has something
  to learn; the large parts of most objects share one palette, so colour alone does not name the class;
- objects made of parts in a fixed arrangement (a roof above walls, a crown above a trunk), so that
  jigsaw and relative-position tasks carry signal;
- a class label (the kind of object) whose position, size and colours vary, so that a linear
  classifier on raw pixels does not solve it easily (see the README for measured accuracies).

Randomness comes from a counter-based hash of (seed, split, index, stream): any image can be
regenerated alone, in any order, on any machine. Rendering is vectorised over images: the only
Python loops run over object classes and parts, never over images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

CLASS_NAMES: tuple[str, ...] = (
    "tree", "house", "car", "snowman", "mushroom", "lamp", "rocket", "flower", "table", "person",
)

# Colour palettes in RGB [0, 1]; a part picks one entry per image, then jitters it slightly.
_BROWN = [(0.45, 0.28, 0.12), (0.36, 0.22, 0.10)]
_GREEN = [(0.15, 0.50, 0.15), (0.25, 0.62, 0.20), (0.10, 0.40, 0.18)]
_RED = [(0.80, 0.12, 0.10), (0.65, 0.10, 0.12)]
_WHITE = [(0.96, 0.96, 0.98)]
_CREAM = [(0.93, 0.88, 0.75)]
_DARK = [(0.08, 0.08, 0.08)]
_GREY = [(0.30, 0.30, 0.32)]
_YELLOW = [(0.98, 0.88, 0.20)]
_ORANGE = [(0.95, 0.55, 0.10)]
_JEANS = [(0.15, 0.25, 0.55)]
_SKIN = [(0.92, 0.75, 0.60), (0.60, 0.42, 0.30)]
# One palette shared by the large parts of most classes: colour alone must not name the class.
_SHARED = [(0.85, 0.15, 0.12), (0.15, 0.30, 0.80), (0.92, 0.82, 0.20), (0.93, 0.93, 0.93),
           (0.45, 0.28, 0.12), (0.95, 0.55, 0.10), (0.55, 0.30, 0.75), (0.45, 0.45, 0.48)]

# Parts in the object's frame: u to the right, v upward from the ground, both in object heights.
# ("rect", u0, u1, v0, v1) | ("ellipse", cu, cv, ru, rv) | ("triangle", v0, v1, half_base)
# | ("cap", cu, cv, ru, rv) (upper half-ellipse). A palette name of "same:<k>" reuses part k's colour.
_PARTS: dict[int, list[tuple[tuple[float | str, ...], list[tuple[float, float, float]] | str]]] = {
    0: [(("rect", -0.07, 0.07, 0.0, 0.45), _BROWN), (("ellipse", 0.0, 0.68, 0.30, 0.30), _GREEN)],
    1: [
        (("rect", -0.35, 0.35, 0.0, 0.50), _SHARED),
        (("triangle", 0.50, 0.88, 0.47), _SHARED),
        (("rect", -0.07, 0.07, 0.0, 0.22), _BROWN[1:]),
    ],
    2: [
        (("rect", -0.50, 0.50, 0.10, 0.34), _SHARED),
        (("rect", -0.25, 0.25, 0.34, 0.55), "same:0"),
        (("ellipse", -0.30, 0.10, 0.11, 0.11), _DARK),
        (("ellipse", 0.30, 0.10, 0.11, 0.11), _DARK),
    ],
    3: [
        (("ellipse", 0.0, 0.19, 0.21, 0.19), _WHITE),
        (("ellipse", 0.0, 0.48, 0.15, 0.13), _WHITE),
        (("ellipse", 0.0, 0.70, 0.11, 0.10), _WHITE),
        (("ellipse", 0.04, 0.70, 0.04, 0.02), _ORANGE),
    ],
    4: [(("rect", -0.08, 0.08, 0.0, 0.36), _CREAM), (("cap", 0.0, 0.36, 0.36, 0.28), _SHARED)],
    5: [(("rect", -0.035, 0.035, 0.0, 0.85), _GREY), (("ellipse", 0.0, 0.90, 0.10, 0.10), _YELLOW)],
    6: [
        (("rect", -0.12, 0.12, 0.0, 0.70), _SHARED),
        (("triangle", 0.70, 1.0, 0.125), _SHARED),
        (("rect", -0.24, 0.24, 0.0, 0.14), _RED),
    ],
    7: [
        (("rect", -0.03, 0.03, 0.0, 0.55), _GREEN),
        (("ellipse", 0.0, 0.66, 0.16, 0.16), _SHARED),
        (("ellipse", 0.0, 0.66, 0.055, 0.055), _ORANGE),
    ],
    8: [
        (("rect", -0.45, 0.45, 0.40, 0.50), _SHARED),
        (("rect", -0.40, -0.32, 0.0, 0.40), "same:0"),
        (("rect", 0.32, 0.40, 0.0, 0.40), "same:0"),
    ],
    9: [
        (("rect", -0.10, 0.10, 0.0, 0.36), _JEANS),
        (("rect", -0.14, 0.14, 0.36, 0.66), _SHARED),
        (("ellipse", 0.0, 0.77, 0.10, 0.10), _SKIN),
    ],
}

_SKY_TOP = [(0.20, 0.40, 0.85), (0.35, 0.60, 0.95), (0.15, 0.25, 0.60)]
_SKY_HORIZON = [(0.70, 0.85, 1.00), (0.98, 0.70, 0.40), (0.85, 0.90, 0.98)]
_GROUNDS = [(0.30, 0.62, 0.22), (0.85, 0.75, 0.50), (0.92, 0.93, 0.96), (0.45, 0.32, 0.20)]

_MASK64 = (1 << 64) - 1


def _hash_uniform(seed: int, split: int, indices: np.ndarray, stream: int) -> np.ndarray:
    """Uniform [0, 1) numbers from a splitmix64 hash of (seed, split, index, stream)."""
    with np.errstate(over="ignore"):
        key = (
            np.uint64(seed & _MASK64) * np.uint64(0x9E3779B97F4A7C15)
            ^ np.uint64(split) * np.uint64(0xD1B54A32D192ED03)
            ^ np.uint64(stream) * np.uint64(0x94D049BB133111EB)
        )
        z = indices.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9) + key
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass
class _Random:
    """Per-image random draws for one batch of indices; ``stream`` separates independent draws."""

    seed: int
    split: int
    indices: np.ndarray

    def uniform(self, stream: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        u = _hash_uniform(self.seed, self.split, self.indices, stream)
        return torch.from_numpy(low + (high - low) * u).float()

    def choice_color(self, stream: int, palette: list[tuple[float, float, float]]) -> torch.Tensor:
        pick = (self.uniform(stream) * len(palette)).long().clamp(max=len(palette) - 1)
        colors = torch.tensor(palette, dtype=torch.float32)[pick]  # (N, 3)
        jitter = torch.stack([self.uniform(stream + 1 + c, -0.06, 0.06) for c in range(3)], dim=1)
        return (colors + jitter).clamp(0, 1)


def _inside(shape: tuple[float | str, ...], u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    kind = shape[0]
    p = [float(x) for x in shape[1:]]
    if kind == "rect":
        return (u >= p[0]) & (u <= p[1]) & (v >= p[2]) & (v <= p[3])
    if kind in ("ellipse", "cap"):
        inside = ((u - p[0]) / p[2]) ** 2 + ((v - p[1]) / p[3]) ** 2 <= 1.0
        return inside & (v >= p[1]) if kind == "cap" else inside
    if kind == "triangle":
        v0, v1, half = p
        return (v >= v0) & (v <= v1) & (u.abs() <= half * (v1 - v) / (v1 - v0))
    raise ValueError(kind)


def render_scenes(
    indices: np.ndarray, seed: int = 0, split: int = 0, image_size: int = 32, supersample: int = 2,
    closeup_fraction: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render the scenes at ``indices``: ``(N, 3, S, S)`` uint8 images and ``(N,)`` int64 labels."""
    indices = np.asarray(indices, dtype=np.int64)
    n = len(indices)
    rng = _Random(seed, split, indices)
    size = image_size * supersample
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y = coords.view(1, size, 1).expand(n, size, size)
    x = coords.view(1, 1, size).expand(n, size, size)

    # Sky: vertical gradient from a top colour to a horizon colour.
    horizon = rng.uniform(1, 0.55, 0.72).view(n, 1, 1)
    sky_top = rng.choice_color(10, _SKY_TOP)
    sky_low = rng.choice_color(20, _SKY_HORIZON)
    t = (y / horizon).clamp(0, 1).unsqueeze(1)  # (N, 1, S, S)
    image = sky_top.view(n, 3, 1, 1) * (1 - t) + sky_low.view(n, 3, 1, 1) * t

    # Sun and clouds live in the sky only.
    sun_on = (rng.uniform(30) < 0.5).view(n, 1, 1)
    sun_x, sun_y = rng.uniform(31, 0.1, 0.9).view(n, 1, 1), rng.uniform(32, 0.08, 0.3).view(n, 1, 1)
    sun = sun_on & (((x - sun_x) ** 2 + (y - sun_y) ** 2) <= 0.07**2)
    image = torch.where(sun.unsqueeze(1), torch.tensor([1.0, 0.92, 0.35]).view(1, 3, 1, 1), image)
    for cloud in range(2):
        on = (rng.uniform(40 + 10 * cloud) < 0.6).view(n, 1, 1)
        cx = rng.uniform(41 + 10 * cloud, 0.0, 1.0).view(n, 1, 1)
        cy = rng.uniform(42 + 10 * cloud, 0.08, 0.35).view(n, 1, 1)
        rx = rng.uniform(43 + 10 * cloud, 0.10, 0.20).view(n, 1, 1)
        mask = on & ((((x - cx) / rx) ** 2 + ((y - cy) / (rx * 0.4)) ** 2) <= 1.0) & (y < horizon)
        image = torch.where(mask.unsqueeze(1), torch.full((1, 3, 1, 1), 0.97), image)

    # Ground: one of four materials, darker towards the viewer, with a fine texture.
    ground_color = rng.choice_color(60, _GROUNDS)
    depth = ((y - horizon) / (1 - horizon)).clamp(0, 1).unsqueeze(1)
    texture = torch.sin(x * 90 + y * 37 + rng.uniform(65, 0, 6.28).view(n, 1, 1)).unsqueeze(1) * 0.04
    ground = ground_color.view(n, 3, 1, 1) * (1.0 - 0.35 * depth) + texture
    image = torch.where((y >= horizon).unsqueeze(1), ground, image)

    # Close-ups (a share of the scenes): the object fills more of the frame in front of a plain
    # textured backdrop, with no sky or horizon. Here only the object itself shows which way is up,
    # so rotation and jigsaw cannot be solved from the background layout alone.
    closeup = (rng.uniform(80) < closeup_fraction).view(n, 1, 1)
    backdrop_color = rng.choice_color(81, _GROUNDS + _SKY_HORIZON)
    backdrop_texture = torch.sin(x * 61 - y * 53 + rng.uniform(85, 0, 6.28).view(n, 1, 1)).unsqueeze(1) * 0.05
    backdrop = backdrop_color.view(n, 3, 1, 1) + backdrop_texture
    image = torch.where(closeup.unsqueeze(1), backdrop, image)

    # The object: its class decides its parts; position and size vary per image.
    labels = torch.from_numpy(indices % len(CLASS_NAMES)).long()
    height = rng.uniform(70, 0.28, 0.60)
    center_x = rng.uniform(71, 0.20, 0.80)
    base_y = horizon.view(n) + rng.uniform(72, 0.04, 0.22)
    closeup_flat = closeup.view(n)
    height = torch.where(closeup_flat, rng.uniform(74, 0.55, 0.80), height)
    base_y = torch.where(closeup_flat, rng.uniform(75, 0.82, 0.95), base_y)
    flip = torch.where(rng.uniform(73) < 0.5, -1.0, 1.0)
    for class_index, parts in _PARTS.items():
        members = (labels == class_index).nonzero(as_tuple=True)[0]
        if len(members) == 0:
            continue
        sub = _Random(seed, split, indices[members.numpy()])
        u = (x[members] - center_x[members].view(-1, 1, 1)) / height[members].view(-1, 1, 1)
        u = u * flip[members].view(-1, 1, 1)
        v = (base_y[members].view(-1, 1, 1) - y[members]) / height[members].view(-1, 1, 1)
        part_colors: list[torch.Tensor] = []
        canvas = image[members]
        for part_index, (shape, palette) in enumerate(parts):
            if isinstance(palette, str):
                color = part_colors[int(palette.split(":")[1])]
            else:
                color = sub.choice_color(100 + 10 * part_index, palette)
            part_colors.append(color)
            mask = _inside(shape, u, v).unsqueeze(1)
            canvas = torch.where(mask, color.view(-1, 3, 1, 1), canvas)
        image[members] = canvas

    if supersample > 1:
        image = torch.nn.functional.avg_pool2d(image, supersample)
    image_uint8 = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return image_uint8, labels
