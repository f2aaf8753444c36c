"""Activation atlases (Carter et al. 2019, "Activation Atlas", Distill): the space of a layer's
spatial activation vectors over a dataset, laid out in 2-D and rendered cell by cell.

1. Activation vectors are sampled at ``samples_per_image`` random positions of each image's
   grid, into a seeded reservoir of at most ``max_samples`` rows
   (:func:`convscope.concepts.activations.collect_activations`); the same forward pass gives
   each image's top-1 class (one pass over the data in all).
2. They are laid out in 2-D (:func:`convscope.represent.projection.project`: UMAP, t-SNE or PCA;
   t-SNE's perplexity is min(30, (N - 1) / 3) for N vectors, so that a few vectors still lay out),
   the layout scaled to the unit square, and binned into a ``grid`` x ``grid`` grid: a point at
   (u, v) falls in column ``min(floor(u * grid), grid - 1)`` and row ``min(floor(v * grid), grid - 1)``.
3. Each cell holding at least ``min_count`` vectors is drawn by feature visualisation of its mean
   activation vector, normalised to unit length (:func:`convscope.synthesis.visualize_directions`:
   the mean over the map of sum_c v[c] a_c is maximised); the tiles are optimised ``batch`` cells
   per run.

The top class of a cell: every vector is attributed to the class the model predicts (top-1
logit) for the whole image it was sampled from, and the cell's top class is the most frequent
of its vectors' classes (ties: the smaller class index), with its share of the cell. This is a
simplification of the paper, which attributes each vector to classes by the gradient of the
logits with respect to it; the image's prediction comes free with the forward pass that samples
the vectors instead of a backward pass per class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from convscope.errors import UserInputError
from convscope.results import Result
from convscope.subject import Subject

Progress = Callable[[int, int, str], None]
STAGES = ("activations", "layout", "visualisation")
CLASS_RULE = "predicted class of the image the vector came from"


@dataclass
class ActivationAtlas(Result):
    """An activation atlas of ``layer``.

    ``tiles`` (M, h, w, 3) in [0, 1]: the feature visualisation of each of the M drawn cells,
    whose ``cells`` (M, 2) are (row, col) in the ``grid`` x ``grid`` grid, row-major order;
    ``counts`` (M,) the vectors in each, ``norms`` (M,) the L2 norm of its mean vector,
    ``scores`` (M,) the objective its tile reached, ``top_class`` (M,) class index (-1: none
    known), ``top_label`` its name, ``top_share`` (M,) the fraction of the cell's vectors of that
    class, ``typical`` (M, K, 3) (image index, y, x on the layer's grid) of the K vectors of the
    cell nearest its mean (rows of -1 where a cell has fewer). ``points`` (N, 2): every sampled
    vector's layout in the unit square (u: column axis, v: row axis), ``where`` (N, 3) where it
    came from, ``sample_cell`` (N,) the index of its cell in ``cells`` (-1: a cell with fewer
    than ``min_count`` vectors, not drawn), ``predicted`` (N,) the class it is attributed to.
    ``skipped``: (source index, reason) of each image that could not be read. :attr:`image` is
    the atlas as one picture."""

    layer: str
    grid: int
    tiles: np.ndarray
    cells: np.ndarray
    counts: np.ndarray
    norms: np.ndarray
    scores: np.ndarray
    top_class: np.ndarray
    top_label: list[str]
    top_share: np.ndarray
    typical: np.ndarray
    points: np.ndarray
    where: np.ndarray
    sample_cell: np.ndarray
    predicted: np.ndarray
    skipped: list = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def image(self) -> np.ndarray:
        """The atlas (grid * h, grid * w, 3) in [0, 1]: each drawn cell's tile at its place,
        the cells not drawn white."""
        g, (h, w) = self.grid, self.tiles.shape[1:3]
        out = np.ones((g * h, g * w, 3), np.float32)
        for (r, c), tile in zip(self.cells, self.tiles):
            out[r * h : (r + 1) * h, c * w : (c + 1) * w] = tile
        return out

    def to_image(self, cell: int | None = None, labels: bool = True, counts: bool = True):
        """The atlas as a PIL image, each tile ``cell`` px (default: its own size), captioned
        with its count and/or its top class."""
        from PIL import Image, ImageDraw

        h = self.tiles.shape[1] if len(self.tiles) else 32
        cell = cell or h
        g = self.grid
        canvas = Image.new("RGB", (g * cell, g * cell), "white")
        draw = ImageDraw.Draw(canvas)
        for i, ((r, c), tile) in enumerate(zip(self.cells, self.tiles)):
            pic = Image.fromarray((np.clip(tile, 0, 1) * 255).round().astype(np.uint8))
            canvas.paste(pic.resize((cell, cell), Image.LANCZOS), (int(c) * cell, int(r) * cell))
            text = " ".join(
                ([str(int(self.counts[i]))] if counts else []) + ([self.top_label[i]] if labels else [])
            )
            if text and cell >= 24:
                x, y = int(c) * cell + 1, int(r) * cell + 1
                box = draw.textbbox((x, y), text)
                draw.rectangle(box, fill=(0, 0, 0))
                draw.text((x, y), text, fill=(255, 255, 255))
        return canvas

    def headline(self) -> str:
        return (
            f"activation atlas of {self.layer}: {len(self.cells)} of {self.grid}x{self.grid} cells drawn "
            f"from {len(self.points)} vectors ({self.info.get('layout')})"
        )


def activation_atlas(
    subject: Subject,
    data,
    layer: str,
    *,
    samples_per_image: int = 1,
    max_samples: int = 10_000,
    layout: str = "tsne",
    grid: int = 20,
    min_count: int = 3,
    steps: int = 128,
    size: int = 64,
    batch: int = 64,
    top: int = 8,
    seed: int = 0,
    batch_size: int = 32,
    workers: int | None = None,
    accel=None,
    progress: Progress | None = None,
    **options,
) -> ActivationAtlas:
    """The activation atlas of ``layer`` over ``data`` (an image source, folder, archive...):
    see the module docstring for the method. ``samples_per_image`` positions per image,
    at most ``max_samples`` vectors in all; ``layout`` is ``"umap"`` (needs the ``retrieval``
    extra), ``"tsne"`` or ``"pca"``; cells of a ``grid`` x ``grid`` grid with at least
    ``min_count`` vectors are drawn as ``size`` px tiles optimised for ``steps`` steps, ``batch``
    cells per run (``options``: :func:`~convscope.synthesis.engine.optimize`'s other keywords,
    e.g. ``param``, ``lr``); ``top`` typical vectors are kept per cell. Everything is seeded by
    ``seed``. ``progress(done, total, stage)``, stage one of :data:`STAGES` (images for the
    first, 1 for the layout, cells for the visualisation)."""
    from convscope.concepts.activations import as_source, collect_activations
    from convscope.represent.projection import project
    from convscope.synthesis.visualize import visualize_directions
    from convscope.units import Direction

    check_settings(layout=layout, grid=grid, min_count=min_count, steps=steps, batch=batch, top=top)
    names = subject.layers.select(layer)
    if len(names) != 1:
        raise UserInputError(f"an activation atlas is of one layer; {layer!r} names {len(names)}")
    name = str(names[0])
    source = as_source(subject, data)

    def stage(label: str):
        if progress is None:
            return None
        progress(0, 0, label)
        return lambda done, total: progress(done, total, label)

    acts = collect_activations(
        subject,
        source,
        name,
        per_image=samples_per_image,
        max_samples=max_samples,
        seed=seed,
        batch_size=batch_size,
        workers=workers,
        accel=accel,
        progress=stage("activations"),
        predict=True,  # the top classes from the same forward pass
    )
    x = acts.x.numpy().astype(np.float32)
    where = acts.where.numpy().astype(np.int64)
    if len(x) < 3:
        raise UserInputError(f"an activation atlas needs at least 3 vectors; {len(x)} were sampled")
    image_class = acts.predicted or {}
    predicted = np.array([image_class.get(int(i), -1) for i in where[:, 0]], np.int64)

    tick = stage("layout")
    points = unit_square(project(x, layout, seed=seed))
    if tick:
        tick(1, 1)
    bins = binning(points, grid)
    flat = bins[:, 0] * grid + bins[:, 1]
    occupied, inverse, count = np.unique(flat, return_inverse=True, return_counts=True)
    drawn = count >= min_count
    cell_of_bin = np.where(drawn, np.cumsum(drawn) - 1, -1)
    sample_cell = cell_of_bin[inverse].astype(np.int64)
    kept = occupied[drawn]
    cells = np.stack([kept // grid, kept % grid], axis=1).astype(np.int64)
    m = len(cells)
    if m == 0:
        raise UserInputError(
            f"no cell of the {grid}x{grid} grid holds {min_count} vectors; lower min_count or grid"
        )

    means = np.stack([x[sample_cell == i].mean(axis=0) for i in range(m)])
    norms = np.linalg.norm(means, axis=1)
    typical = np.full((m, top, 3), -1, np.int64)
    top_class = np.full(m, -1, np.int64)
    top_share = np.zeros(m, np.float64)
    for i in range(m):
        members = np.flatnonzero(sample_cell == i)
        dist = np.linalg.norm(x[members] - means[i], axis=1)
        near = members[np.argsort(dist, kind="stable")[:top]]
        typical[i, : len(near)] = where[near]
        cls = predicted[members]
        cls = cls[cls >= 0]
        if len(cls):
            votes = np.bincount(cls)
            top_class[i] = int(votes.argmax())
            top_share[i] = float(votes.max() / len(members))
    top_label = [subject.label(int(c)) if c >= 0 else "" for c in top_class]

    unit = torch.from_numpy(means / np.maximum(norms, 1e-12)[:, None]).float()
    directions = [Direction(name, unit[i], name=f"cell{r}_{c}") for i, (r, c) in enumerate(cells)]
    tick = stage("visualisation")
    tiles, scores = [], []
    for s in range(0, m, batch):
        part = visualize_directions(
            subject, directions[s : s + batch], steps=steps, size=size, seed=seed, **options
        )
        tiles.append(part.images.astype(np.float32))
        scores.append(part.scores.astype(np.float64))
        if tick:
            tick(min(s + batch, m), m)

    info = {
        "layout": layout,
        "samples_per_image": samples_per_image,
        "max_samples": int(max_samples),
        "min_count": int(min_count),
        "steps": int(steps),
        "size": int(size),
        "batch": int(batch),
        "seed": int(seed),
        "images": int(acts.images),
        "seen": int(acts.seen),
        "layer_grid": list(acts.grid),
        "class_rule": CLASS_RULE,
        "model": subject.name,
    }
    return ActivationAtlas(
        layer=name,
        grid=int(grid),
        tiles=np.concatenate(tiles),
        cells=cells,
        counts=count[drawn].astype(np.int64),
        norms=norms.astype(np.float64),
        scores=np.concatenate(scores),
        top_class=top_class,
        top_label=top_label,
        top_share=top_share,
        typical=typical,
        points=points.astype(np.float32),
        where=where,
        sample_cell=sample_cell,
        predicted=predicted,
        skipped=[[int(i), str(r)] for i, r in acts.skipped],
        info=info,
    )


def check_settings(
    layout: str = "tsne", grid: int = 20, min_count: int = 3, steps: int = 128, batch: int = 64, top: int = 8
) -> None:
    """A one-line :class:`UserInputError` for settings :func:`activation_atlas` cannot run with
    (checked before any work)."""
    from convscope.represent.projection import METHODS

    if layout not in METHODS:
        raise UserInputError(f"layout must be one of {', '.join(METHODS)}, not {layout!r}")
    if layout == "umap":
        try:
            import umap  # noqa: F401
        except ImportError:
            raise UserInputError(
                "the umap layout needs umap-learn: pip install 'convscope[retrieval]'"
            ) from None
    for what, value in (("grid", grid), ("min_count", min_count), ("steps", steps), ("batch", batch)):
        if int(value) < 1:
            raise UserInputError(f"{what} must be >= 1, not {value}")
    if top < 0:
        raise UserInputError(f"top must be >= 0, not {top}")


def unit_square(points: np.ndarray) -> np.ndarray:
    """(N, 2) points scaled per axis onto [0, 1] (an axis with no spread: 0.5)."""
    points = np.asarray(points, np.float64)
    lo, hi = points.min(axis=0), points.max(axis=0)
    span = hi - lo
    out = np.where(span > 0, (points - lo) / np.where(span > 0, span, 1), 0.5)
    return out


def binning(points: np.ndarray, grid: int) -> np.ndarray:
    """(N, 2) (row, col) of points in the unit square (u, v) on a ``grid`` x ``grid`` grid:
    row from v, column from u, the right and bottom edges in the last row/column."""
    col = np.minimum(np.floor(points[:, 0] * grid), grid - 1).astype(np.int64)
    row = np.minimum(np.floor(points[:, 1] * grid), grid - 1).astype(np.int64)
    return np.stack([row, col], axis=1)


__all__ = [
    "CLASS_RULE",
    "STAGES",
    "ActivationAtlas",
    "activation_atlas",
    "binning",
    "check_settings",
    "unit_square",
]
