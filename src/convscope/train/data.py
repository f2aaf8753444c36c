"""Whole datasets of small images as uint8 tensors in memory (CIFAR-10: 50,000 x 3 x 32 x 32 =
150 MB), decoded once and cached, with batched augmentation on the device."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import functional as TF

from convscope.errors import DataError, UserInputError
from convscope.inputs.sources import open_images
from convscope.preprocess import Preprocess


@dataclass
class TensorImages:
    """``images`` (N, 3, H, W) uint8, ``labels`` (N,) int64, ``classes``; ``skipped`` files."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx) -> TensorImages:
        idx = torch.as_tensor(idx)
        return TensorImages(self.images[idx], self.labels[idx], self.classes)


class _Resize:
    def __init__(self, size: int):
        self.size = size

    def __call__(self, img):
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size))
        return TF.pil_to_tensor(img)


class _Geometry:
    """A model's own resize and crop (``Preprocess.resize_only``), as uint8: the pixels that
    ``Subject.load_images`` normalises (module-level: workers pickle it)."""

    def __init__(self, preprocess: Preprocess):
        self.preprocess = preprocess

    def __call__(self, img):
        return TF.pil_to_tensor(self.preprocess.resize_only(img.convert("RGB")))


def load_tensor_images(
    source: str | os.PathLike,
    size: int = 32,
    pattern: str | None = None,
    cache: str | os.PathLike | None = None,
    limit_per_class: int | None = None,
    workers: int = 0,
    preprocess: Preprocess | None = None,
) -> TensorImages:
    """Decode an ImageFolder-style folder or archive (``pattern`` e.g. ``"train/*"``) to uint8
    tensors: resized to ``size`` x ``size`` px, or with ``preprocess`` (a model's
    :class:`~convscope.Preprocess`, e.g. ``subject.preprocess`` to fine-tune it) by that
    preprocessing's own resize and crop, so that normalised with its mean and std they are
    exactly what the model sees. ``cache``: a folder where the decoded arrays are kept, keyed
    by the source and the geometry, so later runs load them in a second."""
    resize = _Geometry(preprocess) if preprocess is not None else _Resize(size)
    src = open_images(source, transform=resize, pattern=pattern)
    if not src.classes:
        raise DataError(f"{src.description} has no class sub-folders (need ImageFolder layout)")
    keep = list(range(len(src)))
    if limit_per_class is not None:
        seen: dict[int, int] = {}
        keep = []
        for r in src.records:
            if seen.get(r.label, 0) < limit_per_class:
                seen[r.label] = seen.get(r.label, 0) + 1
                keep.append(r.index)
        src = src.subset(keep)
    key = hashlib.sha1(
        json.dumps(
            [
                str(src.spec),
                size if preprocess is None else repr(preprocess),
                pattern,
                limit_per_class,
                len(src),
            ]
        ).encode()
    ).hexdigest()[:12]
    if cache is not None:
        f = Path(cache) / f"images-{key}.npz"
        if f.exists():
            z = np.load(f)
            return TensorImages(
                torch.from_numpy(z["images"]),
                torch.from_numpy(z["labels"]),
                list(z["classes"]),
                int(z["skipped"]),
            )
    loader = torch.utils.data.DataLoader(src, batch_size=256, num_workers=workers, collate_fn=_as_list)
    images, labels, skipped = [], [], 0
    for items in loader:
        for t, i, err in items:
            if err is not None:
                skipped += 1
                continue
            images.append(t)
            labels.append(src.records[i].label)
    if not images:
        where = src.description + (f" matching {pattern!r}" if pattern else "")
        raise DataError(f"no readable image in {where}")
    out = TensorImages(torch.stack(images), torch.tensor(labels, dtype=torch.long), src.classes, skipped)
    if cache is not None:
        Path(cache).mkdir(parents=True, exist_ok=True)
        tmp = Path(cache) / f".images-{key}.tmp.npz"
        np.savez(
            tmp,
            images=out.images.numpy(),
            labels=out.labels.numpy(),
            classes=np.array(out.classes),
            skipped=skipped,
        )
        os.replace(tmp, f)
    return out


def load_split(
    source: str | os.PathLike,
    train_pattern: str = "train/*",
    test_pattern: str = "test/*",
    *,
    size: int = 32,
    preprocess: Preprocess | None = None,
    limit: int | None = None,
    test_limit: int | None = None,
    cache: str | os.PathLike | None = None,
    workers: int = 0,
) -> tuple[TensorImages, TensorImages]:
    """The training and test images of an ImageFolder-style source with ``train/`` and
    ``test/`` parts (see :func:`load_tensor_images` for ``size`` and ``preprocess``). ``limit``
    caps the training images per class, ``test_limit`` the test images per class; the test
    split is whole unless ``test_limit`` is given."""
    for name, value in (("--limit", limit), ("--test-limit", test_limit)):
        if value is not None and value < 1:
            raise UserInputError(f"{name} must be at least 1 image per class, not {value}")
    common = dict(size=size, cache=cache, workers=workers, preprocess=preprocess)
    train = load_tensor_images(source, pattern=train_pattern, limit_per_class=limit, **common)
    test = load_tensor_images(source, pattern=test_pattern, limit_per_class=test_limit, **common)
    return train, test


def augment(
    x: torch.Tensor, pad: int = 4, flip: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random translation by up to ``pad`` px (reflect-padded crop) and horizontal flip of a
    batch (B, C, H, W), one draw per image."""
    b, _, h, w = x.shape
    if pad:
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        ci = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = xp[bi, ci, rows, cols]
    if flip:
        m = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        x = torch.where(m[:, None, None, None], x.flip(3), x)
    return x


def _as_list(items: list) -> list:
    """Collate that keeps a batch's items as they are (module-level: workers pickle it)."""
    return items
