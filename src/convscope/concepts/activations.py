"""A layer's activations over a dataset, one row per spatial position, in bounded memory.

The images stream through the scan's data path (:class:`~convscope.inputs.batches.Batches`,
decoding workers, the subject's device, :mod:`convscope.accel`); each image contributes
``per_image`` of its H x W positions (drawn without replacement, seeded), and the rows go into a
reservoir of at most ``max_samples`` rows: uniform reservoir sampling (Vitter's algorithm R) over
all positions seen, so every position kept has the same chance ``max_samples / seen`` whatever
the dataset size, and memory is O(max_samples x C) however many images stream by. The random
draws come from one CPU ``torch.Generator`` seeded with ``seed``: the same data, layer, batch
size and seed give the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from convscope.accel import Accel, prepared
from convscope.errors import UserInputError
from convscope.inputs.batches import Batches
from convscope.inputs.sources import ImageSource, open_images
from convscope.inputs.workers import batch_bytes, resolve_workers
from convscope.recorder import Recorder
from convscope.subject import Subject

Progress = Callable[[int, int], None]


@dataclass
class Activations:
    """Sampled activations of one layer: ``x`` (N, C) float32 on the CPU, ``where`` (N, 3) int64
    (image index in the source, y, x on the layer's grid) for each row, ``seen`` the positions
    offered to the reservoir (after per-image sub-sampling), ``grid`` the layer's (H, W)."""

    layer: str
    x: torch.Tensor
    where: torch.Tensor
    seen: int
    grid: tuple[int, int]


class Reservoir:
    """At most ``capacity`` rows of width ``dim``: a uniform sample (algorithm R) of every row
    offered by :meth:`add`, in O(capacity x dim) memory."""

    def __init__(self, capacity: int, dim: int, generator: torch.Generator):
        if capacity < 1:
            raise UserInputError(f"max_samples must be >= 1, not {capacity}")
        self.capacity = capacity
        self.x = torch.zeros(capacity, dim, dtype=torch.float32)
        self.where = torch.zeros(capacity, 3, dtype=torch.int64)
        self.seen = 0
        self.generator = generator

    def add(self, x: torch.Tensor, where: torch.Tensor) -> None:
        """Offer the rows ``x`` (m, dim) from ``where`` (m, 3), in order."""
        m = len(x)
        if m == 0:
            return
        t = torch.arange(self.seen, self.seen + m)  # each row's position in the stream
        fill = t < self.capacity
        slots = t.clone()
        # row t replaces slot j ~ U{0..t} when j < capacity (rows that fill the reservoir go in)
        j = (torch.rand(m, generator=self.generator, dtype=torch.float64) * (t + 1).double()).long()
        slots[~fill] = j[~fill]
        keep = slots < self.capacity
        src = torch.nonzero(keep).flatten().numpy()
        dst = slots[keep].numpy()
        # the last row offered to a slot wins, as in the sequential algorithm
        last = len(dst) - 1 - np.unique(dst[::-1], return_index=True)[1]
        src, dst = torch.from_numpy(src[last]), torch.from_numpy(dst[last])
        self.x[dst] = x[src].float()
        self.where[dst] = where[src]
        self.seen += m

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = min(self.seen, self.capacity)
        return self.x[:n].clone(), self.where[:n].clone()


def as_source(subject: Subject, data) -> ImageSource:
    """``data`` (an image source, a folder, archive or list of paths) with the subject's transform."""
    source = data if isinstance(data, ImageSource) else open_images(data, transform=subject.transform)
    if source.transform is None:
        source = source.with_transform(subject.transform)
    return source


def as_maps(a: torch.Tensor, layer: str) -> torch.Tensor:
    """A layer output as (B, C, H, W) maps ((B, C) vectors are a 1 x 1 grid)."""
    if a.dim() == 2:
        return a[:, :, None, None]
    if a.dim() != 4:
        raise UserInputError(f"{layer}: cannot take positions from an output of shape {tuple(a.shape)}")
    return a


def collect_activations(
    subject: Subject,
    data,
    layer: str,
    *,
    per_image: int | None = 16,
    max_samples: int = 100_000,
    seed: int = 0,
    batch_size: int = 32,
    workers: int | None = None,
    indices=None,
    accel: Accel | None = None,
    progress: Progress | None = None,
) -> Activations:
    """Stream ``data`` through ``subject`` and keep a seeded uniform sample of ``layer``'s
    activations: each image gives ``per_image`` random positions of its grid (None: all), and
    a reservoir keeps at most ``max_samples`` of all positions seen, so memory is
    O(max_samples x C) whatever the dataset size (see the module docstring). ``indices``
    restricts the images read. ``progress(done, total)`` counts images. Runs on the subject's
    device (move it with ``subject.to``). Returns :class:`Activations`."""
    names = subject.layers.select(layer)
    if len(names) != 1:
        raise UserInputError(f"activations are taken at one layer; {layer!r} names {len(names)}")
    name = names[0]
    if per_image is not None and per_image < 1:
        raise UserInputError(f"per_image must be >= 1 or None, not {per_image}")
    if batch_size < 1:
        raise UserInputError(f"batch_size must be >= 1, not {batch_size}")
    source = as_source(subject, data)
    accel = Accel.of(accel, subject)
    device = subject.device
    generator = torch.Generator().manual_seed(int(seed))
    order = list(range(len(source))) if indices is None else list(indices)
    total = len(order)
    workers = resolve_workers(workers, device, batch_bytes(batch_size, subject.input_size, accel.decode))
    batches = Batches(
        source,
        batch_size=batch_size,
        workers=workers,
        indices=order,
        pin_memory=device.type == "cuda",
        decode=accel.decode,
        device=device,
    )
    report = progress or (lambda d, t: None)
    reservoir: Reservoir | None = None
    grid = (0, 0)
    done = 0
    with prepared(subject.model, accel, device), Recorder(subject, [name], stop=True) as rec:
        for batch in batches:
            if len(batch.indices):
                with torch.inference_mode(), accel.autocast(device):
                    subject(accel.inputs(batch.images, device))
                maps = as_maps(rec[name], name)
                b, c, h, w = maps.shape
                grid = (h, w)
                if reservoir is None:
                    reservoir = Reservoir(max_samples, c, generator)
                k = h * w if per_image is None else min(per_image, h * w)
                if k == h * w:
                    pos = torch.arange(h * w).expand(b, -1)
                else:  # k distinct positions per image, drawn on the CPU so runs repeat
                    pos = torch.rand(b, h * w, generator=generator).argsort(dim=1)[:, :k]
                flat = maps.flatten(2)  # (B, C, HW)
                rows = flat.gather(2, pos.to(flat.device)[:, None, :].expand(-1, c, -1))
                rows = rows.permute(0, 2, 1).reshape(b * k, c).float().cpu()
                img = batch.indices.to(torch.int64)[:, None].expand(-1, k)
                where = torch.stack([img, pos // w, pos % w], dim=2).reshape(b * k, 3)
                if not torch.isfinite(rows).all():
                    raise UserInputError(f"{name}: non-finite activations (try full precision)")
                reservoir.add(rows, where)
            done = min(done + batch_size, total)
            report(done, total)
    if reservoir is None or reservoir.seen == 0:
        raise UserInputError(f"no readable image in {getattr(source, 'description', 'the data')}")
    x, where = reservoir.rows()
    return Activations(name, x, where, reservoir.seen, grid)
