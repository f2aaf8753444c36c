"""Neighbours of a unit in weight space: the units of its layer whose incoming weights point the
same way (cosine similarity of the flattened filters; for a block, of the filters of its last
convolution with as many outputs as the block has channels)."""

from __future__ import annotations

import torch


def weight_neighbors(subject, layer: str, unit: int, n: int = 8) -> list[tuple[int, float]]:
    """Up to ``n`` (unit, cosine) pairs, most similar first; empty for layers without weights."""
    info = subject.layer(layer)
    module = dict(subject.model.named_modules()).get(info.module)
    w = _producing_weight(module, info.units)
    if not isinstance(w, torch.Tensor) or w.dim() < 2 or not 0 <= unit < len(w) or len(w) < 2:
        return []
    w = torch.nn.functional.normalize(w.detach().float().flatten(1), dim=1)
    sim = w @ w[unit]
    sim[unit] = -2
    top = sim.topk(min(n, len(w) - 1))
    return [(int(j), float(c)) for c, j in zip(top.values, top.indices)]


def _producing_weight(module, units: int | None):
    """The weight of the module itself, or (for a block) of its last convolution or linear layer
    with ``units`` outputs — the filters that write the block's channels."""
    w = getattr(module, "weight", None)
    if isinstance(w, torch.Tensor) and w.dim() >= 2:
        return w
    if module is None:
        return None
    for m in reversed(list(module.modules())):
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.weight.shape[0] == units:
            return m.weight
    return None
