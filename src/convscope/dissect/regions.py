"""A unit's regions above its dissection threshold on its most activating concept images: the
forward pass behind the per-unit pictures (:mod:`convscope.render.dissect` only draws)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from convscope.dissect.transform import with_dissection_transform
from convscope.recorder import Recorder
from convscope.subject import Subject

if TYPE_CHECKING:  # read through its fields only (the dissection report imports this module)
    from convscope.dissect.result import Dissection


def unit_regions(
    subject: Subject, data, dissection: Dissection, layer: str, unit: int, n: int = 6
) -> tuple[np.ndarray, np.ndarray]:
    """(pixels (n, H, W, 3) uint8 as the model saw them, masks (n, H, W) bool) of the unit's
    ``n`` most activating readable images of ``data`` (the concept data dissected, read through
    its own transform or, without one, the dissection's): where its activation map, upsampled
    bilinearly to the input, is above its threshold. Fewer than ``n`` when fewer exist."""
    d = dissection.layers[layer]
    data = with_dissection_transform(data, subject)  # the images as dissect() saw them
    idx = [int(i) for i, v in zip(d.top_images[unit], d.top_values[unit]) if np.isfinite(v)][:n]
    items = [it for it in (data[i] for i in idx) if it.error is None]
    if not items:
        h, w = subject.input_size
        return np.zeros((0, h, w, 3), np.uint8), np.zeros((0, h, w), bool)
    x = torch.stack([it.x for it in items]).to(subject.device)
    with Recorder(subject, [layer], stop=True) as rec, torch.inference_mode():
        subject(x)
    a = rec[layer].float()
    a = a[:, unit][:, None] if a.dim() == 4 else a[:, unit, None, None, None]
    up = F.interpolate(a, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    masks = (up > float(d.thresholds[unit])).cpu().numpy()
    pixels = subject.preprocess.denormalize(x).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return (pixels * 255 + 0.5).astype(np.uint8), masks


def unit_figure(
    subject: Subject, data, dissection: Dissection, layer: str, unit: int, n: int = 6, cell: int = 112
) -> Image.Image:
    """The unit's ``n`` most activating concept images with its region above threshold, under a
    title with its label and IoU and a line with the runners-up."""
    from convscope.render.dissect import unit_regions_figure, unit_title

    pixels, masks = unit_regions(subject, data, dissection, layer, unit, n)
    return unit_regions_figure(pixels, masks, *unit_title(dissection, layer, unit), cell=cell)
