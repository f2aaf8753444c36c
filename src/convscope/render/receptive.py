"""Pictures of empirical receptive fields."""

from __future__ import annotations

import numpy as np
from PIL import Image

from convscope.render.grid import colorbar, image_grid
from convscope.render.topk import heat_overlay


def empirical_rf_panel(subject, x, result) -> Image.Image:
    """Top images with their discrepancy maps overlaid (one colour scale, shown by the colour
    bar), then the averaged, re-centred map (scaled to its own maximum)."""
    tiles, caps = [], []
    vmax = max((float(dm.pixels.max()) for dm in result.maps), default=0.0)
    for i, dm in enumerate(result.maps):
        img = subject.preprocess.denormalize(x[i]).clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        tiles.append(heat_overlay((img * 255).astype(np.uint8), dm.pixels, vmax if vmax > 0 else None))
        caps.append(f"peak {dm.peak}")
    avg = result.average / max(float(result.average.max()), 1e-12)
    side = x.shape[2]
    grey = np.full((avg.shape[0], avg.shape[1], 3), 128, dtype=np.uint8)
    tiles.append(heat_overlay(grey, avg, alpha=1.0).resize((side, side), Image.NEAREST))
    caps.append(f"avg {result.size:.0f}px (theo {result.theoretical:.0f})")
    grid = image_grid(tiles, ncols=len(tiles), pad=3, captions=caps)
    bar = colorbar("inferno", 0.0, vmax, min(grid.width - 6, 240), "|change of the unit|")
    out = Image.new("RGB", (grid.width, grid.height + bar.height + 3), "white")
    out.paste(grid, (0, 0))
    out.paste(bar, (3, grid.height))
    return out
