"""Top-K pictures of a unit: receptive-field patches cut from the original images, and the
unit's activation map over each whole image."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from convscope.data import ImageSource
from convscope.recorder import Recorder
from convscope.render.topk import heat_overlay, patch_from_original, topk_grid
from convscope.scan.result import UnitTopK
from convscope.subject import Subject


def unit_maps(subject: Subject, x: torch.Tensor, layer: str, unit: int,
              direction: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
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


def render_topk(subject: Subject, source: ImageSource, top: UnitTopK,
                direction: np.ndarray | torch.Tensor | None = None, cell: int = 112) -> Image.Image:
    """Grid for one unit and criterion: row 1, the receptive-field patch around each hit's
    maximum, cut from the original image (outside the image: grey, edge marked red); row 2,
    the unit's activation map upsampled over the image the model saw (shared colour scale)."""
    info = subject.layer(top.layer)
    originals = [source.read(int(i)) for i in top.images]
    if not originals:
        raise ValueError(f"no images in the top-K of {top.layer}:{top.unit}")
    x = torch.stack([subject.transform(img) for img in originals])
    maps = unit_maps(subject, x, top.layer, top.unit, direction).cpu()
    vmax = float(maps.max()) if maps.numel() else 1.0
    patches, overlays = [], []
    for img, m, y, xx in zip(originals, maps, top.ys, top.xs):
        seen = subject.preprocess.resize_only(img)
        if info.rf is not None and not info.rf.is_global and info.is_map:
            box = info.rf.box(int(y), int(xx))
            patches.append(patch_from_original(img, subject.preprocess, box))
        else:
            patches.append(img)
        overlays.append(heat_overlay(np.asarray(seen), m.numpy(), vmax))
    kind = "direction" if top.direction else "unit"
    name = None if top.direction else subject.unit_name(top.layer, int(top.unit))
    named = f' "{name}"' if name else ""  # a classifier's unit is its class
    title = f"{top.layer} {kind} {top.unit}{named} - top {len(top)} by {top.criterion}"
    captions = [f"{s:.3g}" for s in top.scores]
    return topk_grid(patches, overlays, captions, title, cell)
