"""Network dissection (Bau, Zhou et al. 2017): every unit against every concept.

Two passes over a concept dataset. Pass 1: each unit's threshold T_k, the exact top-0.5%
quantile of all its activations (with the saturation rule of the scan). Pass 2: each unit's
map, upsampled bilinearly to the segmentation resolution, thresholded at T_k, and compared with
every concept's pixels; intersections and the two areas are summed over the dataset on the
device (one matrix product per batch), and IoU_{k,c} = sum |M_k & L_c| / sum |M_k | L_c|.
Image-level concepts (scene, texture) cover their whole image. A unit detects its best concept
when that IoU exceeds ``iou_threshold`` (0.04, the paper's value).

All pixels of all images count in the unions (NetDissect restricts a concept's union to the
images where its category is annotated; with the synthetic and auto-colour data every image is
annotated in every category, so both agree there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from convscope.dissect.broden import BrodenDataset
from convscope.recorder import Recorder
from convscope.scan.state import TopValues
from convscope.subject import Subject


@dataclass
class LayerDissection:
    """``iou`` (U, C) over concept numbers ``concepts``; per unit the best concept and its IoU."""

    layer: str
    thresholds: np.ndarray
    concepts: list[int]
    iou: np.ndarray

    def best(self, unit: int) -> tuple[int, float]:
        j = int(self.iou[unit].argmax())
        return self.concepts[j], float(self.iou[unit, j])


@dataclass
class Dissection:
    layers: dict[str, LayerDissection]
    names: dict[int, str]
    categories: dict[int, str]
    iou_threshold: float

    def label(self, layer: str, unit: int) -> tuple[str, str, float]:
        """(concept name, category, IoU) of the unit's best concept."""
        c, v = self.layers[layer].best(unit)
        return self.names[c], self.categories[c], v

    def detectors(self, layer: str) -> dict[str, list[int]]:
        """Units whose best IoU exceeds the threshold, grouped by their concept's name."""
        out: dict[str, list[int]] = {}
        d = self.layers[layer]
        for u in range(d.iou.shape[0]):
            c, v = d.best(u)
            if v > self.iou_threshold:
                out.setdefault(self.names[c], []).append(u)
        return out


def _loader(data: BrodenDataset, batch_size: int):
    def collate(items):
        xs = torch.stack([it[0] for it in items])
        return xs, [it[1] for it in items], [it[2] for it in items]

    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False,
                                       collate_fn=collate)


def _acts(subject, rec, names, x):
    with torch.inference_mode():
        subject(x.to(subject.device))
    out = {}
    for n in names:
        a = rec[n].float()
        out[n] = a[:, :, None, None] if a.dim() == 2 else a
    return out


def dissect(subject: Subject, data: BrodenDataset, layers: Sequence[str], *,
            iou_threshold: float = 0.04, batch_size: int = 16, progress=None) -> Dissection:
    """Dissect ``layers`` of ``subject`` against the concepts of ``data``."""
    if data.transform is None:
        data.transform = subject.transform
    infos = [subject.layer(n) for n in layers]
    names = [i.name for i in infos]
    maps = {i.name: tuple(i.shape[1:]) if len(i.shape) == 3 else (1, 1) for i in infos}
    concepts = sorted(c for c in data.concepts if c > 0)
    col = {c: j for j, c in enumerate(concepts)}
    report = progress or (lambda d, t: None)
    total = 2 * len(data)
    tops = TopValues(len(data), maps)
    with Recorder(subject, names, stop=True) as rec:
        done = 0
        for x, _, _ in _loader(data, batch_size):  # pass 1: thresholds
            tops.add(_acts(subject, rec, names, x))
            done += len(x)
            report(done, total)
        thr = {n: tops.thresholds(n) for n in names}
        inter = {n: torch.zeros(thr[n].numel(), len(concepts), device=subject.device,
                                dtype=torch.float64) for n in names}
        area_m = {n: torch.zeros(thr[n].numel(), device=subject.device, dtype=torch.float64)
                  for n in names}
        area_l = torch.zeros(len(concepts), device=subject.device, dtype=torch.float64)
        for x, planes, image_level in _loader(data, batch_size):  # pass 2: IoU counts
            acts = _acts(subject, rec, names, x)
            onehot = _onehot(planes, image_level, col, subject.device)  # (B, C, S)
            sh, sw = planes[0].shape[-2:]
            area_l += onehot.sum(dim=(0, 2), dtype=torch.float64)
            flat_l = onehot.permute(0, 2, 1).reshape(-1, len(concepts)).float()
            for n in names:
                up = F.interpolate(acts[n], size=(sh, sw), mode="bilinear", align_corners=False)
                mask = (up > thr[n].view(1, -1, 1, 1)).flatten(2)  # (B, U, S)
                area_m[n] += mask.sum(dim=(0, 2), dtype=torch.float64)
                m = mask.permute(1, 0, 2).reshape(mask.shape[1], -1).float()
                inter[n] += (m @ flat_l).double()
            done += len(x)
            report(done, total)
    result = {}
    for n in names:
        union = area_m[n][:, None] + area_l[None, :] - inter[n]
        iou = torch.where(union > 0, inter[n] / union.clamp_min(1), torch.zeros_like(union))
        result[n] = LayerDissection(n, thr[n].cpu().numpy(), concepts, iou.cpu().numpy())
    return Dissection(result, {c: data.concepts[c].name for c in concepts},
                      {c: data.concepts[c].category for c in concepts}, iou_threshold)


def _onehot(planes, image_level, col, device) -> torch.Tensor:
    """(B, C, S) bool: concept present at each segmentation pixel."""
    b = len(planes)
    sh, sw = planes[0].shape[-2:]
    out = torch.zeros(b, len(col), sh * sw, dtype=torch.bool, device=device)
    for i in range(b):
        p = planes[i].to(device).flatten(1)  # (L, S)
        for plane in p:
            ids = torch.unique(plane)
            for c in ids.tolist():
                if c in col:
                    out[i, col[c]] |= plane == c
        for c in image_level[i]:
            if c in col:
                out[i, col[c]] = True
    return out
