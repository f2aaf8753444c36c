"""Top-K pictures of a unit: receptive-field patches cut from the original images, and the
unit's activation map over each whole image."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from convscope.inputs.sources import ImageSource
from convscope.preprocess import Preprocess
from convscope.receptive import Box, ReceptiveField
from convscope.recorder import Recorder
from convscope.render.topk import heat_overlay, patch_from_original, topk_grid
from convscope.subject import Subject

if TYPE_CHECKING:  # ScanResult.to_image draws with render_topk: no import back at run time
    from convscope.scan.result import UnitTopK


def unit_maps(
    subject: Subject,
    x: torch.Tensor,
    layer: str,
    unit: int,
    direction: np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """Activation maps (N, H, W) of channel ``unit`` (or of ``direction``, (C,)) for inputs ``x``."""
    with torch.inference_mode(), Recorder(subject, [layer], stop=True) as rec:
        subject(x.to(subject.device))
    acts = rec[layer].float()
    if acts.dim() == 2:
        acts = acts[:, :, None, None]
    if direction is not None:
        vec = torch.as_tensor(np.asarray(direction), dtype=acts.dtype, device=acts.device)
        return torch.einsum("bchw,c->bhw", acts, vec)
    return acts[:, unit]


@dataclass(frozen=True)
class PatchChoice:
    """What a top-K grid shows of one hit: ``mode`` is ``"theoretical"`` (the theoretical
    receptive field, which fits in the image), ``"empirical"`` (a square of the unit's measured
    empirical RF size), ``"half-max"`` (the region where the unit's map, upsampled to the input,
    is above half its peak) or ``"whole"`` (the whole image); ``box`` is the region in
    model-input pixels (inside the image except for ``"theoretical"``); ``label`` says which."""

    mode: str
    box: Box
    label: str


def choose_patch(
    rf: ReceptiveField | None,
    input_size: tuple[int, int],
    amap: np.ndarray | None,
    y: int,
    x: int,
    empirical: float | None = None,
    cover: float = 0.8,
    min_side: int = 32,
) -> PatchChoice:
    """The part of the image to show for the hit at map position (y, x).

    The theoretical receptive field when it fits in the image. Where it does not (deep layers:
    851 px on a 224 px input), the *effective* field: a square of the ``empirical`` RF size
    (px) centred on the unit when one was measured, else the bounding box of the connected
    region around the peak of ``amap`` (h, w; upsampled bilinearly to ``input_size``) that is
    above half its peak, at least ``min_side`` px, clipped to the image. The whole image when
    that covers ``cover`` of the image's height and width, when the map has no positive peak,
    or when the layer has no map (global, 1 x 1)."""
    H, W = input_size
    whole = Box(0, 0, H - 1, W - 1)
    if rf is None or rf.is_global:
        return PatchChoice("whole", whole, "whole image: global layer")
    if amap is None or np.asarray(amap).size == 1:
        return PatchChoice("whole", whole, "whole image: 1x1 map")
    size = max(rf.size)
    if size <= min(H, W):
        return PatchChoice("theoretical", rf.box(y, x), f"theoretical RF {size:.0f} px")
    if empirical is not None and empirical > 0:
        cy, cx = rf.center(y, x)
        box = _square(cy, cx, max(empirical, min_side), H, W)
        choice = PatchChoice("empirical", box, f"effective field (empirical RF {empirical:.0f} px)")
    else:
        box = _half_max_box(np.asarray(amap, dtype=np.float32), H, W, min_side)
        choice = PatchChoice("half-max", box, "effective field (half-max of map)")
    if box is None or (box.height >= cover * H and box.width >= cover * W):
        return PatchChoice("whole", whole, f"whole image: RF {size:.0f} px > image")
    return choice


def _square(cy: float, cx: float, side: float, H: int, W: int) -> Box:
    half = side / 2
    return Box(round(cy - half), round(cx - half), round(cy + half) - 1, round(cx + half) - 1).clip(H, W)


def _half_max_box(amap: np.ndarray, H: int, W: int, min_side: int) -> Box | None:
    """Bounding box (input pixels) of the connected region around the peak of the upsampled
    map that is above half its peak; None when the peak is not positive."""
    from scipy import ndimage

    t = torch.as_tensor(amap)[None, None]
    up = F.interpolate(t, size=(H, W), mode="bilinear", align_corners=False)[0, 0].numpy()
    peak = float(up.max())
    if not peak > 0:
        return None
    labels, _ = ndimage.label(up >= 0.5 * peak)
    py, px = np.unravel_index(int(up.argmax()), up.shape)
    ys, xs = np.nonzero(labels == labels[py, px])
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
    if y1 - y0 + 1 < min_side or x1 - x0 + 1 < min_side:
        cy, cx = (y0 + y1 + 1) / 2, (x0 + x1 + 1) / 2
        grown = _square(cy, cx, min_side, H, W)
        y0, y1 = (grown.y0, grown.y1) if y1 - y0 + 1 < min_side else (y0, y1)
        x0, x1 = (grown.x0, grown.x1) if x1 - x0 + 1 < min_side else (x0, x1)
    return Box(y0, x0, y1, x1)


def cut_patch(img: Image.Image, preprocess: Preprocess, choice: PatchChoice) -> Image.Image:
    """The chosen region cut from the original image: the theoretical field with its parts
    outside the image grey and marked (:func:`patch_from_original`), the others as they are."""
    if choice.mode == "theoretical":
        return patch_from_original(img, preprocess, choice.box)
    b = choice.box
    top, left, bottom, right = preprocess.input_to_original((b.y0, b.x0, b.y1 + 1, b.x1 + 1), img.size)
    box = (
        max(0, round(left)),
        max(0, round(top)),
        min(img.width, round(right)),
        min(img.height, round(bottom)),
    )
    if box[2] <= box[0] or box[3] <= box[1]:
        return img
    return img.crop(box)


def render_topk(
    subject: Subject,
    source: ImageSource,
    top: UnitTopK,
    direction: np.ndarray | torch.Tensor | None = None,
    cell: int = 112,
    empirical: float | None = None,
    maps: torch.Tensor | None = None,
    title: str | None = None,
) -> Image.Image:
    """Grid for one unit and criterion: row 1, the part of each hit's image that matters, cut
    from the original image (:func:`choose_patch`: the theoretical receptive field around the
    hit's maximum, outside the image grey and marked red; where that field is larger than the
    image, the effective field, from the ``empirical`` RF size in px if given, else the half-max
    region of the unit's map; the whole image when the field covers it), with a line saying
    which; row 2, the unit's activation map upsampled over the image the model saw (shared
    colour scale, with its colour bar), left out for layers whose map is a single value.
    ``maps``: the hits' maps (N, H, W) when the "unit" is no channel or direction (a learned
    concept's codes); ``title``: the grid's title instead of the unit's."""
    info = subject.layer(top.layer)
    originals = [source.read(int(i)) for i in top.images]
    if not originals:
        raise ValueError(f"no images in the top-K of {top.layer}:{top.unit}")
    x = torch.stack([subject.transform(img) for img in originals])
    if maps is None:
        maps = unit_maps(subject, x, top.layer, top.unit, direction)
    maps = torch.as_tensor(maps).float().cpu()
    spatial = info.is_map and maps.dim() == 3 and tuple(maps.shape[-2:]) != (1, 1)
    vmax = float(maps.max()) if maps.numel() else 1.0
    patches, overlays, modes = [], [], []
    for img, m, y, xx in zip(originals, maps, top.ys, top.xs):
        choice = choose_patch(
            info.rf if info.is_map else None,
            subject.input_size,
            m.numpy() if spatial else None,
            int(y),
            int(xx),
            empirical,
        )
        modes.append(choice)
        patches.append(cut_patch(img, subject.preprocess, choice))
        if spatial:
            overlays.append(heat_overlay(np.asarray(subject.preprocess.resize_only(img)), m.numpy(), vmax))
    kind = "direction" if top.direction else "unit"
    name = None if top.direction else subject.unit_name(top.layer, int(top.unit))
    named = f' "{name}"' if name else ""  # a classifier's unit is its class
    title = title or f"{top.layer} {kind} {top.unit}{named} - top {len(top)} by {top.criterion}"
    captions = [f"{s:.3g}" for s in top.scores]
    counts = Counter(c.label for c in modes)
    if len(counts) > 1:
        short = {"theoretical": "RF", "empirical": "eff.", "half-max": "half-max", "whole": "whole"}
        captions = [f"{t} {short[c.mode]}" for t, c in zip(captions, modes)]
    note = "patches: " + "; ".join(lab if len(counts) == 1 else f"{lab} ({n})" for lab, n in counts.items())
    if not spatial:
        note += "; " + ("1x1 map: no spatial extent" if info.is_map else "no spatial map") + ", no heat map"
    return topk_grid(
        patches,
        overlays,
        captions,
        title,
        cell,
        note=note,
        heat_range=(0.0, max(vmax, 0.0)) if spatial else None,
    )
