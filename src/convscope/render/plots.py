"""Matplotlib figures for predictions and receptive fields."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from convscope.receptive import ReceptiveField


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (unless one was chosen)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def figure_to_image(fig, dpi: int = 100) -> Image.Image:
    """Render a matplotlib figure to a PIL image and close it."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def predictions_figure(
    images: Sequence[np.ndarray],
    names: Sequence[str],
    top_labels: Sequence[Sequence[str]],
    top_probs: Sequence[Sequence[float]],
):
    """One row per image: the image as the model sees it, and a bar chart of its top-k."""
    plt = pyplot()
    n = len(images)
    fig, axes = plt.subplots(
        n, 2, figsize=(8, 2.2 * n), squeeze=False, gridspec_kw={"width_ratios": [1, 1.6]}
    )
    for i in range(n):
        ax_img, ax_bar = axes[i]
        ax_img.imshow(images[i])
        ax_img.set_title(names[i], fontsize=9)
        ax_img.axis("off")
        k = len(top_labels[i])
        ax_bar.barh(range(k)[::-1], top_probs[i], color="tab:blue")
        ax_bar.set_yticks(range(k)[::-1])
        ax_bar.set_yticklabels(top_labels[i], fontsize=8)
        ax_bar.set_xlim(0, 1)
        ax_bar.set_xlabel("probability", fontsize=8)
    fig.tight_layout()
    return fig


def receptive_fields_figure(image: np.ndarray, fields: Sequence[tuple[str, ReceptiveField, tuple[int, int]]]):
    """The image with, per layer, the receptive-field box of its centre unit and the unit grid.

    ``fields`` holds ``(layer name, receptive field, (map height, map width))``.
    """
    plt = pyplot()
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(image)
    h, w = image.shape[:2]
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(fields), 1)))
    lo_y, lo_x, hi_y, hi_x = 0, 0, h, w
    for (name, rf, (mh, mw)), color in zip(fields, colors):
        if rf is None or rf.is_global:
            continue
        box = rf.box(mh // 2, mw // 2)
        lo_y, lo_x = min(lo_y, box.y0), min(lo_x, box.x0)
        hi_y, hi_x = max(hi_y, box.y1), max(hi_x, box.x1)
        ax.add_patch(
            Rectangle(
                (box.x0 - 0.5, box.y0 - 0.5),
                box.width,
                box.height,
                fill=False,
                lw=2,
                ec=color,
                label=f"{name}: {rf}",
            )
        )
        cy, cx = rf.center(mh // 2, mw // 2)
        ax.plot([cx], [cy], "o", color=color, ms=3)
    margin = 0.05 * max(hi_y - lo_y, hi_x - lo_x)
    ax.set_xlim(lo_x - margin, hi_x + margin)
    ax.set_ylim(hi_y + margin, lo_y - margin)
    ax.legend(loc="lower center", fontsize=7, bbox_to_anchor=(0.5, -0.35))
    ax.set_title("receptive field of the centre unit per layer")
    return fig


def sanity_figure(method: str, layers, corr, corr_abs):
    """Rank correlation with the trained model's map as layers are randomised from the top."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(layers) + 2), 3.5))
    xs = np.arange(len(layers))
    ax.plot(xs, corr, "o-", label="Spearman (signed)")
    ax.plot(xs, corr_abs, "s--", label="Spearman (|map|)")
    ax.set_xticks(xs)
    ax.set_xticklabels(layers, rotation=70, fontsize=7)
    ax.set_ylim(-0.1, 1.05)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylabel("rank correlation")
    ax.set_title(f"sanity check{': ' + method if method else ''} (randomised up to layer)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def curves_figure(deletion, insertion, title: str = ""):
    """Deletion and insertion curves (mean over images) with their AUCs."""
    return curve_figure([deletion, insertion], title)


def curve_figure(curves, title: str = ""):
    """Deletion or insertion curves (objects with ``kind``, ``fractions`` (S,), ``scores``
    (N, S) and ``auc`` (N,)): the mean over images of each, with its mean AUC."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for c in curves:
        ax.plot(c.fractions, c.scores.mean(0), label=f"{c.kind} (AUC {c.auc.mean():.3f})")
    ax.set_xlabel("fraction of pixels")
    ax.set_ylabel("target probability")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def stimuli_figure(st):
    """Position tuning (centre unit, anywhere) and the intact / shuffled / scrambled bars."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), gridspec_kw={"wspace": 0.45})
    for ax, data, title in (
        (axes[0], st.centre, "centre unit (localisation)"),
        (axes[1], st.anywhere, "max over the map (identification)"),
    ):
        ny, nx = data.shape
        s = st.stride  # axes in input pixels: the patch's top-left corner
        im = ax.imshow(data, cmap="inferno", extent=(-s / 2, (nx - 0.5) * s, (ny - 0.5) * s, -s / 2))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("patch left edge, px", fontsize=8)
        ax.set_ylabel("patch top edge, px", fontsize=8)
        ax.tick_params(labelsize=8)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(5, integer=True))
        bar = fig.colorbar(im, ax=ax, fraction=0.046)
        bar.ax.tick_params(labelsize=7)
        bar.formatter.set_useOffset(False)
        bar.update_ticks()
    axes[2].bar(
        ["intact", "pixels\nshuffled", "blocks\nscrambled"],
        [st.intact, st.shuffled, st.scrambled],
        color=["tab:green", "tab:red", "tab:orange"],
    )
    axes[2].set_title(f"{st.layer}:{st.channel} max response", fontsize=9)
    axes[2].tick_params(axis="x", labelsize=8)
    axes[2].tick_params(axis="y", labelsize=8)
    return fig


def rf_sizes_figure(rows):
    """Empirical vs theoretical receptive-field size per layer (rows of layer summaries)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows) + 2), 3.5))
    xs = np.arange(len(rows))
    ax.plot(xs, [r["theoretical"] for r in rows], "s--", label="theoretical")
    ax.errorbar(
        xs,
        [r["empirical_mean"] for r in rows],
        yerr=[r["empirical_std"] for r in rows],
        fmt="o-",
        capsize=3,
        label="empirical (mean +- std over units)",
    )
    ax.set_xticks(xs)
    ax.set_xticklabels([r["layer"] for r in rows], rotation=30, fontsize=8)
    ax.set_ylabel("receptive field size, px")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def evaluation_figure(rows: Sequence[dict], metrics: Sequence[str]):
    """One panel per metric of an evaluation table (rows of :meth:`Evaluation.table`): methods
    ranked best first from the top, mean as a dot and the confidence interval as a bar."""
    plt = pyplot()
    metrics = list(metrics)
    cols = min(3, max(1, len(metrics)))
    nrows = -(-len(metrics) // cols) if metrics else 1
    per = max((sum(1 for r in rows if r["metric"] == m) for m in metrics), default=1)
    size = (4.2 * cols, 0.6 + (0.32 * per + 0.9) * nrows)
    fig, axes = plt.subplots(nrows, cols, figsize=size, squeeze=False)
    for ax in axes.flat[len(metrics) :]:
        ax.axis("off")
    for ax, metric in zip(axes.flat, metrics):
        group = sorted((r for r in rows if r["metric"] == metric), key=lambda r: r["rank"])
        ys = np.arange(len(group))[::-1]
        mean = np.array([r["mean"] for r in group], dtype=float)
        low = np.array([r["low"] for r in group], dtype=float)
        high = np.array([r["high"] for r in group], dtype=float)
        ax.errorbar(
            mean, ys, xerr=[np.nan_to_num(mean - low), np.nan_to_num(high - mean)], fmt="o", ms=4, capsize=2
        )
        ax.set_yticks(ys)
        ax.set_yticklabels([r["method"] for r in group], fontsize=8)
        up = group[0]["higher_is_better"] if group else True
        ax.set_title(f"{metric} ({'higher' if up else 'lower'} is better)", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", lw=0.3)
    fig.tight_layout()
    return fig
