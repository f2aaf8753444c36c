"""Pictures of representations: neighbour grids, probe accuracy per layer, 2-D maps (scatter
and image thumbnails) and layer-similarity heat maps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from convscope.render.plots import pyplot
from convscope.render.topk import fit_image


def neighbors_grid(
    query: Image.Image,
    neighbors: Sequence[Image.Image],
    captions: Sequence[str],
    title: str = "",
    cell: int = 112,
) -> Image.Image:
    """The query (outlined) followed by its neighbours, nearest first, with a caption each
    (wrapped onto up to four lines under its tile, not cut)."""
    import textwrap

    texts = ["query", *captions]
    lines = [textwrap.wrap(t, max(cell // 6, 1))[:4] or [""] for t in texts]
    pad, cap, head = 4, 2 + 12 * max(len(x) for x in lines), 16 if title else 0
    n = len(neighbors) + 1
    out = Image.new("RGB", (n * (cell + pad) + pad, head + cell + cap + 2 * pad), "white")
    draw = ImageDraw.Draw(out)
    if title:
        draw.text((pad, 2), title, fill=(0, 0, 0))
    for k, (img, text) in enumerate(zip([query, *neighbors], lines)):
        x = pad + k * (cell + pad)
        out.paste(fit_image(img, cell), (x, head + pad))
        for i, line in enumerate(text):
            draw.text((x, head + pad + cell + 1 + 12 * i), line, fill=(0, 0, 0))
    draw.rectangle(
        [pad - 2, head + pad - 2, pad + cell + 1, head + pad + cell + 1], outline=(220, 30, 30), width=2
    )
    return out


def probe_figure(result, title: str = ""):
    """Train and test accuracy of the linear probe per layer, with the chance level."""
    plt = pyplot()
    names = [r.layer for r in result.rows]
    fig, ax = plt.subplots(figsize=(max(4.5, 0.7 * len(names) + 2), 3.4))
    pos = np.arange(len(names))
    ax.plot(pos, [r.test_accuracy for r in result.rows], "o-", label="test")
    ax.plot(pos, [r.train_accuracy for r in result.rows], "s--", alpha=0.6, label="train")
    ax.axhline(result.chance, color="grey", lw=1, ls=":", label="chance")
    ax.set_xticks(
        pos, names, rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center"
    )
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.set_title(title or f"Linear probe ({result.classifier}): which layer transfers best")
    ax.legend(frameon=False, fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def scatter_figure(xy: np.ndarray, labels: np.ndarray, classes: Sequence[str], title: str = ""):
    """2-D coordinates coloured by class."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for c in np.unique(labels):
        m = labels == c
        name = classes[c] if 0 <= c < len(classes) else "unlabelled"
        ax.scatter(xy[m, 0], xy[m, 1], s=10, color=cmap(int(c) % cmap.N), label=name)
    if len(classes) <= 20:
        ax.legend(frameon=False, fontsize=7, markerscale=1.5, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    return fig


def thumbnail_map(
    xy: np.ndarray, images: Sequence[Image.Image], size: int = 1200, thumb: int = 40
) -> Image.Image:
    """Images pasted at their 2-D positions on a ``size`` px canvas (later ones on top)."""
    canvas = Image.new("RGB", (size, size), "white")
    lo, hi = xy.min(0), xy.max(0)
    span = np.maximum(hi - lo, 1e-12)
    pos = (xy - lo) / span * (size - thumb)
    for (x, y), img in zip(pos, images):
        canvas.paste(
            img.convert("RGB").resize((thumb, thumb), Image.BILINEAR), (int(x), int(size - thumb - y))
        )
    return canvas


def similarity_figure(
    matrix: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
):
    """A heat map of layer-by-layer similarities (CKA or RSA), values written in the cells."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(cols) + 2.5), max(3.5, 0.5 * len(rows) + 2)))
    im = ax.imshow(matrix, cmap="magma", vmin=min(0.0, float(np.nanmin(matrix))), vmax=1.0)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    if matrix.size <= 144:
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                ax.text(
                    j,
                    i,
                    f"{matrix[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if matrix[i, j] < 0.6 else "black",
                )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return fig


def retrieval_figure(ap: np.ndarray, title: str = ""):
    """The average precision of every query, best first, with its mean."""
    plt = pyplot()
    ap = np.sort(np.asarray(ap, dtype=np.float64))[::-1]
    fig, ax = plt.subplots(figsize=(max(4.0, min(0.08 * len(ap) + 2, 9.0)), 3.0))
    ax.bar(np.arange(len(ap)), ap, width=1.0, color="tab:blue")
    if len(ap):
        ax.axhline(float(ap.mean()), color="grey", lw=1, ls=":", label=f"mean {ap.mean():.3f}")
        ax.legend(frameon=False, fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("query (sorted)")
    ax.set_ylabel("average precision")
    ax.set_title(title, fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def feature_figure(features: dict[str, np.ndarray], labels: np.ndarray, title: str = "", channels: int = 64):
    """One heat map per layer: images (rows, sorted by class) by their first ``channels``
    feature dimensions, each dimension scaled to its own range."""
    plt = pyplot()
    names = list(features)
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names) + 1, 3.2), squeeze=False)
    order = np.argsort(np.asarray(labels), kind="stable")
    for ax, name in zip(axes[0], names):
        x = np.asarray(features[name], dtype=np.float64)[order][:, :channels]
        lo, hi = x.min(0, keepdims=True), x.max(0, keepdims=True)
        ax.imshow(
            (x - lo) / np.maximum(hi - lo, 1e-12), aspect="auto", cmap="viridis", interpolation="nearest"
        )
        ax.set_title(f"{name} ({features[name].shape[1]}-d)", fontsize=8)
        ax.set_xlabel("dimension", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0][0].set_ylabel("image (by class)", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
