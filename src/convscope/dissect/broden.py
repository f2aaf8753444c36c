"""Concept datasets in the Broden format (Bau et al. 2017, NetDissect).

A Broden directory holds ``index.csv`` (one row per image: ``image``, ``split``, ``ih``, ``iw``,
``sh``, ``sw`` and one column per category), ``label.csv`` (``number``, ``name``, ``category``,
...) and the images under ``images/``. A pixel-level category cell lists segmentation PNGs
(separated by ``;``) whose label at each pixel is ``R + 256 * G``; an image-level category cell
(scene, texture) lists label numbers. Label 0 means "no label".
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convscope.data import read_image
from convscope.errors import DataError

PIXEL_CATEGORIES = ("color", "object", "part", "material")
IMAGE_CATEGORIES = ("scene", "texture")


@dataclass(frozen=True)
class Concept:
    number: int
    name: str
    category: str


def decode_segmentation(path: str | os.PathLike) -> np.ndarray:
    """Label ids (H, W) of a Broden segmentation PNG: R + 256 * G."""
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.int64)
    return arr[..., 0] + 256 * arr[..., 1]


class BrodenDataset(torch.utils.data.Dataset):
    """Item i: ``(image tensor, labels (L, sh, sw) int64, image_labels list[int], i)`` where the L
    label planes are the pixel-level segmentations of every category present (0 = none) and
    image-level labels cover the whole image."""

    def __init__(self, root: str | os.PathLike, transform=None, split: str | None = None):
        self.root = Path(root)
        index, labels = self.root / "index.csv", self.root / "label.csv"
        if not index.exists() or not labels.exists():
            raise DataError(f"{self.root} is not a Broden directory (needs index.csv and label.csv)")
        with open(labels, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        self.concepts: dict[int, Concept] = {}
        for r in rows:
            cat = r.get("category", "").split(";")[0].split("(")[0]
            self.concepts[int(r["number"])] = Concept(int(r["number"]), r["name"], cat)
        with open(index, newline="", encoding="utf-8") as f:
            self.rows = [r for r in csv.DictReader(f) if split is None or r.get("split") == split]
        if not self.rows:
            raise DataError(f"{index} lists no images")
        self.categories = [c for c in PIXEL_CATEGORIES + IMAGE_CATEGORIES if c in self.rows[0]]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, i: int) -> Image.Image:
        return read_image(self.root / "images" / self.rows[i]["image"])

    def labels(self, i: int) -> tuple[np.ndarray, list[int]]:
        """Pixel label planes (L, sh, sw) and image-level labels of image ``i``."""
        r = self.rows[i]
        sh, sw = int(r["sh"]), int(r["sw"])
        planes, image_level = [], []
        for cat in self.categories:
            cell = (r.get(cat) or "").strip()
            if not cell:
                continue
            for item in cell.split(";"):
                if cat in PIXEL_CATEGORIES:
                    planes.append(decode_segmentation(self.root / "images" / item))
                else:
                    image_level.append(int(item))
        arr = np.stack(planes) if planes else np.zeros((0, sh, sw), dtype=np.int64)
        return arr, image_level

    def __getitem__(self, i: int):
        img = self.image(i)
        x = self.transform(img) if self.transform is not None else img
        planes, image_level = self.labels(i)
        return x, torch.as_tensor(planes), image_level, i
