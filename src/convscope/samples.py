"""The bundled real images (scikit-image's sample data): no download needed."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Names of skimage.data images that ship inside the scikit-image wheel.
SAMPLE_NAMES = (
    "chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry",
    "colorwheel", "logo", "retina", "camera", "coins", "moon", "page", "text", "clock",
    "brick", "grass", "gravel",
)


def sample_image(name: str) -> Image.Image:
    """One bundled image as RGB (grayscale expanded, alpha composited on white)."""
    import skimage.data

    arr = np.asarray(getattr(skimage.data, name)())
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    img = Image.fromarray(arr)
    if img.mode == "RGBA":
        canvas = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, img)
    return img.convert("RGB")


def sample_images(names: tuple[str, ...] = SAMPLE_NAMES) -> list[tuple[str, Image.Image]]:
    """``(name, image)`` for each bundled sample, in a fixed order."""
    return [(n, sample_image(n)) for n in names]
