"""2-D maps of a representation: PCA, t-SNE (scikit-learn) and UMAP (umap-learn)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from convscope.errors import UserInputError
from convscope.results import Result

METHODS = ("pca", "tsne", "umap")


def project(
    x: np.ndarray, method: str = "tsne", seed: int = 0, perplexity: float = 30.0, neighbors: int = 15
) -> np.ndarray:
    """(N, C) features -> (N, 2) coordinates. t-SNE and UMAP first reduce to 50 PCA dimensions
    (the usual practice, and much faster on wide layers)."""
    from sklearn.decomposition import PCA

    x = np.asarray(x, np.float32)
    if method not in METHODS:
        raise UserInputError(f"projection must be one of {', '.join(METHODS)}")
    if len(x) < 3:
        raise UserInputError("a projection needs at least 3 images")
    if method == "pca":
        return PCA(2, random_state=seed).fit_transform(x)
    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(
            2, perplexity=min(perplexity, (len(x) - 1) / 3), init="pca", random_state=seed
        ).fit_transform(x)
    try:
        import umap
    except ImportError:  # pragma: no cover - depends on the installation
        raise UserInputError("UMAP needs umap-learn: pip install 'convscope[retrieval]'") from None
    return umap.UMAP(n_neighbors=min(neighbors, len(x) - 1), random_state=seed).fit_transform(x)


@dataclass
class Projection(Result):
    """2-D map of ``layer``'s features by ``method``: ``xy`` (N, 2), ``labels`` (N,) class
    indices into ``classes`` (-1 when unknown), ``names`` the images' names."""

    layer: str
    method: str
    xy: np.ndarray
    labels: np.ndarray
    classes: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def to_image(self, title: str = ""):
        """The scatter, coloured by class."""
        from convscope.render.plots import figure_to_image
        from convscope.render.represent import scatter_figure

        return figure_to_image(scatter_figure(self.xy, self.labels, self.classes, title or self.headline()))

    def headline(self) -> str:
        return f"{self.layer}: {self.method} of {len(self.xy)} images"


def project_features(
    x: np.ndarray,
    labels: np.ndarray | None = None,
    classes: Sequence[str] = (),
    method: str = "tsne",
    *,
    layer: str = "",
    names: Sequence[str] | None = None,
    seed: int = 0,
    **options,
) -> Projection:
    """:func:`project` of (N, C) features ``x`` (``options``: perplexity, neighbors) as a
    :class:`Projection` that draws its scatter by class (``labels`` (N,), default all -1)."""
    xy = project(x, method, seed=seed, **options)
    lab = np.full(len(xy), -1, dtype=np.int64) if labels is None else np.asarray(labels)
    return Projection(layer, method, np.asarray(xy), lab, list(classes), list(names or []))
