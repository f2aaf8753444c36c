"""Empirical receptive fields (Zhou et al. 2015, "Object detectors emerge in deep scene CNNs").

A *discrepancy map* of a unit on an image: a small occluder (Zhou: 11 x 11 random pixels,
stride 3) is placed at every position, and the change of the unit's activation is recorded
there. The unit is measured at the position of its maximum on the clean image (``measure="max"``)
or over its whole map (``measure="map"``, mean absolute change). Occluded copies are evaluated in
batches, the forward pass stops at the unit's layer, and for ``"max"`` only occluder positions
that overlap the unit's theoretical receptive field are evaluated: the others cannot change it.

The *empirical receptive field* of a unit: the discrepancy maps of its top-K images, each
re-centred on the centre of the unit's maximum (in input pixels), averaged. Its size is the
side of the square with the area where the average is at least ``threshold`` (default 0.5) of
its maximum, and its shape the bounding box of that region.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from convscope.attribution.occlusion import relevant_boxes, score_drops
from convscope.attribution.targets import Target
from convscope.errors import UserInputError
from convscope.recorder import Recorder
from convscope.results import Result
from convscope.subject import Subject
from convscope.units import Unit

FILLS = ("noise", "gray", "zero", "mean")


@dataclass
class DiscrepancyMap(Result):
    """``values`` (Py, Px): |change| of the unit for the occluder at each grid position;
    ``pixels`` (H, W): each pixel's mean over the occluders covering it; ``peak``: the unit's
    map position (y, x) measured; ``evaluated``: occluded forward passes actually run."""

    unit: Unit
    values: np.ndarray
    pixels: np.ndarray
    peak: tuple[int, int]
    evaluated: int

    def to_image(self, cell: int = 224):
        """The per-pixel map on a grey ground (inferno, scaled to its maximum), ``cell`` px wide."""
        from PIL import Image

        from convscope.render.topk import heat_overlay

        grey = np.full((*self.pixels.shape, 3), 128, dtype=np.uint8)
        top = float(self.pixels.max())
        img = heat_overlay(grey, self.pixels, top if top > 0 else None, alpha=1.0)
        return img.resize((cell, round(cell * img.height / img.width)), Image.NEAREST)

    def headline(self) -> str:
        return f"discrepancy map of {self.unit} at peak {self.peak} ({self.evaluated} occlusions)"


def _filler(subject: Subject, x: torch.Tensor, fill: str, patch: int, seed: int) -> torch.Tensor:
    if fill == "zero":
        return torch.zeros_like(x)
    if fill == "gray":
        return subject.preprocess.normalize(torch.full_like(x, 0.5))
    if fill == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    # One random patch, tiled: every position sees the same random pixels (seeded).
    gen = torch.Generator().manual_seed(seed)
    tile = torch.rand(1, 3, patch, patch, generator=gen).to(x)
    reps = (math.ceil(x.shape[2] / patch), math.ceil(x.shape[3] / patch))
    big = tile.repeat(1, 1, *reps)[:, :, : x.shape[2], : x.shape[3]]
    return subject.preprocess.normalize(big)


def peak_position(subject: Subject, x: torch.Tensor, layer: str, channel: int) -> tuple[int, int]:
    """Map position (y, x) of the channel's maximum for one image (1, 3, H, W)."""
    with torch.inference_mode(), Recorder(subject, [layer], stop=True) as rec:
        subject(x)
    m = rec[layer][0, channel]
    if m.dim() == 0:
        return 0, 0
    flat = int(m.flatten().argmax())
    return flat // m.shape[1], flat % m.shape[1]


def discrepancy_map(
    subject: Subject,
    x: torch.Tensor,
    layer: str,
    channel: int,
    *,
    patch: int = 11,
    stride: int = 3,
    fill: str = "noise",
    measure: str = "max",
    batch: int = 64,
    seed: int = 0,
    skip: bool = True,
) -> DiscrepancyMap:
    """Discrepancy map of channel ``channel`` of ``layer`` on one preprocessed image (1, 3, H, W).
    ``skip=False`` evaluates every position (for checking; results are identical)."""
    if fill not in FILLS:
        raise UserInputError(f"fill must be one of {', '.join(FILLS)}")
    if measure not in ("max", "map"):
        raise UserInputError("measure must be 'max' or 'map'")
    info = subject.layer(layer)
    if info.units is None or not 0 <= channel < info.units:
        raise UserInputError(f"{info.name} has no unit {channel}")
    x = x[:1].to(subject.device)
    H, W = x.shape[2:]
    if patch > min(H, W) or patch < 1 or stride < 1:
        raise UserInputError("need 1 <= patch <= image size and stride >= 1")
    py, px = peak_position(subject, x, info.name, channel)
    ys = list(range(0, H - patch + 1, stride))
    xs = list(range(0, W - patch + 1, stride))
    boxes = [(y0, x0) for y0 in ys for x0 in xs]
    if measure == "max":
        target = Target(
            "unit", unit=Unit(info.name, channel, py, px) if info.is_map else Unit(info.name, channel)
        )
    else:
        target = _MapChange(info.name, channel, subject, x)
    keep = relevant_boxes(subject, boxes, (patch, patch), target) if skip else boxes
    filler = _filler(subject, x, fill, patch, seed)
    crop = _rf_crop(subject, x, target, info) if skip and measure == "max" else None
    if crop is not None:  # evaluate on the receptive field alone: same values, smaller images
        (oy, ox, ey, ex), local = crop
        shifted = [(y0 - oy, x0 - ox) for y0, x0 in keep]
        drops = (
            score_drops(
                subject,
                x[:, :, oy:ey, ox:ex],
                local,
                shifted,
                (patch, patch),
                filler[:, :, oy:ey, ox:ex],
                batch,
            )
            .abs()
            .cpu()
        )
    else:
        drops = score_drops(subject, x, target, keep, (patch, patch), filler, batch).abs().cpu()
    values = np.zeros((len(ys), len(xs)), dtype=np.float32)
    pixels = torch.zeros(H, W)
    counts = torch.zeros(H, W)
    for y0 in ys:
        for x0 in xs:
            counts[y0 : y0 + patch, x0 : x0 + patch] += 1
    index = {b: k for k, b in enumerate(keep)}
    for y0, x0 in boxes:
        k = index.get((y0, x0))
        if k is None:
            continue
        d = float(drops[k])
        values[y0 // stride, x0 // stride] = d
        pixels[y0 : y0 + patch, x0 : x0 + patch] += d
    pixels = torch.where(counts > 0, pixels / counts.clamp_min(1), torch.zeros_like(pixels))
    return DiscrepancyMap(Unit(info.name, channel), values, pixels.numpy(), (py, px), len(keep))


def _rf_crop(subject: Subject, x: torch.Tensor, target: Target, info):
    """The part of the image inside the neuron's receptive field, with its corner on the layer's
    stride grid so that every intermediate layer's grid lines up, and the neuron's position in
    the crop's map. None when that cannot be guaranteed, or when the crop does not reproduce the
    neuron's value exactly (models whose padding depends on the input size)."""
    rf, u = info.rf, target.unit
    if rf is None or rf.is_global or rf.global_context or not info.is_map or u.y is None:
        return None
    jy, jx = rf.jump
    if not (float(jy).is_integer() and float(jx).is_integer()):
        return None
    jy, jx = int(jy), int(jx)
    b = rf.box(u.y, u.x)
    H, W = x.shape[2:]
    oy, ox = max(0, (b.y0 // jy) * jy), max(0, (b.x0 // jx) * jx)
    ey, ex = min(H, b.y1 + 1), min(W, b.x1 + 1)
    local = Target("unit", unit=Unit(u.layer, u.channel, u.y - oy // jy, u.x - ox // jx))
    crop = x[:, :, oy:ey, ox:ex]
    try:
        with torch.inference_mode():
            a = target.score(subject, x)
            b_ = local.score(subject, crop)
    except (RuntimeError, IndexError):
        return None
    if not torch.allclose(a, b_, rtol=1e-4, atol=1e-5):
        return None
    return (oy, ox, ey, ex), local


class _MapChange(Target):
    """Target whose score is minus the mean absolute change of the whole channel map relative
    to the clean image (so that score(clean) - score(occluded) = mean |change|)."""

    def __init__(self, layer, channel, subject, x):
        super().__init__("unit", unit=Unit(layer, channel))
        with torch.inference_mode(), Recorder(subject, [layer], stop=True) as rec:
            subject(x)
        object.__setattr__(self, "_clean", rec[layer][:, channel].clone())

    def from_activation(self, a):
        if a.dim() == 2:
            a = a[:, :, None, None]
        return -(a[:, self.unit.channel] - self._clean).abs().flatten(1).mean(1)


@dataclass
class EmpiricalRF(Result):
    """Averaged, re-centred discrepancy map of a unit (``average`` (S, S), centred on the unit's
    peak), its size (px, side of the equal-area square above ``threshold`` x max), bounding box
    height/width, and the theoretical size for comparison; ``images`` (K, H, W, 3) in [0, 1]
    are the top images as the model saw them (for the picture)."""

    unit: Unit
    average: np.ndarray
    size: float
    height: int
    width: int
    theoretical: float
    threshold: float
    maps: list[DiscrepancyMap]
    images: np.ndarray | None = None

    def to_image(self):
        """The top images with their discrepancy maps, then the averaged map (one row)."""
        from convscope.render.receptive import empirical_rf_figure

        if self.images is None:
            raise ValueError("this empirical RF holds no images to draw on")
        return empirical_rf_figure(self.images, self)

    def headline(self) -> str:
        return f"empirical RF of {self.unit}: {self.size:.0f} px (theoretical {self.theoretical:.0f} px)"


def empirical_rf(
    subject: Subject,
    images: torch.Tensor,
    layer: str,
    channel: int,
    *,
    threshold: float = 0.5,
    window: int | None = None,
    **options,
) -> EmpiricalRF:
    """Empirical RF of a unit from its top images (preprocessed batch (K, 3, H, W)).
    ``window`` is the side of the re-centred average (default: twice the theoretical RF, at
    most twice the image); ``options`` go to :func:`discrepancy_map`."""
    info = subject.layer(layer)
    rf = info.rf
    theo = float(rf.size[0]) if rf is not None and not rf.is_global else float(max(images.shape[2:]))
    H, W = images.shape[2:]
    side = window or int(min(2 * theo, 2 * max(H, W)))
    side += (side + 1) % 2  # odd, so the centre is a pixel
    half = side // 2
    acc = np.zeros((side, side))
    cnt = np.zeros((side, side))
    maps = []
    for i in range(images.shape[0]):
        dm = discrepancy_map(subject, images[i : i + 1], info.name, channel, **options)
        maps.append(dm)
        if rf is not None and not rf.is_global and info.is_map:
            cy, cx = (round(v) for v in rf.center(*dm.peak))
        else:
            cy, cx = H // 2, W // 2
        y0, x0 = cy - half, cx - half
        sy0, sx0 = max(y0, 0), max(x0, 0)
        sy1, sx1 = min(y0 + side, H), min(x0 + side, W)
        if sy1 <= sy0 or sx1 <= sx0:
            continue
        acc[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] += dm.pixels[sy0:sy1, sx0:sx1]
        cnt[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] += 1
    avg = np.where(cnt > 0, acc / np.maximum(cnt, 1), 0.0)
    top = avg.max()
    mask = avg >= threshold * top if top > 0 else np.zeros_like(avg, dtype=bool)
    ys, xs = np.nonzero(mask)
    height = int(ys.max() - ys.min() + 1) if len(ys) else 0
    width = int(xs.max() - xs.min() + 1) if len(xs) else 0
    seen = subject.preprocess.denormalize(images).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return EmpiricalRF(
        Unit(info.name, channel),
        avg,
        float(np.sqrt(mask.sum())),
        height,
        width,
        theo,
        threshold,
        maps,
        seen.astype(np.float32),
    )


def layer_summary(rfs: Sequence[EmpiricalRF]) -> dict:
    """Mean empirical size vs theoretical size for the units of one layer."""
    sizes = np.array([r.size for r in rfs])
    return {
        "units": len(rfs),
        "empirical_mean": float(sizes.mean()) if len(sizes) else 0.0,
        "empirical_std": float(sizes.std()) if len(sizes) else 0.0,
        "theoretical": rfs[0].theoretical if rfs else 0.0,
    }
