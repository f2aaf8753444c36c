"""Pictures of training: curves, filters across epochs, confusion matrices, transferability."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from convscope.render.grid import image_grid, to_uint8
from convscope.render.plots import pyplot


def curves_figure(history, title: str = ""):
    """Loss and accuracy per epoch, train and test."""
    plt = pyplot()
    ep = [h.epoch for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.3))
    a.plot(ep, [h.train_loss for h in history], "o-", label="train")
    a.plot(ep, [h.test_loss for h in history], "s-", label="test")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    b.plot(ep, [h.train_accuracy for h in history], "o-", label="train")
    b.plot(ep, [h.test_accuracy for h in history], "s-", label="test")
    b.set_xlabel("epoch")
    b.set_ylabel("accuracy")
    b.set_ylim(0, 1.02)
    for ax in (a, b):
        ax.legend(frameon=False, fontsize=8)
        ax.spines[["top", "right"]].set_visible(False)
        ax.xaxis.get_major_locator().set_params(integer=True)  # whole epochs only
    fig.suptitle(title)
    return fig


def filter_cell(kernel: int, min_cell: int = 48, per_pixel: int = 12) -> int:
    """Tile side for a ``kernel`` x ``kernel`` filter: a whole multiple of the kernel, at least
    ``per_pixel`` px per filter pixel and at least ``min_cell`` px, so that 3 x 3 and 5 x 5
    filters are readable (48 and 60 px)."""
    k = max(1, int(kernel))
    return k * max(per_pixel, math.ceil(min_cell / k))


def filter_tiles(weight: torch.Tensor, n: int, cell: int | None = None) -> list[Image.Image]:
    """Pictures of the first ``n`` filters of a conv weight (C_out, C_in, kh, kw): RGB when
    C_in = 3, else the mean over input channels in grey; each scaled around grey by its own
    largest absolute weight, ``cell`` px wide (default :func:`filter_cell` of the kernel)."""
    cell = cell or filter_cell(max(weight.shape[-2:]))
    w = weight.detach().float().cpu()[:n]
    if w.shape[1] != 3:
        w = w.mean(1, keepdim=True)
    scale = w.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    imgs = (0.5 + 0.5 * w / scale).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(to_uint8(i)).resize((cell, cell), Image.NEAREST) for i in imgs]


def filter_evolution_figure(
    snapshots: Sequence[dict[str, torch.Tensor]],
    epochs: Sequence[int],
    layers: Sequence[str],
    n: int = 8,
    cell: int | None = None,
) -> Image.Image:
    """One row per layer, one column per epoch; each cell the layer's first ``n`` filters, each
    filter ``cell`` px wide (default :func:`filter_cell` of its kernel: >= 12 px per weight)."""
    pad, left, head = 6, 130, 16
    cols = [
        [image_grid(filter_tiles(s[layer], n, cell), ncols=min(n, 4), pad=1) for s in snapshots]
        for layer in layers
    ]
    cw = max(t.width for row in cols for t in row)
    ch = max(t.height for row in cols for t in row)
    out = Image.new("RGB", (left + len(epochs) * (cw + pad), head + len(layers) * (ch + pad)), "white")
    draw = ImageDraw.Draw(out)
    for j, e in enumerate(epochs):
        draw.text((left + j * (cw + pad), 2), f"epoch {e}", fill=(0, 0, 0))
    for i, (layer, row) in enumerate(zip(layers, cols)):
        y = head + i * (ch + pad)
        draw.text((4, y + ch // 2 - 6), layer.removesuffix(".weight")[:20], fill=(0, 0, 0))
        for j, tile in enumerate(row):
            out.paste(tile, (left + j * (cw + pad), y))
    return out


def confusion_figure(matrix: np.ndarray, classes: Sequence[str], title: str = ""):
    """Row-normalised confusion matrix with the counts written in."""
    plt = pyplot()
    norm = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(0.45 * len(classes) + 2.5, 0.45 * len(classes) + 2))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    if len(classes) <= 20:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(
                    j,
                    i,
                    str(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"accuracy {np.trace(matrix) / max(1, matrix.sum()):.3f}")
    return fig


def transfer_figure(ks: Sequence[int], accuracies: Sequence[float], blocks: Sequence[str], title: str = ""):
    """Test accuracy after fine-tuning against the number of frozen blocks."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.5, 0.5 * len(ks) + 2), 3.3))
    ax.plot(ks, accuracies, "o-")
    ax.set_xticks(list(ks), [f"{k}\n{blocks[k - 1] if k else 'none'}" for k in ks], fontsize=7)
    ax.set_xlabel("frozen blocks")
    ax.set_ylabel("test accuracy")
    ax.set_title(title or "Transferability: accuracy vs frozen blocks")
    ax.spines[["top", "right"]].set_visible(False)
    return fig
