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

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from convscope.accel import Accel, prepared
from convscope.errors import ConvscopeError, UserInputError
from convscope.inputs.batches import Batches
from convscope.inputs.fileio import atomic_path, load_weights_only
from convscope.inputs.sources import ImageSource, open_images
from convscope.inputs.workers import batch_bytes, resolve_workers
from convscope.recorder import Recorder
from convscope.subject import Subject

Progress = Callable[[int, int], None]
CHECKPOINT_KIND = "convscope activations"
CHECKPOINT_VERSION = 1


@dataclass
class Activations:
    """Sampled activations of one layer: ``x`` (N, C) float32 on the CPU, ``where`` (N, 3) int64
    (image index in the source, y, x on the layer's grid) for each row, ``seen`` the positions
    offered to the reservoir (after per-image sub-sampling), ``grid`` the layer's (H, W),
    ``images`` the images read, ``skipped`` the (source index, reason) of each image that could
    not be decoded and gave no rows (``len(skipped)`` of them). ``predicted`` (only with
    ``predict=True``): the model's top-1 class of every image read (source index -> class),
    from the same forward pass."""

    layer: str
    x: torch.Tensor
    where: torch.Tensor
    seen: int
    grid: tuple[int, int]
    images: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    predicted: dict[int, int] | None = None


class Reservoir:
    """At most ``capacity`` rows of width ``dim``: a uniform sample (algorithm R) of every row
    offered by :meth:`add`, in O(min(rows offered, capacity) x dim) memory (the buffers grow by
    doubling up to ``capacity``). The rows live on ``device`` (``where`` and the random draws, from
    the CPU ``generator``, on the CPU)."""

    def __init__(self, capacity: int, dim: int, generator: torch.Generator, device=None):
        if capacity < 1:
            raise UserInputError(f"max_samples must be >= 1, not {capacity}")
        self.capacity = capacity
        start = min(capacity, 4096)
        self.x = torch.zeros(start, dim, dtype=torch.float32, device=device)
        self.where = torch.zeros(start, 3, dtype=torch.int64)
        self.seen = 0
        self.generator = generator

    def _reserve(self, rows: int) -> None:
        # a small dataset never pays for the whole capacity (100k x 1280 floats is 0.5 GB)
        if rows <= len(self.x):
            return
        size = min(self.capacity, max(rows, 2 * len(self.x)))
        x = torch.zeros(size, self.x.shape[1], dtype=torch.float32, device=self.x.device)
        where = torch.zeros(size, 3, dtype=torch.int64)
        x[: len(self.x)] = self.x
        where[: len(self.where)] = self.where
        self.x, self.where = x, where

    def add(self, x: torch.Tensor, where: torch.Tensor) -> None:
        """Offer the rows ``x`` (m, dim) (on any device) from ``where`` (m, 3), in order."""
        m = len(x)
        if m == 0:
            return
        self._reserve(min(self.capacity, self.seen + m))
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
        if self.x.device == x.device == src.device:
            self.x[dst] = x[src].float()
        else:
            on = self.x.device
            self.x[dst.to(on, non_blocking=True)] = x[src.to(x.device, non_blocking=True)].to(on).float()
        self.where[dst] = where[src]
        self.seen += m

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows kept (on the CPU) and where they come from."""
        n = min(self.seen, self.capacity)
        return self.x[:n].cpu().clone(), self.where[:n].clone()

    def to_dict(self) -> dict:
        n = min(self.seen, self.capacity)
        return {
            "dim": self.x.shape[1],
            "x": self.x[:n].cpu(),
            "where": self.where[:n].clone(),
            "seen": self.seen,
        }

    @classmethod
    def from_dict(cls, d: dict, capacity: int, generator: torch.Generator, device=None) -> Reservoir:
        out = cls(capacity, int(d["dim"]), generator, device)
        n = len(d["x"])
        out._reserve(n)
        out.x[:n] = d["x"].to(out.x.device)
        out.where[:n] = d["where"]
        out.seen = int(d["seen"])
        return out


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
    checkpoint: str | Path | None = None,
    checkpoint_every: float = 30.0,
    resume: bool = False,
    predict: bool = False,
) -> Activations:
    """Stream ``data`` through ``subject`` and keep a seeded uniform sample of ``layer``'s
    activations: each image gives ``per_image`` random positions of its grid (None: all), and
    a reservoir keeps at most ``max_samples`` of all positions seen, so memory is
    O(max_samples x C) whatever the dataset size (see the module docstring). ``indices``
    restricts the images read. ``progress(done, total)`` counts images. Runs on the subject's
    device (move it with ``subject.to``). ``checkpoint``: a file the state is saved to every
    ``checkpoint_every`` seconds and at the end; ``resume=True`` continues from it (a missing
    file starts afresh; without ``resume`` an existing one is replaced). Images that cannot be
    decoded are skipped and listed in the result. ``predict=True`` runs the whole forward pass
    (not stopped at the layer) and keeps each image's top-1 class (``Activations.predicted``;
    the rows drawn are the same). Returns :class:`Activations`."""
    names = subject.layers.select(layer)
    if len(names) != 1:
        raise UserInputError(f"activations are taken at one layer; {layer!r} names {len(names)}")
    name = names[0]
    if per_image is not None and per_image < 1:
        raise UserInputError(f"per_image must be >= 1 or None, not {per_image}")
    if batch_size < 1:
        raise UserInputError(f"batch_size must be >= 1, not {batch_size}")
    if max_samples < 1:
        raise UserInputError(f"max_samples must be >= 1, not {max_samples}")
    source = as_source(subject, data)
    accel = Accel.of(accel, subject)
    device = subject.device
    generator = torch.Generator().manual_seed(int(seed))
    order = list(range(len(source))) if indices is None else [int(i) for i in indices]
    total = len(order)
    # the reservoir stays where the activations are, unless that is the CPU
    keep_on = device if device.type != "cpu" else torch.device("cpu")
    config = {
        "model": subject.name,
        "source": getattr(source, "description", type(source).__name__),
        "n_source": len(source),
        "layer": str(name),
        "per_image": per_image,
        "max_samples": int(max_samples),
        "seed": int(seed),
        "batch_size": int(batch_size),
        "indices": hashlib.sha1(json.dumps(order).encode()).hexdigest(),
        **accel.config(),
        **({"predict": True} if predict else {}),  # absent otherwise: older checkpoints still resume
    }
    reservoir: Reservoir | None = None
    grid = (0, 0)
    position, images = 0, 0
    skipped: dict[int, str] = {}
    predicted: dict[int, int] = {}
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if resume and ckpt is not None and ckpt.exists():
        advice = "start a new collection without resume"
        saved = load_weights_only(ckpt, "activations checkpoint", advice)
        if not isinstance(saved, dict) or saved.get("kind") != CHECKPOINT_KIND:
            raise UserInputError(
                f"cannot resume: {ckpt} is not an activations checkpoint; it is left as it is, {advice}"
            )
        if saved.get("version") != CHECKPOINT_VERSION or saved.get("config") != config:
            old = saved.get("config") if isinstance(saved.get("config"), dict) else {}
            differ = sorted(k for k in config.keys() | old.keys() if old.get(k) != config.get(k)) or [
                "version"
            ]
            raise ConvscopeError(
                f"the checkpoint {ckpt} belongs to a collection with other settings ({', '.join(differ)}); "
                "it is left as it is: start a new collection instead of resuming"
            )
        generator.set_state(saved["generator"])
        position, images = int(saved["position"]), int(saved["images"])
        skipped = {int(i): str(r) for i, r in saved["skipped"]}
        predicted = {int(i): int(c) for i, c in saved.get("predicted", [])}
        grid = tuple(int(v) for v in saved["grid"])
        if saved["reservoir"] is not None:
            reservoir = Reservoir.from_dict(saved["reservoir"], max_samples, generator, keep_on)

    def save_checkpoint() -> None:
        if ckpt is None:
            return
        blob = {
            "kind": CHECKPOINT_KIND,
            "version": CHECKPOINT_VERSION,
            "config": config,
            "position": position,
            "images": images,
            "skipped": [[i, r] for i, r in sorted(skipped.items())],
            **({"predicted": [[i, c] for i, c in sorted(predicted.items())]} if predict else {}),
            "grid": list(grid),
            "generator": generator.get_state(),
            "reservoir": reservoir.to_dict() if reservoir is not None else None,
        }
        with atomic_path(ckpt) as tmp:
            torch.save(blob, tmp)

    workers = resolve_workers(workers, device, batch_bytes(batch_size, subject.input_size, accel.decode))
    batches = Batches(
        source,
        batch_size=batch_size,
        workers=workers,
        indices=order[position:],  # a multiple of batch_size: the batches of an uninterrupted run
        pin_memory=device.type == "cuda",
        decode=accel.decode,
        device=device,
    )
    report = progress or (lambda d, t: None)
    if position:
        report(position, total)  # where a resumed collection starts
    # on an accelerator finiteness is checked at checkpoints and at the end (no sync per batch)
    finite = torch.ones((), dtype=torch.bool, device=device)

    def check_finite() -> None:
        if not bool(finite):
            raise UserInputError(f"{name}: non-finite activations (try full precision)")

    last_save = time.monotonic()
    with prepared(subject.model, accel, device), Recorder(subject, [name], stop=not predict) as rec:
        for batch in batches:
            skipped.update((int(i), str(r)) for i, r in batch.skipped)
            if len(batch.indices):
                with torch.inference_mode(), accel.autocast(device):
                    out = subject(accel.inputs(batch.images, device))
                if predict:
                    if not isinstance(out, torch.Tensor) or out.dim() != 2:
                        raise UserInputError(f"{subject.name}: predict needs (B, classes) logits as output")
                    top = out.float().argmax(dim=1).cpu().tolist()
                    predicted.update(zip(batch.indices.cpu().tolist(), top))
                maps = as_maps(rec[name], name)
                b, c, h, w = maps.shape
                grid = (h, w)
                if reservoir is None:
                    reservoir = Reservoir(max_samples, c, generator, keep_on)
                k = h * w if per_image is None else min(per_image, h * w)
                if k == h * w:
                    pos = torch.arange(h * w).expand(b, -1)
                else:  # k distinct positions per image, drawn on the CPU so runs repeat
                    pos = torch.rand(b, h * w, generator=generator).argsort(dim=1)[:, :k]
                flat = maps.flatten(2)  # (B, C, HW)
                rows = flat.gather(2, pos.to(flat.device)[:, None, :].expand(-1, c, -1))
                rows = rows.permute(0, 2, 1).reshape(b * k, c).float().to(keep_on)
                img = batch.indices.cpu().to(torch.int64)[:, None].expand(-1, k)
                where = torch.stack([img, pos // w, pos % w], dim=2).reshape(b * k, 3)
                finite = finite & torch.isfinite(rows).all()
                if keep_on.type == "cpu":
                    check_finite()
                reservoir.add(rows, where)
                images += len(batch.indices)
            position = min(position + batch_size, total)
            if ckpt is not None and time.monotonic() - last_save >= checkpoint_every:
                check_finite()
                save_checkpoint()
                last_save = time.monotonic()
            report(position, total)
    check_finite()
    save_checkpoint()
    if reservoir is None or reservoir.seen == 0:
        raise UserInputError(f"no readable image in {getattr(source, 'description', 'the data')}")
    x, where = reservoir.rows()
    return Activations(
        name, x, where, reservoir.seen, grid, images, sorted(skipped.items()), predicted if predict else None
    )
