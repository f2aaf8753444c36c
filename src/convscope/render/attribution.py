"""Attribution pictures: the image, the map, and the map over the image."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from convscope.render.grid import to_uint8


def colorize(amap: np.ndarray, signed: bool) -> np.ndarray:
    """Map in [0, 1] (or [-1, 1] if ``signed``) -> RGB float (H, W, 3): inferno, or a diverging
    blue-white-red for signed maps."""
    import matplotlib

    if signed:
        return matplotlib.colormaps["bwr"]((amap + 1) / 2)[..., :3]
    return matplotlib.colormaps["inferno"](amap)[..., :3]


def attribution_panel(image: np.ndarray, amap: np.ndarray, signed: bool, title: str,
                      alpha: float = 0.55) -> Image.Image:
    """Three tiles (image | map | overlay) with a title line."""
    img = image.astype(np.float32)
    heat = colorize(amap, signed)
    weight = np.abs(amap)[..., None] if signed else np.ones_like(amap)[..., None]
    overlay = img * (1 - alpha * weight) + heat * alpha * weight
    tiles = [to_uint8(img), to_uint8(heat), to_uint8(overlay)]
    h, w = tiles[0].shape[:2]
    pad, head = 4, 16
    out = Image.new("RGB", (3 * w + 4 * pad, h + head + pad), "white")
    for k, t in enumerate(tiles):
        out.paste(Image.fromarray(t), (pad + k * (w + pad), head))
    ImageDraw.Draw(out).text((pad, 2), title, fill=(0, 0, 0))
    return out
