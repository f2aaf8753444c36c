"""Layer activations over a dataset, pooled to one vector per image: global average (GAP), max
(MAC, Tolias et al. 2016), sum (SPoC, Babenko & Lempitsky 2015) or generalised mean (GeM,
Radenović et al. 2018). Streamed to memory-mapped ``.npy`` files when given a folder; a killed
extraction resumes where its last checkpoint left it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from convscope.accel import Accel, check_finite, prepared
from convscope.errors import UserInputError
from convscope.inputs.batches import Batches
from convscope.inputs.sources import ImageSource
from convscope.inputs.workers import batch_bytes, resolve_workers
from convscope.layers import LayerSpec, LayerTable
from convscope.recorder import Recorder
from convscope.represent.folder import FeatureWriter, folder_config, read_folder, source_labels, write_folder
from convscope.results import Result
from convscope.subject import Subject

POOLINGS = ("gap", "mac", "spoc", "gem")


def pool(a: torch.Tensor, method: str = "gap", p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """(B, C, H, W) maps -> (B, C) vectors; (B, C) inputs are returned as they are."""
    if a.dim() == 2:
        return a
    if a.dim() != 4:
        raise UserInputError(f"cannot pool activations of shape {tuple(a.shape)}")
    if method == "gap":
        return a.mean(dim=(2, 3))
    if method == "mac":
        return a.amax(dim=(2, 3))
    if method == "spoc":
        return a.sum(dim=(2, 3))
    if method == "gem":
        return a.clamp_min(eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
    raise UserInputError(f"unknown pooling {method!r}; choose one of {', '.join(POOLINGS)}")


@dataclass
class FeatureSet(Result):
    """Pooled features of ``layers``: ``features[layer]`` (N, C) float32 over the N images of the
    source in its order (rows of unreadable images are zero and ``valid`` False), ``labels``
    (N,) class indices (-1 when unknown), ``names`` the images' names."""

    features: dict[str, np.ndarray]
    names: list[str]
    labels: np.ndarray
    classes: list[str]
    valid: np.ndarray
    pooling: str
    model: str = "model"
    source: dict = field(default_factory=dict)
    path: Path | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # of this run, with reasons
    p: float = 3.0  # the GeM exponent used

    @property
    def layers(self) -> list[str]:
        return list(self.features)

    def select(self, spec: LayerSpec | None = None) -> list[str]:
        """The stored layers ``spec`` names, in the one layer vocabulary as far as names go
        (:meth:`convscope.layers.LayerTable.select`: names, globs, comma lists, callables
        ``LayerInfo -> bool``); None or ``"all"``: every stored layer."""
        if spec is None or spec == "all":
            return self.layers
        return LayerTable.from_names(self.layers, what="layer with features").select(spec)

    def get(self, layer: str, valid_only: bool = True) -> np.ndarray:
        """(N', C) features of ``layer`` (only readable images unless ``valid_only=False``)."""
        if layer not in self.features:
            raise UserInputError(f"no features of {layer!r}; have {', '.join(self.features)}")
        x = np.asarray(self.features[layer])
        return x[self.valid] if valid_only else x

    def valid_labels(self) -> np.ndarray:
        return self.labels[self.valid]

    def valid_indices(self) -> np.ndarray:
        return np.flatnonzero(self.valid)

    def to_image(self, channels: int = 64):
        """Per layer, the readable images (rows, by class) by their first ``channels`` dimensions."""
        from convscope.render.plots import figure_to_image
        from convscope.render.represent import feature_figure

        feats = {n: self.get(n) for n in self.layers}
        return figure_to_image(feature_figure(feats, self.valid_labels(), self.headline(), channels))

    def headline(self) -> str:
        n = int(np.asarray(self.valid).sum())
        return f"{self.model} features ({self.pooling}) of {n} images: {', '.join(self.layers)}"

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureSet:
        """A finished feature folder (written by :func:`extract_features`, a Ray engine or
        :meth:`save`); the features stay memory-mapped."""
        got = read_folder(path)
        meta = got["meta"]
        return cls(
            got["features"],
            meta["names"],
            got["labels"],
            meta["classes"],
            got["valid"],
            meta["pooling"],
            meta["model"],
            meta["source"],
            Path(path),
            p=float(meta.get("p", 3.0)),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write these features as a feature folder at ``path`` (what :meth:`load` reads)."""
        config = {"pooling": self.pooling, "p": self.p, "images": len(self.names), "model": self.model}
        return write_folder(
            path,
            {**config, "source": self.source},
            {n: np.asarray(f) for n, f in self.features.items()},
            self.valid,
            image_names=self.names,
            labels=self.labels,
            classes=self.classes,
        )


def extract_features(
    subject: Subject,
    source: ImageSource,
    layers: LayerSpec,
    *,
    pooling: str = "gap",
    p: float = 3.0,
    out: str | os.PathLike | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    resume: bool = True,
    accel: Accel | None = None,
    checkpoint_every: float = 10.0,
    progress: Callable[[int, int], None] | None = None,
) -> FeatureSet:
    """Pool ``layers`` of ``subject`` (any layer spec: :meth:`~convscope.layers.LayerTable.select`)
    over every image of ``source``. With ``out``, features go
    to memory-mapped files there (``NNN.npy`` per layer, ``meta.json``), checkpointed every
    ``checkpoint_every`` seconds; a folder left by a killed run of the same configuration is
    continued (``resume``). ``accel``: precision, layout and decoding (:mod:`convscope.accel`)."""
    if pooling not in POOLINGS:
        raise UserInputError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if source.transform is None:
        source = source.with_transform(subject.transform)
    infos = [subject.layers.get(a) for a in subject.layers.select(layers)]
    names = [i.name for i in infos]
    dims = [int(i.shape[0]) for i in infos]
    n = len(source)
    n_batches = (n + batch_size - 1) // batch_size
    accel = Accel.of(accel, subject)
    device = subject.device
    config = folder_config(
        subject, source, names, dims, pooling, p, batch_size=batch_size, accel=accel.config()
    )
    labels = source_labels(source)
    start = 0
    folder = None
    if out is None:
        feats = {nm: np.zeros((n, d), np.float32) for nm, d in zip(names, dims)}
        valid = np.zeros(n, bool)
    else:
        folder = FeatureWriter(
            out,
            config,
            dims,
            image_names=[r.name for r in source.records],
            labels=labels,
            classes=source.classes,
            parts=n_batches,
            resume=resume,
        )
        start = folder.first_missing()
        feats, valid = folder.features, folder.valid

    def checkpoint(done: int) -> None:
        if folder is not None:
            folder.finish_parts(range(done))
            folder.checkpoint()

    workers = resolve_workers(workers, device, batch_bytes(batch_size, subject.input_size, accel.decode))
    batches = Batches(
        source,
        batch_size=batch_size,
        workers=workers,
        indices=range(start * batch_size, n),
        pin_memory=device.type == "cuda",
        decode=accel.decode,
        device=device,
    )
    report = progress or (lambda d, t: None)
    last = time.monotonic()
    done = start
    with prepared(subject.model, accel, device), Recorder(subject, names, stop=True) as rec:
        for batch in batches:
            if len(batch.indices):
                with torch.inference_mode(), accel.autocast(device):
                    subject(accel.inputs(batch.images, device))
                idx = batch.indices.numpy()
                pooled = {nm: pool(rec[nm].float(), pooling, p).cpu() for nm in names}
                check_finite(accel, pooled)  # on the host already: no extra device sync
                for nm in names:
                    feats[nm][idx] = pooled[nm].numpy()
                valid[idx] = True
            done += 1
            report(min(done * batch_size, n), n)
            if time.monotonic() - last > checkpoint_every:
                checkpoint(done)
                last = time.monotonic()
    checkpoint(n_batches)
    return FeatureSet(
        feats,
        [r.name for r in source.records],
        labels,
        source.classes,
        valid,
        pooling,
        subject.name,
        source.spec,
        None if folder is None else folder.path,
        batches.report.items,
        p,
    )
