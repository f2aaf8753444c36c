"""Reports of representations: nearest-neighbour grids of query images (with the search's
record and retrieval scores) and the linear-probe table. ``convscope neighbors`` / ``probe`` and
the demo write them through these functions.

Where a file lives in an atlas is the atlas's business: the neighbour report takes ``paths``, any
object with the atlas's ``neighbors_render(layer, query)`` helper (an Atlas or AtlasPaths).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from convscope.errors import UserInputError
from convscope.inputs.fileio import save_image, write_text

if TYPE_CHECKING:
    from convscope.represent.features import FeatureSet
    from convscope.represent.probe import ProbeResult


def feature_images(fs: FeatureSet, transform=None):
    """The images a feature set was extracted from (an ImageSource), untransformed by default."""
    from convscope.inputs.sources import open_spec

    if (fs.source.get("source") or fs.source.get("files")) is None:
        raise UserInputError("the features do not say where their images are")
    return open_spec(fs.source, transform)


def probe_csv(result: ProbeResult) -> str:
    """The linear probe's table as CSV text: one row per layer (dims, train and test accuracy,
    chance), accuracies to 4 decimals."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["layer", "dims", "train_accuracy", "test_accuracy", "chance"])
    for r in result.rows:
        w.writerow(
            [r.layer, r.dims, f"{r.train_accuracy:.4f}", f"{r.test_accuracy:.4f}", f"{result.chance:.4f}"]
        )
    return buf.getvalue()


def write_probe_report(result: ProbeResult, png: str | Path) -> list[Path]:
    """The accuracy-per-layer figure at ``png`` and the table beside it (same name, ``.csv``);
    returns both paths."""
    from convscope.render.plots import figure_to_image
    from convscope.render.represent import probe_figure

    png = save_image(figure_to_image(probe_figure(result)), png)
    return [png, write_text(png.with_suffix(".csv"), probe_csv(result))]


def embed_image(subject, image, layer: str, pooling: str = "gap", p: float = 3.0) -> np.ndarray:
    """The pooled features (1, C) of ``layer`` of one PIL ``image`` through ``subject``."""
    import torch

    from convscope.represent.features import pool

    with subject.record([layer], stop=True) as rec, torch.inference_mode():
        subject(subject.load_images([image]))
    return pool(rec[layer].float(), pooling, p).cpu().numpy()


def write_neighbors_report(
    fs: FeatureSet,
    layer: str,
    queries: Sequence[int | str | tuple[str, object]],
    paths,
    *,
    k: int = 8,
    metric: str = "cosine",
    index: str = "exact",
    post: str = "",
    pooling: str = "gap",
    subject: Callable[[], object] | None = None,
    evaluate: bool = False,
    gt: str | Path | None = None,
    record: bool = True,
) -> dict:
    """Nearest neighbours of each query in ``layer``'s features of ``fs``, one picture grid per
    query at ``paths.neighbors_render(layer, name)``, and (``record``) ``neighbors.json`` beside
    them. A query is a database image index (int or digits; itself left out of its neighbours)
    or ``(name, PIL image)``, pooled through the model that ``subject()`` returns (called once,
    at the first such query: reopening a model is slow). ``post``: a
    post-processing fitted on the database (``l2,pca:128,whiten,l2``). ``evaluate``: mAP and
    precision@k with the class labels; ``gt``: an Oxford/Paris ground-truth folder. Returns the
    record: layer, settings, per query its neighbours (image, score) and ``png``, the scores."""
    from convscope.represent.postprocess import PostProcess
    from convscope.represent.retrieval import (
        NeighborIndex,
        evaluate_labels,
        evaluate_oxford,
        load_oxford_gt,
        search_neighbors,
    )

    x = fs.get(layer, valid_only=False)
    rows = fs.valid_indices()
    pp = PostProcess.parse(post).fit(x[rows]) if post else None
    db = pp.transform(x[rows]) if pp else x[rows]
    idx = NeighborIndex(db, metric, index)
    source = feature_images(fs)
    records, model = [], None
    for q in queries:
        own = int(q) if isinstance(q, int) or (isinstance(q, str) and q.isdigit()) else None
        if own is not None:
            if own >= len(fs.names) or not fs.valid[own]:
                raise UserInputError(
                    f"--query {own}: the features hold images 0..{len(fs.names) - 1}, "
                    "and this one is missing or was unreadable"
                )
            vec, img, label = x[own : own + 1], source.read(own), fs.names[own]
        else:
            if subject is None:
                raise UserInputError(f"query {q[0]!r}: an image query needs the model (subject)")
            model = model or subject()
            label, img = q
            vec = embed_image(model, img, layer, pooling, fs.p)
        vec = pp.transform(vec) if pp else vec
        found = search_neighbors(
            idx,
            vec,
            k,
            fs.names,
            source.read,
            query=label,
            query_image=img,
            layer=layer,
            ids=rows,
            exclude=own,
            pooling=pooling,
        )
        png = found.write_report(paths)
        records.append(
            {
                "query": label,
                "neighbors": [{"image": n, "score": float(v)} for n, v in zip(found.names, found.scores)],
                "png": str(png),
            }
        )
    result = {
        "layer": layer,
        "pooling": pooling,
        "metric": metric,
        "index": index,
        "post": post,
        "queries": records,
    }
    if evaluate:
        scores = evaluate_labels(db, fs.labels[rows], metric)
        result["map"], result["precision"] = scores.map, scores.precision
    if gt is not None:
        scores = evaluate_oxford(db, [fs.names[i] for i in rows], load_oxford_gt(gt), metric=metric)
        result["oxford_map"] = scores.map
    if record:
        where = paths.neighbors_render(layer, "neighbors").with_suffix(".json")
        write_text(where, json.dumps(result, indent=1, default=float))
    if gt is not None:
        result["oxford_queries"] = len(scores.ap)  # for the caller's message, not the record
    return result


def write_projection_report(
    fs: FeatureSet,
    layer: str,
    xy: np.ndarray,
    paths,
    method: str = "tsne",
    *,
    pooling: str = "gap",
    thumbnails: int = 400,
    seed: int = 0,
) -> list[Path]:
    """The 2-D map ``xy`` (N valid images, 2) of ``layer``: a scatter by class at
    ``paths.projection_render(layer, method)``, its coordinates beside it (``.csv``: image,
    label, x, y) and, with ``thumbnails`` > 0, that many images (a seeded random pick) on the map.
    Returns the paths written."""
    from convscope.render.plots import figure_to_image
    from convscope.render.represent import scatter_figure, thumbnail_map

    rows = fs.valid_indices()
    fig = scatter_figure(xy, fs.labels[rows], fs.classes, f"{layer} ({pooling}), {method}")
    png = save_image(figure_to_image(fig), paths.projection_render(layer, method))
    lines = ["image,label,x,y"] + [
        f"{fs.names[i]},{fs.labels[i]},{a:.5f},{b:.5f}" for i, (a, b) in zip(rows, xy)
    ]
    written = [png, write_text(png.with_suffix(".csv"), "\n".join(lines) + "\n")]
    if thumbnails:
        pick = np.random.default_rng(seed).permutation(len(rows))[:thumbnails]
        source = feature_images(fs)
        written.append(
            save_image(
                thumbnail_map(xy[pick], [source.read(int(rows[j])) for j in pick]),
                paths.projection_render(layer, method, thumbnails=True),
            )
        )
    return written


def write_similarity_report(
    values: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    png: str | Path,
    title: str = "",
    row_model: str = "",
    col_model: str = "",
) -> list[Path]:
    """The layer-by-layer similarity matrix ``values`` (len(rows), len(cols)) as a heat map at
    ``png`` and a table beside it (``.csv``, 4 decimals). Returns both paths."""
    from convscope.render.plots import figure_to_image
    from convscope.render.represent import similarity_figure

    png = save_image(figure_to_image(similarity_figure(values, rows, cols, title, col_model, row_model)), png)
    lines = ["," + ",".join(cols)] + [
        n + "," + ",".join(f"{v:.4f}" for v in row) for n, row in zip(rows, values)
    ]
    return [png, write_text(png.with_suffix(".csv"), "\n".join(lines) + "\n")]
