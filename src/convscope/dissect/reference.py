"""A plain NumPy dissection, the way NetDissect-Lite computes it: one pass stores every
activation on the host, thresholds come from ``numpy.quantile``, then each image's labels are
counted unit by unit with ``numpy.bincount``. Slow by design; it exists to check
:func:`convscope.dissect.dissect` (tests) and to measure it (``benchmarks/dissect.py``)."""

from __future__ import annotations

import time

import numpy as np
import torch

from convscope.dissect.transform import with_dissection_transform
from convscope.quantiles import saturation_rule
from convscope.recorder import Recorder


def _bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) weights of bilinear resizing with half-pixel centres (align_corners=False)."""
    w = np.zeros((n_out, n_in))
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    w[np.arange(n_out), lo] += 1 - frac
    w[np.arange(n_out), hi] += frac
    return w


def reference_dissect(subject, data, layer: str, quantile: float = 0.005, timings: dict | None = None):
    """Thresholds (U,) and IoU (U, C) of ``layer``; concepts in ``sorted(data.concepts)``.
    ``timings`` (optional) receives the seconds of the feature pass and of the tally."""
    t0 = time.perf_counter()
    data = with_dissection_transform(data, subject)
    feats, items = [], []
    with Recorder(subject, [layer], stop=True) as rec, torch.inference_mode():
        for i in range(len(data)):
            it = data[i]
            if it.error is not None:
                continue
            subject(it.x[None].to(subject.device))
            a = rec[layer].float().cpu().numpy()[0]
            feats.append(a[:, None, None] if a.ndim == 1 else a)
            items.append(it)
    feats = np.stack(feats)  # (N, U, h, w) on the host
    t1 = time.perf_counter()
    n_units = feats.shape[1]
    flat = feats.transpose(1, 0, 2, 3).reshape(n_units, -1)
    thr = np.quantile(flat, 1 - quantile, axis=1).astype(np.float32)
    thr = saturation_rule(torch.from_numpy(thr), torch.from_numpy(flat.max(1))).numpy()
    numbers = sorted(data.concepts)
    cats = list(data.categories)
    size = max(numbers) + 1
    col = np.full(size, len(numbers))
    col[numbers] = np.arange(len(numbers))
    cat_of = np.array(
        [cats.index(data.concepts[c].category) if data.concepts[c].category in cats else 0 for c in numbers]
    )
    both = np.zeros((n_units, len(numbers) + 1))
    units_cat = np.zeros((n_units, len(cats)))
    labels = np.zeros(len(numbers) + 1)
    sh, sw = data.seg_size
    wy, wx = _bilinear_matrix(sh, feats.shape[2]), _bilinear_matrix(sw, feats.shape[3])
    for a, it in zip(feats, items):
        raw = it.planes.numpy()
        cols = np.where((raw >= 0) & (raw < size), col[np.clip(raw, 0, size - 1)], len(numbers))
        for lvl in range(1, len(cols)):  # a concept repeated by a second plane counts once
            cols[lvl][(cols[:lvl] == cols[lvl]).any(0)] = len(numbers)
        scalars = [col[c] for c in it.image_level if 0 <= c < size and col[c] < len(numbers)]
        present = np.array([c in it.annotated for c in cats], dtype=float)
        labels += np.bincount(cols.ravel(), minlength=len(numbers) + 1)
        for c in scalars:
            labels[c] += sh * sw
        for u in range(n_units):
            if a[u].max() <= thr[u]:  # NetDissect-Lite's shortcut: bilinear never exceeds the max
                continue
            mask = (wy @ a[u].astype(np.float64) @ wx.T).astype(np.float32) > thr[u]
            area = mask.sum()
            units_cat[u] += area * present
            if len(cols):
                both[u] += np.bincount(cols[:, mask].ravel(), minlength=len(numbers) + 1)
            for c in scalars:
                both[u, c] += area
    inter = both[:, : len(numbers)]
    union = units_cat[:, cat_of] + labels[None, : len(numbers)] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    if timings is not None:
        timings.update(features=t1 - t0, tally=time.perf_counter() - t1)
    return thr, iou
