"""Automatic colour concepts for any image folder: every pixel named by one of the eleven basic
colour terms (Berlin & Kay), as Broden's ``color`` category was built from van de Weijer et al.'s
learned colour names ("Learning Color Names for Real-World Applications", TIP 2009).

Naming is a lookup in a 32 x 32 x 32 RGB table (8-level bins, index ``r//8 + 32 g//8 +
1024 b//8``, the layout of van de Weijer's ``w2c`` table). Without a table file, the table is
built by giving each bin the colour term whose prototype is nearest in CIELAB — an
approximation of the learned table, not a copy of it; pass the real ``w2c.txt`` (32768 rows of
``R G B`` and 11 probabilities, or the 11 probabilities alone) to use it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convscope.dissect.concepts import Concept, ConceptItem
from convscope.errors import DataError
from convscope.inputs.images import skip_reason
from convscope.inputs.sources import ImageSource, open_images

# The order of van de Weijer's table columns.
COLOR_NAMES = (
    "black",
    "blue",
    "brown",
    "grey",
    "green",
    "orange",
    "pink",
    "purple",
    "red",
    "white",
    "yellow",
)
# sRGB prototypes of the eleven terms (focal colours, rounded).
PROTOTYPES = {
    "black": (20, 20, 20),
    "blue": (40, 70, 200),
    "brown": (120, 75, 35),
    "grey": (128, 128, 128),
    "green": (50, 160, 60),
    "orange": (240, 140, 30),
    "pink": (240, 150, 190),
    "purple": (120, 50, 150),
    "red": (200, 30, 35),
    "white": (240, 240, 240),
    "yellow": (240, 220, 40),
}


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB values in [0, 255], shape (..., 3)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array(
        [
            [0.4124564, 0.3575761, 0.1804375],
            [0.2126729, 0.7151522, 0.0721750],
            [0.0193339, 0.1191920, 0.9503041],
        ]
    )
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1
    )


def _bin_centres() -> np.ndarray:
    """(32768, 3) RGB centre of every table bin, in table order (red fastest)."""
    v = np.arange(32) * 8 + 4
    b, g, r = np.meshgrid(v, v, v, indexing="ij")
    return np.stack([r.ravel(), g.ravel(), b.ravel()], axis=-1)


class ColorNamer:
    """Pixel colour names: ``name(rgb uint8 (..., 3)) -> (...,) int`` in 0..10 (COLOR_NAMES)."""

    def __init__(self, table: np.ndarray, path: str | None = None):
        self.path = path  # the table file, when read from one
        table = np.asarray(table)
        if table.shape != (32768,):
            raise DataError(f"a colour table has 32768 entries, got shape {table.shape}")
        self.table = table.astype(np.int64)

    @classmethod
    def prototypes(cls) -> ColorNamer:
        """Nearest prototype in CIELAB (the offline default)."""
        lab = rgb_to_lab(_bin_centres())
        proto = rgb_to_lab(np.array([PROTOTYPES[n] for n in COLOR_NAMES]))
        d = ((lab[:, None, :] - proto[None]) ** 2).sum(-1)
        return cls(d.argmin(1))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ColorNamer:
        """A ``w2c`` table: text or ``.npy``, 32768 rows of 11 probabilities (optionally after
        three RGB columns); each bin gets its most probable name."""
        path = Path(path)
        try:
            arr = np.load(path) if path.suffix == ".npy" else np.loadtxt(path)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read colour table {path}: {e}") from None
        if arr.ndim != 2 or arr.shape[0] != 32768 or arr.shape[1] not in (11, 14):
            raise DataError(
                f"{path}: a colour table has 32768 rows of 11 (or 3 + 11) columns, got {arr.shape}"
            )
        return cls(arr[:, -11:].argmax(1), str(path.resolve()))

    def name(self, rgb: np.ndarray) -> np.ndarray:
        rgb = np.asarray(rgb, dtype=np.int64) // 8
        return self.table[rgb[..., 0] + 32 * rgb[..., 1] + 1024 * rgb[..., 2]]


class ColorConcepts(torch.utils.data.Dataset):
    """Any image source as a concept dataset with one pixel-level category, ``color``: concept
    ``k + 1`` is ``COLOR_NAMES[k]``. Labels are named at ``seg`` x ``seg`` pixels of the whole
    image resized (squashed) to that size, which is how ``dissect`` feeds images to the model."""

    categories = ["color"]

    def __init__(
        self,
        source: ImageSource | str | os.PathLike,
        seg: int = 112,
        namer: ColorNamer | None = None,
        transform=None,
    ):
        self.source = source if isinstance(source, ImageSource) else open_images(source)
        if not len(self.source):
            raise DataError(f"{self.source.description} holds no images")
        self.namer = namer or ColorNamer.prototypes()
        self.seg_size = (seg, seg)
        self.transform = transform
        self.concepts = {k + 1: Concept(k + 1, n, "color") for k, n in enumerate(COLOR_NAMES)}
        self.spec = {
            "kind": "auto-color",
            "source": self.source.spec,
            "seg": seg,
            "table": self.namer.path,
            "images": len(self.source),
        }

    def __len__(self) -> int:
        return len(self.source)

    def name(self, i: int) -> str:
        return self.source.records[i].name

    def image(self, i: int) -> Image.Image:
        return self.source.read(i)

    def labels(self, i: int, image: Image.Image | None = None) -> tuple[np.ndarray, list, list]:
        img = image if image is not None else self.image(i)
        small = np.asarray(img.resize(self.seg_size[::-1], Image.BILINEAR, reducing_gap=None))
        return (self.namer.name(small) + 1)[None], [], ["color"]

    def __getitem__(self, i: int) -> ConceptItem:
        try:
            img = self.image(i)
            x = self.transform(img) if self.transform is not None else img
            planes, _, annotated = self.labels(i, img)
        except Exception as e:
            return ConceptItem(
                i, None, torch.zeros(0, *self.seg_size, dtype=torch.long), [], [], skip_reason(e)
            )
        return ConceptItem(i, x, torch.as_tensor(planes), [], annotated)
