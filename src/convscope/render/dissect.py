"""Pictures of a dissection: a unit's top images with its thresholded region, and the
per-layer and per-model detector charts of Bau et al. (2017)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from convscope.dissect.result import Dissection, LayerSummary
from convscope.recorder import Recorder
from convscope.render.plots import _plt

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


def unit_figure(
    subject, data, dissection: Dissection, layer: str, unit: int, n: int = 6, cell: int = 112
) -> Image.Image:
    """The unit's ``n`` most activating concept images with its region above threshold (the
    activation map upsampled to the image), under a title with its label and IoU."""
    d = dissection.layers[layer]
    idx = [int(i) for i, v in zip(d.top_images[unit], d.top_values[unit]) if np.isfinite(v)][:n]
    lab = dissection.label(layer, unit)
    items = [data[i] for i in idx]
    items = [it for it in items if it.error is None]
    tiles = []
    if items:
        x = torch.stack([it.x for it in items]).to(subject.device)
        with Recorder(subject, [layer], stop=True) as rec, torch.inference_mode():
            subject(x)
        a = rec[layer].float()
        a = a[:, unit][:, None] if a.dim() == 4 else a[:, unit, None, None, None]
        up = F.interpolate(a, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        masks = (up > float(d.thresholds[unit])).cpu().numpy()
        pixels = subject.preprocess.denormalize(x).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        for img, m in zip(pixels, masks):
            tiles.append(
                region_overlay((img * 255 + 0.5).astype(np.uint8), m).resize((cell, cell), Image.BILINEAR)
            )
    pad, head = 4, 30
    width = max(1, len(tiles)) * (cell + pad) + pad
    canvas = Image.new("RGB", (max(width, 360), head + cell + pad), "white")
    draw = ImageDraw.Draw(canvas)
    tag = (
        "detector"
        if lab.detector
        else (
            f"too broad: region covers {lab.coverage:.0%} of pixels" if lab.too_broad else "below threshold"
        )
    )
    draw.text(
        (pad, 2), f"{layer}:{unit}  {lab.name} ({lab.category})  IoU {lab.iou:.3f}  [{tag}]", fill=(0, 0, 0)
    )
    others = ", ".join(f"{dissection.concepts[c].name} {v:.3f}" for c, v in d.ranking(unit, 4)[1:])
    draw.text((pad, 15), f"next: {others}", fill=(90, 90, 90))
    for k, t in enumerate(tiles):
        canvas.paste(t, (pad + k * (cell + pad), head))
    return canvas


def detectors_figure(
    summaries: Sequence[LayerSummary],
    names: Sequence[str] | None = None,
    unique: bool = True,
    title: str = "",
):
    """Grouped bars: unique detectors (or all detectors) per category for each layer or model,
    as the paper's comparisons of layers and of networks."""
    plt = _plt()
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
    plt = _plt()
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
