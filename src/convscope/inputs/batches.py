"""Batches of a source through a DataLoader: undecodable files dropped and counted."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from convscope.errors import DataError
from convscope.inputs.images import SkipReport
from convscope.inputs.sources import ImageSource
from convscope.inputs.workers import PREFETCH


@dataclass
class ImageBatch:
    """A batch: ``images`` (B, 3, H, W), their source ``indices`` (B,), and what was skipped."""

    images: torch.Tensor
    indices: torch.Tensor
    skipped: list[tuple[int, str]]

    def pin_memory(self) -> ImageBatch:
        """The batch in page-locked memory (the DataLoader calls this with ``pin_memory=True``;
        without it a custom batch type is silently left unpinned)."""
        return ImageBatch(self.images.pin_memory(), self.indices.pin_memory(), self.skipped)


def collate(items) -> ImageBatch:
    """DataLoader collate that drops undecodable items and keeps their reasons."""
    good = [(t, i) for t, i, err in items if err is None]
    skipped = [(i, err) for t, i, err in items if err is not None]
    if good:
        images = torch.stack([t for t, _ in good])
        indices = torch.tensor([i for _, i in good], dtype=torch.long)
    else:
        images = torch.empty(0)
        indices = torch.empty(0, dtype=torch.long)
    return ImageBatch(images, indices, skipped)


class Batches:
    """Iterate a source in batches through a DataLoader (``workers`` processes decode).

    Batch ``j`` holds positions ``j * batch_size ...`` of the read order, minus the files that
    could not be decoded (so a batch may be empty). ``report`` collects every skipped file;
    ``indices`` (optional) restricts and orders the images read. With ``decode="device"`` the
    workers only read bytes and :mod:`convscope.inputs.decode` decodes each batch on ``device`` (the
    batch's images are then already there).
    """

    def __init__(
        self,
        source: ImageSource,
        batch_size: int = 32,
        workers: int = 0,
        indices: Sequence[int] | None = None,
        pin_memory: bool = False,
        decode: str = "cpu",
        device: torch.device | str = "cpu",
    ):
        if source.transform is None:
            raise DataError("the image source needs a transform (e.g. subject.transform)")
        self.source = source
        self.batch_size = batch_size
        self.workers = workers
        self.indices = list(indices) if indices is not None else None
        self.pin_memory = pin_memory
        self.decode = decode
        self.device = torch.device(device)
        self.report = SkipReport()
        if decode == "device":
            from convscope.inputs.decode import device_transform

            self._preprocess = device_transform(source)
        elif decode != "cpu":
            raise DataError(f"decode must be cpu or device, not {decode!r}")

    def __len__(self) -> int:
        n = len(self.indices) if self.indices is not None else len(self.source)
        return (n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[ImageBatch]:
        on_device = self.decode == "device"
        if on_device:
            from convscope.inputs.decode import RawImages, decode_batch

            dataset = RawImages(self.source)
        else:
            dataset = self.source
        if self.indices is not None:
            dataset = torch.utils.data.Subset(dataset, self.indices)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.workers,
            collate_fn=_collate_raw if on_device else collate,
            pin_memory=self.pin_memory and not on_device,
            persistent_workers=False,
            prefetch_factor=PREFETCH if self.workers else None,
        )
        for batch in loader:
            if on_device:
                good, skipped = batch
                images, order, bad = decode_batch(good, self._preprocess, self.device)
                batch = ImageBatch(images, torch.tensor(order, dtype=torch.long), skipped + bad)
            for i, reason in batch.skipped:
                self.report.add(self.source.records[i].name, reason)
            yield batch


def _collate_raw(items):
    return (
        [(t, i) for t, i, err in items if err is None],
        [(i, err) for t, i, err in items if err is not None],
    )
