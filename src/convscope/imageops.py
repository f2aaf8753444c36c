"""Image operations: any image file Pillow opens decoded to RGB (:func:`read_image`), and ops on
(N, C, H, W) tensors shared by attribution and synthesis."""

from __future__ import annotations

import io
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with reflect padding."""
    radius = max(1, int(math.ceil(3 * sigma)))
    k = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    pad = min(radius, x.shape[2] - 1, x.shape[3] - 1)
    if pad < radius:
        radius = pad
        k = k[k.numel() // 2 - radius : k.numel() // 2 + radius + 1]
        k = k / k.sum()
    y = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def read_image(source: str | os.PathLike | bytes | Image.Image) -> Image.Image:
    """Decode a file path or bytes to an RGB PIL image: EXIF orientation applied, then
    :func:`to_rgb`. Raises on unreadable data."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(fp) as img:
        img.load()
        return to_rgb(ImageOps.exif_transpose(img))


_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB copy of ``img``, for every mode Pillow opens files in:

    - 16-bit grey (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``): the high byte, ``value >> 8``,
      which is how Pillow itself reduces 16-bit RGB, RGBA and grey+alpha PNGs and TIFFs;
    - 32-bit integers (``I``, Pillow's mode for 16-bit PGM/PPM and 32-bit integer TIFFs): taken
      as 16-bit values, clipped to 0..65535, then ``>> 8``;
    - 32-bit floats (``F``): intensities in 0..1, clipped (NaN as 0), times 255, rounded;
    - transparency (``RGBA``, ``LA``, ``PA``, premultiplied ``La``/``RGBa``, a palette's alpha, a
      PNG transparency colour key) composited onto white;
    - CIE L*a*b* (``LAB``, from TIFFs): to sRGB relative to the D65 white, by the CIE formulas
      (Pillow's own conversion is off by tens of levels for some in-gamut colours);
    - everything else (``1``, ``L``, ``P``, ``RGB``, ``RGBX``, ``CMYK``, ``YCbCr``, ``HSV``) by
      Pillow's own conversion.
    """
    if img.mode in _WIDE_MODES:
        img = _wide_to_grey(img)
    elif img.mode == "LAB":
        return _lab_to_rgb(img)
    elif img.mode in ("La", "RGBa"):  # premultiplied: Pillow converts La to nothing but LA
        img = img.convert("LA" if img.mode == "La" else "RGBA")
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


_XYZ_TO_SRGB = np.array(
    [
        [3.2404542, -1.5371385, -0.4985314],
        [-0.9692660, 1.8760108, 0.0415560],
        [0.0556434, -0.2040259, 1.0572252],
    ]
)
_D65 = np.array([0.95047, 1.0, 1.08883])


def _lab_to_rgb(img: Image.Image) -> Image.Image:
    """sRGB of a Pillow ``LAB`` image (L* scaled to 0..255, a* and b* signed bytes), D65 white."""
    raw = np.asarray(img)
    lum = raw[..., 0].astype(np.float64) * (100.0 / 255.0)
    ab = raw[..., 1:].view(np.int8).astype(np.float64)
    fy = (lum + 16.0) / 116.0
    f = np.stack([fy + ab[..., 0] / 500.0, fy, fy - ab[..., 1] / 200.0], axis=-1)
    delta = 6.0 / 29.0
    xyz = np.where(f > delta, f**3, 3 * delta**2 * (f - 4.0 / 29.0)) * _D65
    lin = (xyz @ _XYZ_TO_SRGB.T).clip(0.0, 1.0)  # out-of-gamut colours clipped in RGB
    srgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return Image.fromarray(np.round(srgb * 255).astype(np.uint8))


def _wide_to_grey(img: Image.Image) -> Image.Image:
    """An 8-bit ``L`` (``LA`` with a transparency key) image of a 16-bit, 32-bit integer or
    float image, by the rules of :func:`to_rgb` (Pillow would clip every value above 255)."""
    raw = np.asarray(img)
    if img.mode == "F":
        grey = np.round(np.nan_to_num(raw.astype(np.float64), nan=0.0).clip(0.0, 1.0) * 255)
    else:
        grey = raw.astype(np.int64).clip(0, 65535) >> 8
    out = Image.fromarray(grey.astype(np.uint8))
    key = img.info.get("transparency")
    if isinstance(key, (int, float)) and not isinstance(key, bool):
        alpha = Image.fromarray(np.where(raw == key, 0, 255).astype(np.uint8))
        out = Image.merge("LA", (out, alpha))
    return out
