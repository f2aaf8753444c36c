"""Layer activations over a dataset, pooled to one vector per image: global average (GAP), max
(MAC, Tolias et al. 2016), sum (SPoC, Babenko & Lempitsky 2015) or generalised mean (GeM,
Radenović et al. 2018). Streamed to memory-mapped ``.npy`` files when given a folder; a killed
extraction resumes where its last checkpoint left it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from convscope.accel import Accel, check_finite, prepared, with_default_settings
from convscope.errors import UserInputError
from convscope.inputs.batches import Batches
from convscope.inputs.fileio import write_text
from convscope.inputs.sources import ImageSource
from convscope.inputs.workers import batch_bytes, resolve_workers
from convscope.recorder import Recorder
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
class FeatureSet:
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

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureSet:
        """A finished feature folder written by :func:`extract_features`."""
        path = Path(path)
        meta_file = path / "meta.json"
        if not meta_file.exists():
            raise UserInputError(f"{path} holds no features (no meta.json); run `convscope features`")
        meta = json.loads(meta_file.read_text())
        if meta["done"] < meta["batches"]:
            raise UserInputError(
                f"{path}: the extraction stopped at batch {meta['done']} of "
                f"{meta['batches']}; resume it first"
            )
        feats = {name: np.load(path / f"{i:03d}.npy", mmap_mode="r") for i, name in enumerate(meta["layers"])}
        return cls(
            feats,
            meta["names"],
            np.load(path / "labels.npy"),
            meta["classes"],
            np.load(path / "valid.npy"),
            meta["pooling"],
            meta["model"],
            meta["source"],
            path,
            p=float(meta.get("p", 3.0)),
        )


def extract_features(
    subject: Subject,
    source: ImageSource,
    layers: Sequence[str],
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
    """Pool ``layers`` of ``subject`` over every image of ``source``. With ``out``, features go
    to memory-mapped files there (``NNN.npy`` per layer, ``meta.json``), checkpointed every
    ``checkpoint_every`` seconds; a folder left by a killed run of the same configuration is
    continued (``resume``). ``accel``: precision, layout and decoding (:mod:`convscope.accel`)."""
    if pooling not in POOLINGS:
        raise UserInputError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if source.transform is None:
        source = source.with_transform(subject.transform)
    infos = [subject.layer(n) for n in layers]
    names = [i.name for i in infos]
    dims = [int(i.shape[0]) for i in infos]
    n = len(source)
    n_batches = (n + batch_size - 1) // batch_size
    accel = Accel.of(accel, subject)
    device = subject.device
    config = {
        "layers": names,
        "dims": dims,
        "pooling": pooling,
        "p": p,
        "images": n,
        "batch_size": batch_size,
        "model": subject.name,
        "source": source.spec,
        **accel.config(),
    }
    labels = np.array([r.label if r.label is not None else -1 for r in source.records], np.int64)
    start = 0
    if out is None:
        feats = {nm: np.zeros((n, d), np.float32) for nm, d in zip(names, dims)}
        valid = np.zeros(n, bool)
    else:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        meta_file = out / "meta.json"
        old = json.loads(meta_file.read_text()) if meta_file.exists() else None
        if old is not None and {k: with_default_settings(old).get(k) for k in config} != config:
            raise UserInputError(
                f"{out} holds features of another configuration; choose another folder or delete it"
            )
        if old is not None and resume:
            start = old["done"]
        mode = "r+" if start else "w+"
        feats = {
            nm: np.lib.format.open_memmap(
                out / f"{i:03d}.npy", mode=mode, dtype=np.float32, shape=None if start else (n, d)
            )
            for i, (nm, d) in enumerate(zip(names, dims))
        }
        valid = np.load(out / "valid.npy") if start else np.zeros(n, bool)
        np.save(out / "labels.npy", labels)

    def checkpoint(done: int) -> None:
        if out is None:
            return
        for f in feats.values():
            f.flush()
        np.save(out / ".valid.tmp.npy", valid)
        os.replace(out / ".valid.tmp.npy", out / "valid.npy")
        write_text(
            out / "meta.json",
            json.dumps(
                {
                    **config,
                    "done": done,
                    "batches": n_batches,
                    "names": [r.name for r in source.records],
                    "classes": source.classes,
                },
                indent=1,
            ),
        )

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
        out,
        batches.report.items,
        p,
    )
