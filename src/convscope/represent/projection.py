"""2-D maps of a representation: PCA, t-SNE (scikit-learn) and UMAP (umap-learn)."""

from __future__ import annotations

import numpy as np

from convscope.errors import UserInputError

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
