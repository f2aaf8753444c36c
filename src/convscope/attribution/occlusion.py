"""Occlusion sensitivity (Zeiler & Fergus 2014, sec. 4.2): slide an occluder over the image and
measure how much the target score drops.

The attribution of a pixel is the average, over the window positions that cover it, of
``score(image) - score(occluded image)`` (Captum's ``Occlusion`` with a window over all
channels defines it the same way, so the two agree numerically at equal settings).

Speed: occluded copies are evaluated ``batch`` at a time; unit targets stop the forward pass
at their layer; and for a unit at one map position, windows that do not overlap its
receptive field are skipped, since they cannot change its value (their difference is exactly
0), unless the layer has global context (squeeze-excitation).
"""

from __future__ import annotations

import math

import torch

from convscope.attribution.base import Method, register
from convscope.attribution.batching import auto_batch
from convscope.attribution.targets import Target
from convscope.errors import UserInputError
from convscope.imageops import gaussian_blur

FILLS = ("gray", "zero", "mean", "blur", "noise")


@register
class Occlusion(Method):
    """Options: ``window=32`` and ``stride=16`` (px, int or (h, w)); ``fill="gray"`` (mid-grey
    in pixel space, the paper's grey square), ``"zero"`` (0 in model-input space, Captum's
    baseline), ``"mean"`` (the image's mean colour), ``"blur"`` (a Gaussian-blurred copy,
    sigma = window / 4) or ``"noise"`` (uniform noise, seeded); ``batch`` occluded copies per
    forward pass (by default sized by memory: :func:`~convscope.attribution.batching.auto_batch`).
    The map is signed: positive where hiding the pixels lowers the score."""

    name = "occlusion"
    takes = ("window", "stride", "batch", "fill", "seed")
    signed = True
    fills = FILLS

    def attribute(self, x, target):
        wh, ww = _pair(self.options.get("window", 32))
        sh, sw = _pair(self.options.get("stride", 16))
        batch = auto_batch(self.subject, x, self.options.get("batch"))
        fill = self.options.get("fill", "gray")
        if fill not in FILLS:
            raise UserInputError(f"fill must be one of {', '.join(FILLS)}")
        n, _, H, W = x.shape
        if wh > H or ww > W:
            raise UserInputError(f"window {wh}x{ww} is larger than the {H}x{W} input")
        # Window starts every stride; a last, partial window covers any remainder (as Captum).
        ys = [i * sh for i in range(math.ceil((H - wh) / sh) + 1)]
        xs = [i * sw for i in range(math.ceil((W - ww) / sw) + 1)]
        maps = torch.zeros(n, H, W, device=x.device)
        counts = torch.zeros(H, W, device=x.device)
        for y0 in ys:
            for x0 in xs:
                counts[y0 : y0 + wh, x0 : x0 + ww] += 1
        boxes = [(y0, x0) for y0 in ys for x0 in xs]
        for i in range(n):
            xi = x[i : i + 1]
            t = target.for_image(i)
            keep = relevant_boxes(self.subject, boxes, (wh, ww), t)
            drops = score_drops(
                self.subject,
                xi,
                t,
                keep,
                (wh, ww),
                self._filler(xi),
                batch,
                on_batch=lambda done, i=i, keep=keep: self.report(i + done / max(len(keep), 1), n),
            )
            for (y0, x0), d in zip(keep, drops):
                maps[i, y0 : y0 + wh, x0 : x0 + ww] += d
        maps = torch.where(counts > 0, maps / counts.clamp_min(1), torch.zeros_like(maps))
        return maps, maps[:, None].expand(-1, x.shape[1], -1, -1)

    def _filler(self, xi: torch.Tensor) -> torch.Tensor:
        fill = self.options.get("fill", "gray")
        pre = self.subject.preprocess
        if fill == "zero":
            return torch.zeros_like(xi)
        if fill == "gray":
            return pre.normalize(torch.full_like(xi, 0.5))
        if fill == "mean":
            return xi.mean(dim=(2, 3), keepdim=True).expand_as(xi)
        if fill == "noise":
            gen = torch.Generator(device=xi.device).manual_seed(int(self.options.get("seed", 0)))
            return pre.normalize(torch.rand(xi.shape, generator=gen, device=xi.device))
        sigma = max(_pair(self.options.get("window", 32))) / 4
        return gaussian_blur(xi, sigma)


def relevant_boxes(subject, boxes, window, target: Target):
    """The window positions (top-left corners) that can change ``target``: all of them, except
    for a single neuron, where only windows overlapping its receptive field can (others leave it
    exactly unchanged), unless its layer has global context."""
    unit = target.unit
    if unit is None or unit.y is None:
        return list(boxes)
    rf = subject.layer(unit.layer).rf
    if rf is None or rf.is_global or rf.global_context:
        return list(boxes)
    b = rf.box(unit.y, unit.x)
    wh, ww = window
    return [
        (y0, x0)
        for y0, x0 in boxes
        if y0 <= b.y1 and y0 + wh - 1 >= b.y0 and x0 <= b.x1 and x0 + ww - 1 >= b.x0
    ]


def score_drops(
    subject,
    xi: torch.Tensor,
    target: Target,
    boxes,
    window,
    filler: torch.Tensor,
    batch: int = 32,
    on_batch=None,
) -> torch.Tensor:
    """score(xi) - score(xi with the window at each box replaced by ``filler``), (len(boxes),),
    evaluating ``batch`` occluded copies per forward pass (stopped at a unit's layer). Windows
    may reach past the image's edges; only their part inside is occluded. ``on_batch(done)`` is
    told how many boxes are done after each batch."""
    wh, ww = window
    H, W = xi.shape[2:]
    out = torch.zeros(len(boxes), device=xi.device)
    with torch.inference_mode():
        clean = target.score(subject, xi)
        for s in range(0, len(boxes), batch):
            chunk = boxes[s : s + batch]
            occluded = xi.repeat(len(chunk), 1, 1, 1)
            for j, (y0, x0) in enumerate(chunk):
                ya, yb, xa, xb = max(y0, 0), min(y0 + wh, H), max(x0, 0), min(x0 + ww, W)
                occluded[j, :, ya:yb, xa:xb] = filler[0, :, ya:yb, xa:xb]
            out[s : s + len(chunk)] = clean - target.score(subject, occluded)
            if on_batch is not None:
                on_batch(s + len(chunk))
    return out


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[1])
    return int(v), int(v)
