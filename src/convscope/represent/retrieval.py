"""Nearest neighbours through FAISS (exact, IVF or HNSW; L2 or cosine) and the evaluation of a
retrieval: mAP and precision@k with class labels, and the Oxford/Paris buildings protocol (good /
ok / junk lists)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convscope.errors import UserInputError
from convscope.represent.postprocess import l2_normalize
from convscope.results import Result

METRICS = ("l2", "cosine")
KINDS = ("exact", "ivf", "hnsw")


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - depends on the installation
        raise UserInputError("nearest neighbours need FAISS: pip install faiss-cpu") from None
    return faiss


class NeighborIndex:
    """An index over ``x`` (N, d). ``metric``: ``l2`` (distances are squared L2) or ``cosine``
    (scores are cosine similarities, larger is nearer). ``kind``: ``exact`` (flat), ``ivf``
    (inverted lists, ``nlist`` cells, ``nprobe`` visited) or ``hnsw`` (graph, ``m`` links)."""

    def __init__(
        self,
        x: np.ndarray,
        metric: str = "l2",
        kind: str = "exact",
        nlist: int | None = None,
        nprobe: int = 8,
        m: int = 32,
        seed: int = 0,
    ):
        if metric not in METRICS:
            raise UserInputError(f"metric must be one of {', '.join(METRICS)}")
        if kind not in KINDS:
            raise UserInputError(f"index kind must be one of {', '.join(KINDS)}")
        faiss = _faiss()
        x = self._prep(x, metric)
        n, d = x.shape
        ip = metric == "cosine"
        faiss_metric = faiss.METRIC_INNER_PRODUCT if ip else faiss.METRIC_L2
        if kind == "exact":
            index = faiss.IndexFlatIP(d) if ip else faiss.IndexFlatL2(d)
        elif kind == "ivf":
            nlist = min(n, nlist or max(1, int(4 * np.sqrt(n))))
            quantizer = faiss.IndexFlatIP(d) if ip else faiss.IndexFlatL2(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss_metric)
            index.cp.seed = seed
            index.train(x)
            index.nprobe = nprobe
            self._quantizer = quantizer  # the IVF index does not own it
        else:
            index = faiss.IndexHNSWFlat(d, m, faiss_metric)
        index.add(x)
        self.index, self.metric, self.kind, self.size = index, metric, kind, n

    @staticmethod
    def _prep(x, metric):
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        if x.ndim != 2:
            raise UserInputError(f"features must be (N, d), got {x.shape}")
        return np.ascontiguousarray(l2_normalize(x).astype(np.float32)) if metric == "cosine" else x

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores (nq, k), indices (nq, k)), nearest first; -1 where fewer than k exist."""
        return self.index.search(self._prep(q, self.metric), min(k, self.size))


def average_precision(relevant: np.ndarray, n_relevant: int | None = None) -> float:
    """Non-interpolated AP of one ranked list: the mean of the precision at each relevant rank,
    over ``n_relevant`` relevant items (default: those in the list)."""
    relevant = np.asarray(relevant, dtype=bool)
    total = int(relevant.sum()) if n_relevant is None else n_relevant
    if total == 0:
        return 0.0
    hits = np.cumsum(relevant)
    ranks = np.flatnonzero(relevant) + 1
    return float((hits[relevant] / ranks).sum() / total)


@dataclass
class RetrievalScores(Result):
    """``map`` (mean AP), ``precision`` {k: mean precision@k}, per-query ``ap``."""

    map: float
    precision: dict[int, float]
    ap: np.ndarray

    def to_image(self):
        """The AP of every query, sorted, with the mAP and precision@k in the title."""
        from convscope.render.plots import figure_to_image
        from convscope.render.represent import retrieval_figure

        return figure_to_image(retrieval_figure(self.ap, self.headline()))

    def headline(self) -> str:
        prec = "".join(f", P@{k} {v:.3f}" for k, v in self.precision.items())
        return f"mAP {self.map:.3f} over {len(self.ap)} queries{prec}"


@dataclass
class Neighbors(Result):
    """The ``k`` nearest database images of one query in ``layer``'s feature space, nearest
    first: ``indices`` (k,) database indices, ``scores`` (k,) (cosine similarity or squared
    L2, by ``metric``), ``names`` their names; ``query_image`` (H, W, 3) and ``images``
    (k, h, w, 3) uint8 thumbnails, for the picture."""

    layer: str
    metric: str
    query: str
    query_image: np.ndarray
    indices: np.ndarray
    scores: np.ndarray
    names: list[str]
    images: np.ndarray
    pooling: str = ""

    def to_image(self, cell: int = 112):
        """The query (outlined) and its neighbours with score and class (first folder) each."""
        from PIL import Image

        from convscope.render.represent import neighbors_grid

        return neighbors_grid(
            Image.fromarray(self.query_image),
            [Image.fromarray(i) for i in self.images],
            [f"{s:.3f} {n.split('/')[0]}" for s, n in zip(self.scores, self.names)],
            title=self.headline(),
            cell=cell,
        )

    def write_report(self, paths):
        """The neighbour grid at ``paths.neighbors_render(layer, query)`` (``paths``: an Atlas or
        AtlasPaths; the query's name without folders or suffix); returns its path."""
        from pathlib import Path

        from convscope.inputs.fileio import save_image

        name = Path(self.query.replace("/", "_")).stem
        return save_image(self.to_image(), paths.neighbors_render(self.layer, name))

    def headline(self) -> str:
        how = f"{self.pooling}, {self.metric}" if self.pooling else self.metric
        return f"{self.layer} ({how}): neighbours of {self.query}"


def _thumb(img, side: int) -> np.ndarray:
    from PIL import Image

    pil = img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))
    pil = pil.convert("RGB")
    pil.thumbnail((side, side), Image.BICUBIC)
    return np.asarray(pil)


def search_neighbors(
    index: NeighborIndex,
    vector: np.ndarray,
    k: int,
    names: Sequence[str],
    read: Callable[[int], object],
    *,
    query: str,
    query_image,
    layer: str = "",
    ids: np.ndarray | None = None,
    exclude: int | None = None,
    pooling: str = "",
    thumb: int = 112,
) -> Neighbors:
    """The ``k`` nearest neighbours of ``vector`` (1, d) in ``index`` as :class:`Neighbors`.
    ``ids`` maps index rows to database indices (default: the same); ``exclude`` is a database
    index left out (the query itself when it is in the database); ``names[i]`` and ``read(i)``
    (a PIL image) are database image ``i``'s name and picture; ``query_image`` the query's."""
    scores, found = index.search(vector, k + (exclude is not None))
    ids = np.arange(index.size) if ids is None else np.asarray(ids)
    hits = [(int(ids[j]), float(s)) for j, s in zip(found[0], scores[0]) if j >= 0 and int(ids[j]) != exclude]
    hits = hits[:k]
    sizes = [_thumb(read(i), thumb) for i, _ in hits]
    tiles = np.zeros((len(sizes), thumb, thumb, 3), np.uint8) + 255
    for t, img in zip(tiles, sizes):  # one array: thumbnails keep their aspect ratio, on white
        h, w = img.shape[:2]
        t[(thumb - h) // 2 : (thumb - h) // 2 + h, (thumb - w) // 2 : (thumb - w) // 2 + w] = img
    return Neighbors(
        layer,
        index.metric,
        query,
        _thumb(query_image, max(thumb, 224)),
        np.array([i for i, _ in hits], dtype=np.int64),
        np.array([s for _, s in hits], dtype=np.float64),
        [names[i] for i, _ in hits],
        tiles,
        pooling,
    )


def evaluate_labels(
    x: np.ndarray, labels: np.ndarray, metric: str = "l2", queries: np.ndarray | None = None, ks=(1, 5, 10)
) -> RetrievalScores:
    """Every image (or ``queries``, indices into ``x``) queries all the others; relevant = same
    class. Exact ranking through :class:`NeighborIndex`."""
    labels = np.asarray(labels)
    if (labels < 0).any():
        raise UserInputError(
            "retrieval evaluation needs a class label for every image (an ImageFolder-style dataset)"
        )
    queries = np.arange(len(x)) if queries is None else np.asarray(queries)
    counts = np.bincount(labels)
    queries = queries[counts[labels[queries]] > 1]  # a query alone in its class has nothing to find
    if not len(queries):
        raise UserInputError("no class has two images: nothing to retrieve")
    index = NeighborIndex(x, metric)
    _, idx = index.search(np.asarray(x)[queries], len(x))
    aps, prec = [], {k: [] for k in ks}
    for qi, row in zip(queries, idx):
        row = row[row != qi]
        rel = labels[row] == labels[qi]
        aps.append(average_precision(rel, int((labels == labels[qi]).sum()) - 1))
        for k in ks:
            prec[k].append(rel[:k].mean() if k <= len(rel) else np.nan)
    return RetrievalScores(
        float(np.mean(aps)), {k: float(np.nanmean(v)) for k, v in prec.items()}, np.array(aps)
    )


@dataclass(frozen=True)
class OxfordQuery:
    name: str
    image: str
    box: tuple[float, float, float, float] | None
    good: frozenset[str]
    ok: frozenset[str]
    junk: frozenset[str]


def load_oxford_gt(folder: str | os.PathLike) -> list[OxfordQuery]:
    """Oxford/Paris ground truth: ``<q>_query.txt`` (``[oxc1_]image x1 y1 x2 y2``) with
    ``<q>_good.txt``, ``<q>_ok.txt`` and ``<q>_junk.txt`` listing image names (no suffix)."""
    folder = Path(folder)
    out = []
    for qf in sorted(folder.glob("*_query.txt")):
        stem = qf.name[: -len("_query.txt")]
        parts = qf.read_text().split()
        if not parts:
            raise UserInputError(f"{qf} is empty")
        image = parts[0].removeprefix("oxc1_")
        box = tuple(float(v) for v in parts[1:5]) if len(parts) >= 5 else None

        def names(kind, stem=stem):
            f = folder / f"{stem}_{kind}.txt"
            return frozenset(f.read_text().split()) if f.exists() else frozenset()

        out.append(OxfordQuery(stem, image, box, names("good"), names("ok"), names("junk")))
    if not out:
        raise UserInputError(f"{folder} has no *_query.txt files")
    return out


def oxford_ap(ranked: list[str], query: OxfordQuery) -> float:
    """AP of one ranked list of image names as the Oxford ``compute_ap``: good and ok are
    positives, junk is skipped, precision interpolated by trapezoids."""
    positives = query.good | query.ok
    if not positives:
        return 0.0
    old_recall, old_precision, ap, hits, j = 0.0, 1.0, 0.0, 0, 0
    for name in ranked:
        if name in query.junk:
            continue
        if name in positives:
            hits += 1
        recall = hits / len(positives)
        precision = hits / (j + 1)
        ap += (recall - old_recall) * (old_precision + precision) / 2
        old_recall, old_precision = recall, precision
        j += 1
    return ap


def evaluate_oxford(
    x: np.ndarray,
    names: list[str],
    queries: list[OxfordQuery],
    query_features: np.ndarray | None = None,
    metric: str = "l2",
) -> RetrievalScores:
    """mAP over ``queries``. ``names`` are the database images' names (suffix and folders
    ignored); query descriptors default to the database row of each query image."""
    stems = [Path(n).stem for n in names]
    where = {s: i for i, s in enumerate(stems)}
    if query_features is None:
        missing = [q.image for q in queries if q.image not in where]
        if missing:
            raise UserInputError(f"query images not in the database: {', '.join(missing[:5])}")
        query_features = np.asarray(x)[[where[q.image] for q in queries]]
    _, idx = NeighborIndex(x, metric).search(query_features, len(x))
    aps = np.array([oxford_ap([stems[i] for i in row if i >= 0], q) for row, q in zip(idx, queries)])
    return RetrievalScores(float(aps.mean()), {}, aps)
