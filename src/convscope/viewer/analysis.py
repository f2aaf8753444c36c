"""What the viewer computes for one image, usable without the web app: the model's predictions
and the units (of the layers an atlas scanned) that respond most to it relative to their dataset
maximum. ``reader``: anything with the atlas's read queries ``layers()`` and ``units(...)`` (the
viewer's read-only reader, or an open :class:`~convscope.atlas.Atlas`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image


@dataclass
class ImageAnalysis:
    """``predictions``: ``{"label", "prob"}`` best first (empty for a model without class names);
    ``units``: ``{"layer", "unit", "score", "relative"}`` most active first, ``relative`` being
    the unit's peak over its largest activation on the scanned images."""

    predictions: list[dict] = field(default_factory=list)
    units: list[dict] = field(default_factory=list)


def _batch(subject, image: Image.Image | torch.Tensor) -> torch.Tensor:
    """One image as the model's input batch (a tensor is taken as already preprocessed)."""
    return image if isinstance(image, torch.Tensor) else subject.load_images([image])


def predictions(subject, image: Image.Image | torch.Tensor, k: int = 5) -> list[dict]:
    """The ``k`` most probable classes of ``image`` as ``{"label", "prob"}`` (prob in 0..1),
    best first; empty when the model has no outputs or no class names."""
    if not (subject.num_outputs and subject.labels is not None):
        return []
    p = subject.predict(_batch(subject, image), k=k)
    return [{"label": lab, "prob": float(pr)} for lab, pr in zip(p.names(0), p.probs[0])]


def unit_maxima(reader, layer: dict) -> np.ndarray:
    """The scanned maximum of each channel of ``layer`` (a row of ``reader.layers()``), by unit;
    1.0 where none was stored or it was 0 (so that dividing by it is safe)."""
    rows, _ = reader.units(layer["name"], 0, max(int(layer["channels"] or 0), 1), "unit")
    return np.array([r["max"] or 1.0 for r in rows], dtype=np.float64)


def most_active_units(
    subject, image: Image.Image | torch.Tensor, reader, per_layer: int = 8, limit: int = 24
) -> list[dict]:
    """The units of the atlas's scanned layers most active on ``image`` relative to their
    dataset maximum: the best ``per_layer`` of each layer, then the best ``limit`` of those,
    as ``{"layer", "unit", "score", "relative"}`` (score: the unit's peak activation)."""
    layers = reader.layers()
    if not layers:  # an atlas of learned concepts only (convscope concepts): no scanned units
        return []
    names = [r["name"] for r in layers]
    x = _batch(subject, image)
    with subject.record(names, stop=True) as rec, torch.inference_mode():
        subject(x)
    rows = []
    for lay in layers:
        a = rec[lay["name"]].float()[0]
        peak = a.flatten(1).amax(1) if a.dim() == 3 else a
        maxima = unit_maxima(reader, lay)
        rel = peak.cpu().numpy() / np.maximum(np.abs(maxima[: len(peak)]), 1e-12)
        for u in np.argsort(-rel)[:per_layer]:
            rows.append(
                {"layer": lay["name"], "unit": int(u), "score": float(peak[u]), "relative": float(rel[u])}
            )
    rows.sort(key=lambda r: -r["relative"])
    return rows[:limit]


def analyse_image(subject, image: Image.Image, reader) -> ImageAnalysis:
    """:func:`predictions` and :func:`most_active_units` of one image (preprocessed once)."""
    x = _batch(subject, image)
    return ImageAnalysis(predictions(subject, x), most_active_units(subject, x, reader))
