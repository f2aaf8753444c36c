"""A feature folder: the one writer and reader of its files, for every engine.

::

    FOLDER/
      meta.json     the configuration, the images' names and classes, and progress
      000.npy ...   (N, C) float32 pooled features of each layer, in the order of meta's layers
      valid.npy     (N,) bool: the image was read
      labels.npy    (N,) int64 class indices (-1 when unknown)

The work is cut into ``parts`` (the batches of a local run, the shards of a Ray one); ``meta``
records ``batches`` (the number of parts) and ``done`` (how many are finished), plus
``done_shards`` (which) when the finished parts are not the first ``done`` ones. A folder is
finished when ``done == batches``; one left by a killed run of the same configuration is
continued from the parts it holds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from convscope.accel import with_default_settings
from convscope.errors import UserInputError
from convscope.inputs.fileio import write_text

META = "meta.json"


def folder_config(
    subject, source, names: Sequence[str], dims: Sequence[int], pooling: str, p: float, **extra
) -> dict:
    """The configuration a feature folder records (and a resumed run must match): layers and
    their widths, pooling (and GeM's ``p``), the number of images, model and source, plus the
    engine's own settings in ``extra`` (batch size or shards, accel settings)."""
    return {
        "layers": list(names),
        "dims": list(dims),
        "pooling": pooling,
        "p": p,
        "images": len(source),
        **{k: v for k, v in extra.items() if k not in ("accel",)},
        "model": subject.name,
        "source": source.spec,
        **extra.get("accel", {}),
    }


def source_labels(source) -> np.ndarray:
    """(N,) int64 class index of every image of ``source`` (-1 when unknown)."""
    return np.array([r.label if r.label is not None else -1 for r in source.records], np.int64)


def layer_file(path: str | os.PathLike, i: int) -> Path:
    """The ``.npy`` file of the ``i``-th layer of a feature folder."""
    return Path(path) / f"{i:03d}.npy"


def read_meta(path: str | os.PathLike) -> dict | None:
    """The ``meta.json`` of a feature folder, or None when there is none."""
    f = Path(path) / META
    return json.loads(f.read_text()) if f.exists() else None


def finished_parts(meta: dict) -> set[int]:
    """The parts a folder's ``meta`` says are finished."""
    if "done_shards" in meta:
        return {int(i) for i in meta["done_shards"]}
    return set(range(int(meta.get("done", 0))))


class FeatureWriter:
    """A feature folder open for writing: ``features[layer]`` (N, C) memory-mapped rows and
    ``valid`` (N,) to fill in, ``done`` the finished parts (those a resumed folder holds
    already). :meth:`checkpoint` makes what is written so far durable and records progress.

    ``config`` is what must match for a folder to be continued (layers, pooling, the images,
    the engine's cut into parts...); a folder holding another configuration is refused."""

    def __init__(
        self,
        path: str | os.PathLike,
        config: dict,
        dims: Sequence[int],
        *,
        image_names: Sequence[str],
        labels: np.ndarray,
        classes: Sequence[str],
        parts: int,
        resume: bool = True,
    ):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.config = dict(config)
        self.parts = int(parts)
        self.image_names = list(image_names)
        self.classes = list(classes)
        layers = list(config["layers"])
        n = len(self.image_names)
        old = read_meta(self.path)
        if old is not None and {k: with_default_settings(old).get(k) for k in self.config} != self.config:
            raise UserInputError(
                f"{self.path} holds features of another configuration; choose another folder or delete it"
            )
        self.done: set[int] = finished_parts(old) if old is not None and resume else set()
        mode = "r+" if self.done else "w+"
        self.features = {
            name: np.lib.format.open_memmap(
                layer_file(self.path, i), mode=mode, dtype=np.float32, shape=None if self.done else (n, d)
            )
            for i, (name, d) in enumerate(zip(layers, dims))
        }
        self.valid = np.load(self.path / "valid.npy") if self.done else np.zeros(n, bool)
        np.save(self.path / "labels.npy", np.asarray(labels, np.int64))

    def first_missing(self) -> int:
        """The first part not finished (where a run that goes in order continues)."""
        i = 0
        while i in self.done:
            i += 1
        return i

    def finish_parts(self, parts: Iterable[int]) -> None:
        """Mark ``parts`` finished (recorded at the next :meth:`checkpoint`)."""
        self.done.update(int(i) for i in parts)

    def checkpoint(self) -> None:
        """Flush the rows, replace ``valid.npy`` atomically, then record progress in meta."""
        for f in self.features.values():
            f.flush()
        tmp = self.path / ".valid.tmp.npy"
        np.save(tmp, self.valid)
        os.replace(tmp, self.path / "valid.npy")
        meta = {**self.config, "done": len(self.done), "batches": self.parts}
        if self.done != set(range(len(self.done))):
            meta["done_shards"] = sorted(self.done)
        meta.update(names=self.image_names, classes=self.classes)
        write_text(self.path / META, json.dumps(meta, indent=1))


def write_folder(
    path: str | os.PathLike,
    config: dict,
    features: dict[str, np.ndarray],
    valid: np.ndarray,
    *,
    image_names: Sequence[str],
    labels: np.ndarray,
    classes: Sequence[str],
) -> Path:
    """Write finished features (``features[layer]`` (N, C)) as a feature folder at ``path``,
    replacing one of the same configuration. Returns the folder."""
    layers = list(features)
    config = {**config, "layers": layers, "dims": [int(np.shape(features[n])[1]) for n in layers]}
    w = FeatureWriter(
        path,
        config,
        config["dims"],
        image_names=image_names,
        labels=labels,
        classes=classes,
        parts=1,
        resume=False,
    )
    for n in layers:
        w.features[n][:] = np.asarray(features[n], np.float32)
    w.valid[:] = np.asarray(valid, bool)
    w.finish_parts([0])
    w.checkpoint()
    return w.path


def read_folder(path: str | os.PathLike) -> dict:
    """A finished feature folder's contents: ``meta`` and ``features`` (memory-mapped, read
    only), ``valid``, ``labels``. A folder whose extraction stopped part-way is refused."""
    path = Path(path)
    meta = read_meta(path)
    if meta is None:
        raise UserInputError(f"{path} holds no features (no meta.json); run `convscope features`")
    if meta["done"] < meta["batches"]:
        raise UserInputError(
            f"{path}: the extraction stopped at batch {meta['done']} of {meta['batches']}; resume it first"
        )
    layers = meta["layers"]
    return {
        "meta": meta,
        "features": {name: np.load(layer_file(path, i), mmap_mode="r") for i, name in enumerate(layers)},
        "valid": np.load(path / "valid.npy"),
        "labels": np.load(path / "labels.npy"),
    }
