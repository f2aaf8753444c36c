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


def crop_or_pad(size: tuple[int, int], value: float = 0.5) -> Transform:
    """Centre crop or pad (with grey ``value``, like :func:`pad`) each side to exactly ``size``
    (H, W); deterministic, so any random shift drawn before it is kept."""
    th, tw = size

    def t(x, gen):
        h, w = x.shape[2:]
        if (h, w) == (th, tw):
            return x
        y0, x0 = max(0, (h - th) // 2), max(0, (w - tw) // 2)
        x = x[:, :, y0 : y0 + th, x0 : x0 + tw]
        ph, pw = th - x.shape[2], tw - x.shape[3]
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="constant", value=value)
        return x

    return t


def at_size(size: tuple[int, int], transform: Transform | None = None) -> Transform:
    """``transform`` for a model that runs only at ``size`` (H, W) (vision transformers, Swin,
    MaxViT): the canvas is resized (bilinear) to ``size`` if it differs, ``transform`` is
    applied, and the result is centre-cropped or grey-padded back to ``size``.

    Crop/pad rather than resizing back: resizing would undo the random scale (the model would
    see the same object size at every step), while crop/pad keeps every augmentation honest:
    a scaled image shows its content larger or smaller in the model's fixed field of view,
    jitter stays a shift (the random crop offset survives the centred crop), rotation is
    unchanged. The canvas itself is resized first because its pixels are what the user asked
    for (any ``size``), and the model's field of view should cover all of them."""
    size = (int(size[0]), int(size[1]))
    fit = crop_or_pad(size)

    def t(x, gen):
        if tuple(x.shape[2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        if transform is not None:
            x = transform(x, gen)
        return fit(x, gen)

    return t
