"""Pieces of top-K pictures: patches with marked borders, heat-map overlays, the grid."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from convscope.preprocess import Preprocess
from convscope.receptive import Box

_CLIP_COLOR = (220, 30, 30)
_PAD_COLOR = (128, 128, 128)


def patch_from_original(img: Image.Image, preprocess: Preprocess, box: Box) -> Image.Image:
    """Cut the receptive-field ``box`` (model-input pixels) out of the original image.

    The part outside the image is grey and each side where the box was clipped is marked by a
    red line, so a patch at the border is never mistaken for a whole one."""
    top, left, bottom, right = preprocess.input_to_original(
        (box.y0, box.x0, box.y1 + 1, box.x1 + 1), img.size
    )
    top, left, bottom, right = (int(round(v)) for v in (top, left, bottom, right))
    w, h = max(right - left, 1), max(bottom - top, 1)
    canvas = Image.new("RGB", (w, h), _PAD_COLOR)
    src = (max(left, 0), max(top, 0), min(right, img.width), min(bottom, img.height))
    if src[2] > src[0] and src[3] > src[1]:
        canvas.paste(img.crop(src), (src[0] - left, src[1] - top))
    draw = ImageDraw.Draw(canvas)
    lw = max(1, round(max(w, h) / 60))
    if left < 0:
        draw.line([(src[0] - left, 0), (src[0] - left, h)], fill=_CLIP_COLOR, width=lw)
    if top < 0:
        draw.line([(0, src[1] - top), (w, src[1] - top)], fill=_CLIP_COLOR, width=lw)
    if right > img.width:
        draw.line([(src[2] - left, 0), (src[2] - left, h)], fill=_CLIP_COLOR, width=lw)
    if bottom > img.height:
        draw.line([(0, src[3] - top), (w, src[3] - top)], fill=_CLIP_COLOR, width=lw)
    return canvas


def heat_overlay(
    image: np.ndarray, amap: np.ndarray, vmax: float | None = None, alpha: float = 0.5
) -> Image.Image:
    """Blend an activation map (h, w), upsampled bilinearly, over ``image`` (H, W, 3) uint8.

    Values are scaled by ``vmax`` (default: the map's own max) and clipped at 0, so maps of
    several images drawn with one ``vmax`` are comparable."""
    import matplotlib

    H, W = image.shape[:2]
    t = torch.as_tensor(np.asarray(amap, dtype=np.float32))[None, None]
    up = F.interpolate(t, size=(H, W), mode="bilinear", align_corners=False)[0, 0].numpy()
    top = vmax if vmax is not None else float(up.max())
    norm = np.clip(up / top, 0.0, 1.0) if top > 0 else np.zeros_like(up)
    heat = matplotlib.colormaps["inferno"](norm)[..., :3]
    out = (1 - alpha) * image.astype(np.float32) / 255.0 + alpha * heat
    return Image.fromarray((np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8))


def topk_grid(
    patches: Sequence[Image.Image],
    overlays: Sequence[Image.Image],
    captions: Sequence[str],
    title: str,
    cell: int = 112,
    note: str = "",
    heat_range: tuple[float, float] | None = None,
) -> Image.Image:
    """Two rows (patches, overlays) of ``cell`` px tiles, scores under the patches, a title and
    a ``note`` line under it; one row when there are no ``overlays``. ``heat_range`` (vmin,
    vmax) of the overlays' inferno scale adds a colour bar under them."""
    from convscope.render.grid import colorbar

    n = len(patches)
    pad, cap, line = 4, 14, 13
    head = 18 + (line if note else 0)
    rows = 2 if overlays else 1
    width = n * (cell + pad) + pad
    bar = (
        colorbar("inferno", *heat_range, min(width - 2 * pad, 240), "activation")
        if overlays and heat_range is not None
        else None
    )
    height = head + rows * cell + (rows - 1) * pad + cap + pad + (bar.height + pad if bar else 0)
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((pad, 3), title, fill=(0, 0, 0))
    if note:
        draw.text((pad, 3 + line), note[: max(1, (width - pad) // 6)], fill=(90, 90, 90))
    for i, p in enumerate(patches):
        x = pad + i * (cell + pad)
        grid.paste(fit_image(p, cell), (x, head))
        draw.text((x, head + cell + 1), captions[i], fill=(0, 0, 0))
        if overlays:
            grid.paste(fit_image(overlays[i], cell), (x, head + cell + cap))
    if bar is not None:
        grid.paste(bar, (pad, head + 2 * cell + cap + pad))
    return grid


def fit_image(img: Image.Image, cell: int) -> Image.Image:
    """``img`` resized to fit in ``cell x cell`` px keeping its aspect ratio, centred on white."""
    w, h = img.size
    s = cell / max(w, h)
    small = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
    out = Image.new("RGB", (cell, cell), "white")
    out.paste(small, ((cell - small.width) // 2, (cell - small.height) // 2))
    return out


def unit_rows(
    rows: Sequence[tuple[str, Sequence[Image.Image], Sequence[str]]], title: str = "", cell: int = 64
) -> Image.Image:
    """One row per unit: its label on the left, then its images (``cell`` px, aspect kept) with
    a caption under each; ``title`` on top. ``rows`` holds (label, images, captions)."""
    pad, left, cap, head = 4, 120, 12, 16 if title else 0
    n = max((len(r[1]) for r in rows), default=1)
    width = left + max(n, 1) * (cell + pad) + pad
    out = Image.new("RGB", (width, head + len(rows) * (cell + cap + pad) + pad), "white")
    draw = ImageDraw.Draw(out)
    if title:
        draw.text((pad, 2), title[: max(1, (width - pad) // 6)], fill=(0, 0, 0))
    for r, (label, images, captions) in enumerate(rows):
        y = head + pad + r * (cell + cap + pad)
        draw.text((pad, y + cell // 2 - 6), label[: (left - pad) // 6], fill=(0, 0, 0))
        for j, (img, text) in enumerate(zip(images, captions)):
            x = left + j * (cell + pad)
            out.paste(fit_image(img, cell), (x, y))
            draw.text((x, y + cell), str(text)[: max(1, cell // 6)], fill=(60, 60, 60))
    return out


def scores_figure(scores: np.ndarray, images: np.ndarray, units: Sequence[int], title: str = ""):
    """Top-K scores (U, K) of ``units`` as a heat map, each cell labelled with its image index
    (``images`` (U, K), -1 for an empty slot): the ranking when the images are not at hand."""
    from convscope.render.plots import pyplot

    plt = pyplot()
    s = np.where(images >= 0, scores, np.nan).astype(np.float64)
    u, k = s.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * k + 2), max(2.5, 0.35 * u + 1.5)))
    im = ax.imshow(s, cmap="viridis", aspect="auto")
    if s.size <= 400:
        top = np.nanmax(s) if np.isfinite(s).any() else 0.0
        for i in range(u):
            for j in range(k):
                if images[i, j] >= 0:
                    dark = not s[i, j] > 0.6 * top
                    color = "white" if dark else "black"
                    ax.text(j, i, str(int(images[i, j])), ha="center", va="center", fontsize=6, color=color)
    ax.set_yticks(range(u), [str(x) for x in units], fontsize=7)
    ax.set_xticks(range(k), [str(j + 1) for j in range(k)], fontsize=7)
    ax.set_xlabel("rank (cell: image index)", fontsize=8)
    ax.set_ylabel("unit", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046).ax.tick_params(labelsize=7)
    return fig
