"""Checks on rendered pictures shared by the render tests."""

from __future__ import annotations

import numpy as np


def find_colorbar(arr: np.ndarray, cmap, min_len: int = 60) -> tuple[int, int, int] | None:
    """(row, first column, length) of the first horizontal run of at least ``min_len`` pixels
    that follows the colour map ``cmap`` (a matplotlib name or a callable on [0, 1]) from its
    low end to its high end, monotonically: a colour bar. None if the picture has none."""
    import matplotlib

    fn = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
    lut = (np.asarray(fn(np.linspace(0, 1, 256)))[..., :3] * 255).astype(np.float32)
    a = np.asarray(arr, dtype=np.float32)
    for y in range(a.shape[0]):
        d = ((a[y, :, None, :] - lut[None]) ** 2).sum(-1)
        idx, ok = d.argmin(1), d.min(1) <= 3 * 6**2
        start = None
        for x in range(a.shape[1] + 1):
            good = x < a.shape[1] and ok[x] and (start is None or idx[x] >= idx[x - 1])
            if good and start is None:
                start = x
            if not good and start is not None:
                if x - start >= min_len and idx[x - 1] - idx[start] >= 200:
                    return y, start, x - start
                start = x if x < a.shape[1] and ok[x] else None
    return None


def lightness(rgb: np.ndarray) -> np.ndarray:
    """CIELAB L* of uint8 RGB pixels."""
    from skimage import color

    return color.rgb2lab(np.asarray(rgb, dtype=np.float64) / 255.0)[..., 0]
