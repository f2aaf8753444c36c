"""Image grids and filter pictures."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw


def to_uint8(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """(H, W, 3) or (3, H, W) float in [0, 1] (or uint8) -> (H, W, 3) uint8."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return arr


def image_grid(
    images: Sequence[np.ndarray | torch.Tensor | Image.Image],
    ncols: int | None = None,
    pad: int = 2,
    cell: int | None = None,
    captions: Sequence[str] | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Tile images into one picture. ``cell`` resizes each tile to ``cell x cell`` px (nearest,
    so filter pixels stay crisp); ``captions`` are written under the tiles."""
    tiles = []
    for img in images:
        pil = img if isinstance(img, Image.Image) else Image.fromarray(to_uint8(img))
        if cell is not None:
            pil = pil.resize((cell, cell), Image.NEAREST)
        tiles.append(pil.convert("RGB"))
    if not tiles:
        raise ValueError("no images to tile")
    n = len(tiles)
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    tw = max(t.width for t in tiles)
    th = max(t.height for t in tiles)
    cap_h = 12 if captions else 0
    grid = Image.new("RGB", (ncols * (tw + pad) + pad, nrows * (th + pad + cap_h) + pad), background)
    draw = ImageDraw.Draw(grid)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, ncols)
        x, y = pad + c * (tw + pad), pad + r * (th + pad + cap_h)
        grid.paste(tile, (x, y))
        if captions:
            draw.text((x, y + th), str(captions[k])[: max(tw // 6, 1)], fill=(0, 0, 0))
    return grid


def stack(images: Sequence[Image.Image], pad: int = 6, background=(255, 255, 255)) -> Image.Image:
    """Images one under the other, left-aligned, ``pad`` px apart."""
    if not images:
        raise ValueError("no images to stack")
    width = max(i.width for i in images)
    out = Image.new("RGB", (width, sum(i.height for i in images) + pad * (len(images) - 1)), background)
    y = 0
    for img in images:
        out.paste(img.convert("RGB"), (0, y))
        y += img.height + pad
    return out


def filters_to_images(weight: torch.Tensor) -> list[np.ndarray]:
    """First-layer filters (C_out, 3, kh, kw) -> RGB images in [0, 1], one per filter.

    Each filter is scaled symmetrically around grey (0.5) by its largest absolute weight, so
    positive and negative weights of equal size look equally strong and zero is grey.
    """
    w = weight.detach().float().cpu()
    if w.dim() != 4 or w.shape[1] not in (1, 3):
        raise ValueError(f"expected filters (C_out, 3, kh, kw), got {tuple(w.shape)}")
    scale = w.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    imgs = 0.5 + 0.5 * w / scale
    return [img.permute(1, 2, 0).numpy() for img in imgs]


def colorbar(cmap, vmin: float, vmax: float, width: int, label: str = "", height: int = 8) -> Image.Image:
    """A horizontal colour bar ``width`` px wide: the colour map ``cmap`` (a matplotlib name or
    a callable on [0, 1] returning RGB(A) in [0, 1]) from ``vmin`` to ``vmax``, with both values
    written under its ends and ``label`` between them."""
    import matplotlib

    fn = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
    ramp = np.asarray(fn(np.linspace(0.0, 1.0, max(width, 2))), dtype=np.float64)[..., :3]
    bar = np.repeat(ramp[None], height, axis=0)
    out = Image.new("RGB", (width, height + 12), "white")
    out.paste(Image.fromarray(to_uint8(bar)), (0, 0))
    draw = ImageDraw.Draw(out)
    lo, hi = f"{vmin:.3g}", f"{vmax:.3g}"
    draw.text((0, height), lo, fill=(0, 0, 0))
    draw.text((max(width - 6 * len(hi), 0), height), hi, fill=(0, 0, 0))
    room = width - 6 * (len(lo) + len(hi)) - 12
    if label and room > 12:
        text = label[: room // 6]
        draw.text(((width - 6 * len(text)) // 2, height), text, fill=(90, 90, 90))
    return out
