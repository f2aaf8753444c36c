"""Random transforms applied to the image at every optimisation step (transformation
robustness): features that survive small shifts, scalings and rotations look like image
structure rather than adversarial noise. All take and return (N, 3, H, W) in [0, 1] and draw
from a seeded ``torch.Generator``; one draw per step is shared by the batch."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _choice(values: Sequence, gen: torch.Generator):
    return values[int(torch.randint(len(values), (1,), generator=gen))]


def pad(width: int, value: float = 0.5) -> Transform:
    def t(x, gen):
        return F.pad(x, (width,) * 4, mode="constant", value=value)

    return t


def jitter(d: int) -> Transform:
    """Random translation by up to ``d`` - 1 px (a crop)."""

    def t(x, gen):
        dy, dx = (int(v) for v in torch.randint(d, (2,), generator=gen))
        return x[:, :, dy : x.shape[2] - d + dy + 1, dx : x.shape[3] - d + dx + 1]

    return t


def random_scale(scales: Sequence[float]) -> Transform:
    def t(x, gen):
        s = float(_choice(scales, gen))
        size = (max(1, round(x.shape[2] * s)), max(1, round(x.shape[3] * s)))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    return t


def random_rotate(degrees: Sequence[float]) -> Transform:
    def t(x, gen):
        a = math.radians(float(_choice(degrees, gen)))
        rot = torch.tensor(
            [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
            dtype=x.dtype,
            device=x.device,
        )
        grid = F.affine_grid(rot.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    return t


def blur(sigma: float = 0.5) -> Transform:
    def t(x, gen):
        from convscope.imageops import gaussian_blur

        return gaussian_blur(x, sigma)

    return t


def compose(transforms: Sequence[Transform]) -> Transform:
    def t(x, gen):
        for f in transforms:
            x = f(x, gen)
        return x

    return t


def standard() -> Transform:
    """Lucid's standard set: pad 12, jitter 8, scale 0.9-1.1, rotate +-10 deg, jitter 4."""
    return compose(
        [
            pad(12),
            jitter(8),
            random_scale([1 + (i - 5) / 50 for i in range(11)]),
            random_rotate(list(range(-10, 11))),
            jitter(4),
        ]
    )


def none() -> Transform:
    return compose([])
