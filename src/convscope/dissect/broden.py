"""Concept datasets in the Broden format (Bau et al. 2017, NetDissect).

A Broden directory holds ``index.csv`` (one row per image: ``image``, ``split``, ``ih``, ``iw``,
``sh``, ``sw`` and one column per category), ``label.csv`` (``number``, ``name``, ``category``,
...) and the images under ``images/``. A pixel-level category cell lists segmentation PNGs
(separated by ``;``) whose label at each pixel is ``R + 256 * G``; an image-level category cell
(scene, texture) lists label numbers. Label 0 means "no label"; an empty cell means the image is
not annotated in that category.

Every concept dataset (this one, :class:`~convscope.dissect.colors.ColorConcepts`) yields
:class:`ConceptItem` and has ``concepts`` (number -> :class:`Concept`), ``categories`` and
``seg_size``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convscope.dissect.concepts import Concept, ConceptItem
from convscope.errors import DataError
from convscope.imageops import read_image
from convscope.inputs.images import skip_reason

PIXEL_CATEGORIES = ("color", "object", "part", "material")
IMAGE_CATEGORIES = ("scene", "texture")


def decode_segmentation(path: str | os.PathLike) -> np.ndarray:
    """Label ids (H, W) of a Broden segmentation PNG: R + 256 * G."""
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.int64)
    return arr[..., 0] + 256 * arr[..., 1]


class BrodenDataset(torch.utils.data.Dataset):
    """A Broden-format directory; item ``i`` is a :class:`ConceptItem`. ``transform`` maps a PIL
    image to the model input (``dissect`` sets it to a squash resize, so that labels align)."""

    def __init__(
        self, root: str | os.PathLike, transform=None, split: str | None = None, limit: int | None = None
    ):
        self.root = Path(root)
        index, labels = self.root / "index.csv", self.root / "label.csv"
        if not index.exists() or not labels.exists():
            raise DataError(f"{self.root} is not a Broden directory (needs index.csv and label.csv)")
        with open(labels, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        self.concepts: dict[int, Concept] = {}
        for r in rows:
            cat = r.get("category", "").split(";")[0].split("(")[0]
            if int(r["number"]) > 0:
                self.concepts[int(r["number"])] = Concept(int(r["number"]), r["name"], cat)
        with open(index, newline="", encoding="utf-8") as f:
            self.rows = [r for r in csv.DictReader(f) if split is None or r.get("split") == split]
        if limit is not None:
            self.rows = self.rows[:limit]
        if not self.rows:
            raise DataError(f"{index} lists no images")
        used = {c.category for c in self.concepts.values()}
        self.categories = [c for c in PIXEL_CATEGORIES + IMAGE_CATEGORIES if c in self.rows[0] and c in used]
        self.seg_size = (int(self.rows[0]["sh"]), int(self.rows[0]["sw"]))
        self.transform = transform
        self.spec = {
            "kind": "broden",
            "source": str(self.root.resolve()),
            "split": split,
            "images": len(self.rows),
        }

    def __len__(self) -> int:
        return len(self.rows)

    def name(self, i: int) -> str:
        return self.rows[i]["image"]

    def image(self, i: int) -> Image.Image:
        return read_image(self.root / "images" / self.rows[i]["image"])

    def labels(self, i: int) -> tuple[np.ndarray, list[int], list[str]]:
        """Pixel label planes (L, sh, sw), image-level labels and annotated categories."""
        r = self.rows[i]
        sh, sw = self.seg_size
        planes, image_level, annotated = [], [], []
        for cat in self.categories:
            cell = (r.get(cat) or "").strip()
            if not cell:
                continue
            annotated.append(cat)
            for item in cell.split(";"):
                if cat in PIXEL_CATEGORIES:
                    seg = decode_segmentation(self.root / "images" / item)
                    if seg.shape != (sh, sw):  # other sizes are brought to the dataset's
                        seg = np.asarray(
                            Image.fromarray(seg.astype(np.int32)).resize((sw, sh), Image.NEAREST),
                            dtype=np.int64,
                        )
                    planes.append(seg)
                else:
                    image_level.append(int(item))
        arr = np.stack(planes) if planes else np.zeros((0, sh, sw), dtype=np.int64)
        return arr, image_level, annotated

    def __getitem__(self, i: int) -> ConceptItem:
        try:
            img = self.image(i)
            x = self.transform(img) if self.transform is not None else img
            planes, image_level, annotated = self.labels(i)
        except Exception as e:  # a bad file is skipped and counted, never fatal
            return ConceptItem(
                i, None, torch.zeros(0, *self.seg_size, dtype=torch.long), [], [], skip_reason(e)
            )
        return ConceptItem(i, x, torch.as_tensor(planes), image_level, annotated)
