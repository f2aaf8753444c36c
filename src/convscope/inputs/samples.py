"""The bundled real images (scikit-image's sample data): no download needed."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Names of skimage.data images that ship inside the scikit-image wheel.
SAMPLE_NAMES = (
    "chelsea",
    "coffee",
    "astronaut",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "colorwheel",
    "logo",
    "retina",
    "camera",
    "coins",
    "moon",
    "page",
    "text",
    "clock",
    "brick",
    "grass",
    "gravel",
)


def sample_image(name: str) -> Image.Image:
    """One bundled image as RGB (grayscale expanded, alpha composited on white)."""
    import skimage.data

    arr = np.asarray(getattr(skimage.data, name)())
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    from convscope.imageops import to_rgb

    return to_rgb(Image.fromarray(arr))


def sample_images(names: tuple[str, ...] = SAMPLE_NAMES) -> list[tuple[str, Image.Image]]:
    """``(name, image)`` for each bundled sample, in a fixed order."""
    return [(n, sample_image(n)) for n in names]


SAMPLES_SOURCE = "convscope:samples"
# Crops that turn each sample into several views: (name, top, left, height, width) as fractions.
CROPS = (
    ("full", 0.0, 0.0, 1.0, 1.0),
    ("centre", 0.2, 0.2, 0.6, 0.6),
    ("top-left", 0.0, 0.0, 0.6, 0.6),
    ("top-right", 0.0, 0.4, 0.6, 0.6),
    ("bottom-left", 0.4, 0.0, 0.6, 0.6),
    ("bottom-right", 0.4, 0.4, 0.6, 0.6),
)


def sample_view(name: str) -> Image.Image:
    """A bundled image or one of its crops, named ``"chelsea"`` or ``"chelsea/top-left"``."""
    base, _, crop = name.partition("/")
    img = sample_image(base)
    if not crop or crop == "full":
        return img
    spec = {c[0]: c[1:] for c in CROPS}.get(crop)
    if spec is None:
        raise KeyError(f"unknown crop {crop!r}")
    top, left, h, w = spec
    W, H = img.size
    return img.crop((round(left * W), round(top * H), round((left + w) * W), round((top + h) * H)))


def sample_view_names(crops: bool = True) -> list[str]:
    """Names of the bundled views: every sample, and with ``crops`` its five crops too."""
    if not crops:
        return list(SAMPLE_NAMES)
    return [n if c[0] == "full" else f"{n}/{c[0]}" for n in SAMPLE_NAMES for c in CROPS]
