"""Similarity of representations across layers and models, over the same images: linear CKA
(Kornblith et al. 2019) and representational similarity analysis (Kriegeskorte et al. 2008)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from convscope.errors import UserInputError
from convscope.results import Result


def _check(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise UserInputError(f"need (N, C) features of the same N images, got {x.shape} and {y.shape}")
    return x, y


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of (N, C1) and (N, C2) features of the same images: 1 for identical
    representations, invariant to orthogonal transforms and isotropic scaling of either."""
    x, y = _check(x, y)
    x = x - x.mean(0)
    y = y - y.mean(0)
    # ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F), computed in the smaller of N or C
    if x.shape[1] + y.shape[1] > len(x):
        kx, ky = x @ x.T, y @ y.T
        num, dx, dy = (kx * ky).sum(), np.linalg.norm(kx), np.linalg.norm(ky)
    else:
        num = np.linalg.norm(y.T @ x) ** 2
        dx, dy = np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
    return float(num / (dx * dy)) if dx > 0 and dy > 0 else 0.0


def rdm(x: np.ndarray) -> np.ndarray:
    """Representational dissimilarity matrix (N, N): 1 - Pearson correlation between images."""
    x = np.asarray(x, np.float64)
    x = x - x.mean(1, keepdims=True)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return 1.0 - x @ x.T


def rsa(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman correlation of the upper triangles of the two RDMs."""
    from scipy.stats import spearmanr

    x, y = _check(x, y)
    iu = np.triu_indices(len(x), 1)
    return float(spearmanr(rdm(x)[iu], rdm(y)[iu]).statistic)


MEASURES = {"cka": linear_cka, "rsa": rsa}


def similarity_matrix(
    a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], measure: str = "cka"
) -> np.ndarray:
    """(len(a), len(b)) similarities between every layer of ``a`` and every layer of ``b``."""
    if measure not in MEASURES:
        raise UserInputError(f"measure must be one of {', '.join(MEASURES)}")
    f = MEASURES[measure]
    return np.array([[f(xa, xb) for xb in b.values()] for xa in a.values()])


@dataclass
class SimilarityMatrix(Result):
    """``values`` (R, C): the ``measure`` (cka or rsa) between layer ``rows[i]`` of the model
    ``row_model`` and layer ``cols[j]`` of ``col_model``, over the same images."""

    measure: str
    rows: list[str]
    cols: list[str]
    values: np.ndarray
    row_model: str = ""
    col_model: str = ""

    def to_image(self, title: str = ""):
        """The heat map, values written in the cells."""
        from convscope.render.plots import figure_to_image
        from convscope.render.represent import similarity_figure

        return figure_to_image(
            similarity_figure(
                self.values, self.rows, self.cols, title or self.headline(), self.col_model, self.row_model
            )
        )

    def headline(self) -> str:
        other = f" vs {self.col_model}" if self.col_model and self.col_model != self.row_model else ""
        return f"{self.measure.upper()}: {self.row_model}{other}" if self.row_model else self.measure.upper()


def compare_layers(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray] | None = None,
    measure: str = "cka",
    *,
    row_model: str = "",
    col_model: str | None = None,
) -> SimilarityMatrix:
    """:func:`similarity_matrix` of the layers of ``a`` (N, C features per layer) against those
    of ``b`` (default ``a`` itself), as a :class:`SimilarityMatrix` that draws its heat map."""
    other = a if b is None else b
    values = similarity_matrix(a, other, measure)
    col = row_model if col_model is None else col_model
    return SimilarityMatrix(measure, list(a), list(other), values, row_model, col)
