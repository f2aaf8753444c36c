"""Attribution pictures: the image, the map, and the map over the image."""

from __future__ import annotations

import functools
import warnings

import numpy as np
from PIL import Image, ImageDraw

from convscope.render.grid import colorbar, to_uint8

# Methods whose result is an image-space signal shown, as in their papers, as an RGB picture
# around grey (Springenberg et al. 2015, Zeiler & Fergus 2014, Selvaraju et al. 2017).
RGB_METHODS = frozenset({"guided", "deconvnet", "guided_gradcam", "zeiler_fergus"})
# Maps whose zero means nothing (RISE's expected score under random masks lies in a narrow band
# far from 0): drawn from their minimum, as RISE's authors show them
OFFSET_METHODS = frozenset({"rise"})


def display_scale(values: np.ndarray, percentile: float = 98.0) -> float:
    """The display scale of a map: its ``percentile`` of |values| (the largest |value| if that
    is 0; 0 for an all-zero map). Values beyond it are clipped, as Captum's
    ``visualize_image_attr`` clips its outliers, so that a few extreme pixels do not wash out
    the rest."""
    v = np.abs(np.asarray(values, dtype=np.float64))
    if not v.size:
        return 0.0
    top = float(np.percentile(v, percentile))
    return top if top > 0 else float(v.max())


@functools.lru_cache(maxsize=1)
def _dark_lut(n: int = 513) -> np.ndarray:
    """(n, 3) RGB table from -1 to 1: CIELAB lightness rising linearly from 0 (black) at 0 to
    about 86 at +-1, blue for negative and red-orange for positive values."""
    from skimage import color

    s = np.linspace(-1.0, 1.0, n)
    L = 86.0 * np.abs(s)
    hue = np.where(s >= 0, np.deg2rad(40.0), np.deg2rad(262.0))
    chroma = 0.9 * L
    lab = np.stack([L, chroma * np.cos(hue), chroma * np.sin(hue)], -1)[None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # out-of-gamut colours are clipped
        return np.clip(color.lab2rgb(lab)[0], 0.0, 1.0)


def dark_diverging(t: np.ndarray) -> np.ndarray:
    """Colour map on [0, 1] for signed maps: blue (0) through black (0.5) to red-orange (1),
    with lightness proportional to |2 t - 1|, so that zero is the dark background and small
    values of either sign stand out from it as much as large ones do in proportion."""
    lut = _dark_lut()
    idx = np.rint(np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0) * (len(lut) - 1))
    return lut[idx.astype(np.int64)]


def colorize(amap: np.ndarray, signed: bool) -> np.ndarray:
    """Map in [0, 1] (or [-1, 1] if ``signed``) -> RGB float (H, W, 3): inferno, or the
    dark-centred blue-black-red of :func:`dark_diverging` for signed maps."""
    import matplotlib

    if signed:
        return dark_diverging((amap + 1) / 2)
    return matplotlib.colormaps["inferno"](amap)[..., :3]


def attribution_panel(
    image: np.ndarray,
    amap: np.ndarray,
    signed: bool,
    title: str,
    alpha: float = 0.55,
    rgb: np.ndarray | None = None,
    percentile: float = 98.0,
    floor: float | None = None,
) -> Image.Image:
    """Three tiles (image | map | overlay) with a title line and, under the map, a colour bar
    with the value range it shows.

    ``amap`` (H, W) is scaled by :func:`display_scale` and clipped (at 0 unless ``signed``).
    ``rgb`` (3, H, W) or (H, W, 3), when given, is drawn in the map tile instead: the
    per-channel signal as an RGB image around grey (0 = grey), scaled the same way. ``floor``
    (unsigned maps): the value drawn black, e.g. the map's minimum (default 0)."""
    img = image.astype(np.float32)
    m = np.asarray(amap, dtype=np.float64)
    base = float(floor) if floor is not None and not signed else 0.0
    m = m - base
    if not signed:
        m = np.clip(m, 0, None)
    top = display_scale(m, percentile)
    norm = np.clip(m / top, -1 if signed else 0, 1) if top > 0 else np.zeros_like(m)
    heat = colorize(norm, signed)
    w = img.shape[1]
    if rgb is not None:
        r = np.asarray(rgb, dtype=np.float64)
        if r.ndim == 3 and r.shape[0] == 3 and r.shape[-1] != 3:
            r = r.transpose(1, 2, 0)
        s = display_scale(r, percentile)
        tile = 0.5 + 0.5 * np.clip(r / s, -1, 1) if s > 0 else np.full_like(r, 0.5)
        bar = colorbar("gray", -s, s, w, "per channel, 0 = grey")
    else:
        tile = heat
        bar = colorbar(
            dark_diverging if signed else "inferno",
            -top if signed else base,
            top + base,
            w,
            "signed" if signed else "",
        )
    weight = np.abs(norm)[..., None] if signed else np.ones_like(norm)[..., None]
    overlay = img * (1 - alpha * weight) + heat * alpha * weight
    tiles = [to_uint8(img), to_uint8(tile), to_uint8(overlay)]
    h = tiles[0].shape[0]
    pad, head = 4, 16
    out = Image.new("RGB", (3 * w + 4 * pad, h + head + 2 * pad + bar.height), "white")
    for k, t in enumerate(tiles):
        out.paste(Image.fromarray(t), (pad + k * (w + pad), head))
    out.paste(bar, (pad + w + pad, head + h + pad))
    ImageDraw.Draw(out).text((pad, 2), title, fill=(0, 0, 0))
    return out
