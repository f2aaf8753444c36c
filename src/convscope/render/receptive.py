"""Pictures of empirical receptive fields."""

from __future__ import annotations

import numpy as np
from PIL import Image

from convscope.render.grid import colorbar, image_grid
from convscope.render.topk import heat_overlay


def empirical_rf_panel(subject, x, result) -> Image.Image:
    """:func:`empirical_rf_figure` of ``result`` (an empirical RF) over its top images ``x``,
    a preprocessed batch (K, 3, H, W) shown as the model saw it."""
    images = subject.preprocess.denormalize(x).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return empirical_rf_figure(images, result)


def empirical_rf_figure(images: np.ndarray, result) -> Image.Image:
    """Top images (K, H, W, 3) in [0, 1] with ``result``'s discrepancy maps overlaid (one colour
    scale, shown by the colour bar), then the averaged, re-centred map (scaled to its own
    maximum). ``result`` has ``maps`` (each with ``pixels`` (H, W) and ``peak``), ``average``,
    ``size`` and ``theoretical``."""
    tiles, caps = [], []
    vmax = max((float(dm.pixels.max()) for dm in result.maps), default=0.0)
    for img, dm in zip(images, result.maps):
        tiles.append(heat_overlay((img * 255).astype(np.uint8), dm.pixels, vmax if vmax > 0 else None))
        caps.append(f"peak {dm.peak}")
    avg = result.average / max(float(result.average.max()), 1e-12)
    side = images.shape[1]
    grey = np.full((avg.shape[0], avg.shape[1], 3), 128, dtype=np.uint8)
    tiles.append(heat_overlay(grey, avg, alpha=1.0).resize((side, side), Image.NEAREST))
    caps.append(f"avg {result.size:.0f}px (theo {result.theoretical:.0f})")
    grid = image_grid(tiles, ncols=len(tiles), pad=3, captions=caps)
    bar = colorbar("inferno", 0.0, vmax, min(grid.width - 6, 240), "|change of the unit|")
    out = Image.new("RGB", (grid.width, grid.height + bar.height + 3), "white")
    out.paste(grid, (0, 0))
    out.paste(bar, (3, grid.height))
    return out
