"""Localisation vs identification with manufactured stimuli (seed 000): paste a unit's best
patch into a neutral background at every position, and compare its response to the intact
patch with the responses to shuffled and block-scrambled versions of it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from convscope.errors import UserInputError
from convscope.recorder import Recorder
from convscope.results import Result
from convscope.subject import Subject


@dataclass
class Stimuli(Result):
    """``centre`` (Py, Px): response of the unit at the centre of the map with the patch's
    top-left corner at each grid position; ``anywhere`` (Py, Px): the unit's maximum over its
    map (detection wherever the patch is); ``intact``, ``shuffled`` and ``scrambled``: maximum
    response to the patch on the background centre, and the means over ``n`` pixel-shuffled and
    block-scrambled versions."""

    layer: str
    channel: int
    centre: np.ndarray
    anywhere: np.ndarray
    intact: float
    shuffled: float
    scrambled: float
    stride: int

    def to_image(self):
        """Position tuning (centre unit, anywhere) and the intact / shuffled / scrambled bars."""
        from convscope.render.plots import figure_to_image, stimuli_figure

        return figure_to_image(stimuli_figure(self))

    def headline(self) -> str:
        return (
            f"stimuli for {self.layer}:{self.channel}: intact {self.intact:.3g}, "
            f"shuffled {self.shuffled:.3g}, scrambled {self.scrambled:.3g}"
        )


def best_patch(subject: Subject, image, layer: str, y: int, x: int) -> np.ndarray:
    """The receptive-field crop (h, w, 3) in [0, 1] around map position (y, x) of ``layer`` in
    ``image`` (PIL) as the model sees it; the whole image for layers without a spatial map."""
    seen = np.asarray(subject.preprocess.resize_only(image)) / 255.0
    info = subject.layer(layer)
    if info.rf is None or info.rf.is_global or not info.is_map:
        return seen
    b = info.rf.box(y, x).clip(*subject.input_size)
    return seen[b.y0 : b.y1 + 1, b.x0 : b.x1 + 1]


def _responses(subject: Subject, images: torch.Tensor, layer: str, channel: int, batch: int):
    centre, anywhere = [], []
    for s in range(0, images.shape[0], batch):
        x = subject.preprocess.normalize(images[s : s + batch].to(subject.device))
        with torch.inference_mode(), Recorder(subject, [layer], stop=True) as rec:
            subject(x)
        a = rec[layer]
        a = a[:, channel] if a.dim() == 4 else a[:, channel, None, None]
        centre.append(a[:, a.shape[1] // 2, a.shape[2] // 2].cpu())
        anywhere.append(a.flatten(1).amax(1).cpu())
    return torch.cat(centre), torch.cat(anywhere)


def stimuli(
    subject: Subject,
    patch: np.ndarray | torch.Tensor,
    layer: str,
    channel: int,
    *,
    stride: int = 8,
    background: float = 0.5,
    n: int = 8,
    blocks: int = 4,
    batch: int = 32,
    seed: int = 0,
) -> Stimuli:
    """Position tuning and scrambling tests of a unit with ``patch`` ((h, w, 3) in [0, 1])."""
    info = subject.layer(layer)
    if info.units is None or not 0 <= channel < info.units:
        raise UserInputError(f"{info.name} has no unit {channel}")
    p = torch.as_tensor(np.asarray(patch), dtype=torch.float32)
    if p.dim() != 3 or p.shape[2] != 3:
        raise UserInputError("patch must be (h, w, 3)")
    p = p.permute(2, 0, 1)
    H, W = subject.input_size
    h, w = p.shape[1:]
    if h > H or w > W:
        raise UserInputError(f"patch {h}x{w} is larger than the {H}x{W} input")
    ys = list(range(0, H - h + 1, stride))
    xs = list(range(0, W - w + 1, stride))
    canvas = torch.full((len(ys) * len(xs), 3, H, W), background)
    for k, (y0, x0) in enumerate((y, x) for y in ys for x in xs):
        canvas[k, :, y0 : y0 + h, x0 : x0 + w] = p
    centre, anywhere = _responses(subject, canvas, info.name, channel, batch)
    gen = torch.Generator().manual_seed(seed)
    cy, cx = (H - h) // 2, (W - w) // 2

    def placed(q):
        img = torch.full((1, 3, H, W), background)
        img[0, :, cy : cy + h, cx : cx + w] = q
        return img

    variants = [placed(p)]
    for _ in range(n):
        perm = torch.randperm(h * w, generator=gen)
        variants.append(placed(p.flatten(1)[:, perm].view(3, h, w)))
    bh, bw = max(1, h // blocks), max(1, w // blocks)
    tiles = [(y, x) for y in range(0, bh * blocks, bh) for x in range(0, bw * blocks, bw)]
    for _ in range(n):
        q = p.clone()
        order = torch.randperm(len(tiles), generator=gen)
        for (ty, tx), k in zip(tiles, order.tolist()):
            sy, sx = tiles[k]
            q[:, ty : ty + bh, tx : tx + bw] = p[:, sy : sy + bh, sx : sx + bw]
        variants.append(placed(q))
    _, best = _responses(subject, torch.cat(variants), info.name, channel, batch)
    return Stimuli(
        info.name,
        channel,
        centre.view(len(ys), len(xs)).numpy(),
        anywhere.view(len(ys), len(xs)).numpy(),
        float(best[0]),
        float(best[1 : n + 1].mean()),
        float(best[n + 1 :].mean()),
        stride,
    )
