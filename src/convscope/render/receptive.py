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


def support_figure(check, cell: int = 224) -> Image.Image:
    """A gradient-support check drawn ``cell`` px wide: log10 |gradient| of the support pixels
    (inferno over its range, black where the gradient is zero, red where the support leaves the
    theoretical box), the theoretical box in green and the support's bounding box in dashed cyan,
    the headline's verdict under it. ``check`` has ``magnitude`` and ``support`` (H, W), ``box``
    and ``support_box`` (inclusive (y0, x0, y1, x1) or None) and ``claim``."""
    import matplotlib
    from PIL import ImageDraw

    mag = np.asarray(check.magnitude, dtype=np.float64)
    sup = np.asarray(check.support, dtype=bool)
    H, W = sup.shape
    rgb = np.zeros((H, W, 3), dtype=np.float64)
    if sup.any():
        logs = np.log10(np.where(sup, np.maximum(mag, 1e-300), 1.0))
        lo, hi = float(logs[sup].min()), float(logs[sup].max())
        norm = (logs - lo) / (hi - lo) if hi > lo else np.ones_like(logs)
        heat = matplotlib.colormaps["inferno"](0.25 + 0.75 * np.clip(norm, 0, 1))[..., :3]
        rgb[sup] = heat[sup]
    if check.box is not None and check.claim == "local":
        y0, x0, y1, x1 = check.box
        out = sup.copy()
        out[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = False
        rgb[out] = (1.0, 0.0, 0.0)
    img = Image.fromarray((rgb * 255 + 0.5).astype(np.uint8))
    scale = cell / W
    img = img.resize((cell, max(1, round(H * scale))), Image.NEAREST)
    draw = ImageDraw.Draw(img)

    def rect(b):
        y0, x0, y1, x1 = b
        return [x0 * scale, y0 * scale, (x1 + 1) * scale - 1, (y1 + 1) * scale - 1]

    if check.box is not None:
        draw.rectangle(rect(check.box), outline=(0, 230, 0), width=2)
    if check.support_box is not None:
        x0, y0, x1, y1 = rect(check.support_box)
        for a in range(int(x0), int(x1), 8):  # dashed: 4 px on, 4 px off
            draw.line([(a, y0), (min(a + 4, x1), y0)], fill=(0, 220, 255))
            draw.line([(a, y1), (min(a + 4, x1), y1)], fill=(0, 220, 255))
        for a in range(int(y0), int(y1), 8):
            draw.line([(x0, a), (x0, min(a + 4, y1))], fill=(0, 220, 255))
            draw.line([(x1, a), (x1, min(a + 4, y1))], fill=(0, 220, 255))
    verdict = (
        ("inside the box" if check.outside == 0 else f"{check.outside} px outside the box")
        if check.claim == "local"
        else f"{check.claim.replace('_', ' ')}: {check.coverage:.0%} of the image"
    )
    canvas = Image.new("RGB", (img.width, img.height + 16), "white")
    canvas.paste(img, (0, 0))
    ImageDraw.Draw(canvas).text((3, img.height + 2), f"{check.layer}: {verdict}", fill=(0, 0, 0))
    return canvas
