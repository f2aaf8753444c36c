"""Pictures of a dissection: a unit's top images with its thresholded region, and the
per-layer and per-model detector charts of Bau et al. (2017). Arrays and the dissection's own
fields in, pictures out: the regions are computed in :mod:`convscope.dissect.regions`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from convscope.render.plots import pyplot

if TYPE_CHECKING:  # drawn from their fields only: render/ does not import the capabilities
    from convscope.dissect.result import Dissection, LayerSummary

CATEGORY_COLORS = {
    "color": "#d62728",
    "object": "#1f77b4",
    "part": "#ff7f0e",
    "material": "#8c564b",
    "scene": "#2ca02c",
    "texture": "#9467bd",
}


def region_overlay(image: np.ndarray, mask: np.ndarray) -> Image.Image:
    """``image`` (H, W, 3) uint8 with everything outside ``mask`` (H, W) dimmed and the mask's
    border drawn in yellow, as NetDissect shows a unit's region."""
    img = image.astype(np.float32)
    out = np.where(mask[..., None], img, img * 0.4 + 30)
    edge = mask ^ _erode(mask)
    out[edge] = (255, 230, 0)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def _erode(mask: np.ndarray) -> np.ndarray:
    m = np.pad(mask, 1, constant_values=False)
    return m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]


def unit_regions_figure(
    pixels: Sequence[np.ndarray], masks: Sequence[np.ndarray], title: str, subtitle: str = "", cell: int = 112
) -> Image.Image:
    """A unit's images ``pixels`` (H, W, 3) uint8 with its regions ``masks`` (H, W) bool
    (:func:`region_overlay`), ``cell`` px each, under a ``title`` line and a grey ``subtitle``."""
    tiles = [region_overlay(p, m).resize((cell, cell), Image.BILINEAR) for p, m in zip(pixels, masks)]
    pad, head = 4, 30
    width = max(1, len(tiles)) * (cell + pad) + pad
    canvas = Image.new("RGB", (max(width, 360), head + cell + pad), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 2), title, fill=(0, 0, 0))
    draw.text((pad, 15), subtitle, fill=(90, 90, 90))
    for k, t in enumerate(tiles):
        canvas.paste(t, (pad + k * (cell + pad), head))
    return canvas


def unit_title(dissection: Dissection, layer: str, unit: int) -> tuple[str, str]:
    """The title line (unit, label, IoU, whether it is a detector) and the runners-up line of a
    unit's picture."""
    lab = dissection.label(layer, unit)
    tag = (
        "detector"
        if lab.detector
        else (
            f"too broad: region covers {lab.coverage:.0%} of pixels" if lab.too_broad else "below threshold"
        )
    )
    title = f"{layer}:{unit}  {lab.name} ({lab.category})  IoU {lab.iou:.3f}  [{tag}]"
    ranking = dissection.layers[layer].ranking(unit, 4)[1:]
    others = ", ".join(f"{dissection.concepts[c].name} {v:.3f}" for c, v in ranking)
    return title, f"next: {others}"


def detectors_figure(
    summaries: Sequence[LayerSummary],
    names: Sequence[str] | None = None,
    unique: bool = True,
    title: str = "",
):
    """Grouped bars: unique detectors (or all detectors) per category for each layer or model,
    as the paper's comparisons of layers and of networks."""
    plt = pyplot()
    names = list(names or [s.layer for s in summaries])
    cats = [
        c for c in CATEGORY_COLORS if any((s.unique if unique else s.detectors).get(c, 0) for s in summaries)
    ] or list(summaries[0].detectors)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(summaries) * max(1, len(cats)) * 0.5 + 2), 3.6))
    width = min(0.8 / max(1, len(cats)), 0.3)
    pos = np.arange(len(summaries))
    for j, c in enumerate(cats):
        vals = [(s.unique if unique else s.detectors).get(c, 0) for s in summaries]
        ax.bar(
            pos + (j - (len(cats) - 1) / 2) * width,
            vals,
            width,
            label=c,
            color=CATEGORY_COLORS.get(c, "#7f7f7f"),
        )
    ax.set_xlim(-0.6, len(summaries) - 0.4)  # a lone narrow bar stays narrow
    tilt = len(names) > 4
    ax.set_xticks(pos, names, rotation=20 if tilt else 0, ha="right" if tilt else "center")
    ax.set_ylabel("unique detectors" if unique else "detector units")
    ax.set_title(
        title or ("Unique concept detectors per category" if unique else "Detector units per category")
    )
    # outside the axes, right of the bars, so it never covers one
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def concepts_figure(dissection: Dissection, layer: str, limit: int = 40):
    """NetDissect's layer bar graph: detector units per concept, coloured by category, most
    frequent first."""
    plt = pyplot()
    det = dissection.detectors(layer)
    by_name = {c.name: c.category for c in dissection.concepts.values()}
    rows = sorted(det.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:limit]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.28 * len(rows) + 1.5), 3.2))
    if rows:
        ax.bar(
            range(len(rows)),
            [len(v) for _, v in rows],
            color=[CATEGORY_COLORS.get(by_name[k], "#7f7f7f") for k, _ in rows],
        )
        ax.set_xticks(range(len(rows)), [k for k, _ in rows], rotation=60, ha="right", fontsize=8)
    else:
        ax.text(
            0.5, 0.5, f"no unit above IoU {dissection.iou_threshold}", ha="center", transform=ax.transAxes
        )
        ax.set_xticks([])
    s = dissection.summary(layer)
    ax.set_ylabel("units")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(
        f"{layer}: {s.total_detectors} detectors of {s.units} units, {s.total_unique} unique concepts",
        fontsize=10,
    )
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def top_units_figure(rows: Sequence[tuple[str, float, str]], threshold: float, title: str = ""):
    """The best units as horizontal bars of their IoU, labelled ``"layer:unit concept"`` and
    coloured by the concept's category; ``rows`` holds (label, IoU, category), best first; the
    detector threshold is the dotted line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, max(2.0, 0.28 * len(rows) + 1.2)))
    pos = np.arange(len(rows))[::-1]
    ax.barh(pos, [r[1] for r in rows], color=[CATEGORY_COLORS.get(r[2], "#7f7f7f") for r in rows])
    ax.set_yticks(pos, [r[0] for r in rows], fontsize=7)
    ax.axvline(threshold, color="grey", lw=1, ls=":")
    ax.set_xlabel("IoU", fontsize=8)
    ax.set_title(title or "best units", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig
