"""Mergeable scan state: per layer, the top-K images of every unit under each criterion, and
streaming per-unit statistics. Memory is O(units x K), whatever the dataset size.

Every operation is order-invariant: candidates are ranked by a total order, score first, then a
secondary key (:data:`SECONDARY`: a saturating unit, ReLU6 at 6.0, gives many images the same
``max``), then the smaller image index, so updating batch by batch, resuming after a crash, or
merging the states of disjoint parts of a dataset all give the same top-K (up to the float
rounding of the forward pass).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from convscope.errors import ConvscopeError
from convscope.quantiles import rank

CRITERIA = ("max", "mean", "area")
# Ties of a criterion's score are ranked by this score of the same image's map (higher first),
# then by the smaller image index: which of the images where a ReLU6 unit reaches 6.0 comes
# first is the one with the larger spatial mean, whatever the batches or shards.
SECONDARY = {"max": "mean", "mean": "max", "area": "mean"}
_NO_IMAGE = torch.iinfo(torch.int64).max


class Scratch:
    """A float32 work buffer reused from batch to batch (grown when a larger one is needed), so
    that counting on a CPU does not allocate, and page-fault, a map-sized tensor per call."""

    def __init__(self):
        self._buf: torch.Tensor | None = None

    def like(self, t: torch.Tensor) -> torch.Tensor:
        """A contiguous float32 tensor of ``t``'s shape and device (contents undefined)."""
        n = t.numel()
        if self._buf is None or self._buf.numel() < n or self._buf.device != t.device:
            self._buf = torch.empty(n, dtype=torch.float32, device=t.device)
        return self._buf[:n].view(t.shape)


class ScanMismatchError(ConvscopeError):
    """Two scan states cannot be combined (different layers, units, K or thresholds)."""


@dataclass
class TopK:
    """Best ``k`` images of each unit: ``scores``/``images``/``positions``/``secondary`` are
    (U, K); positions are flat indices ``y * W + x`` into the layer's map; ``secondary`` is the
    tie-breaking score (:data:`SECONDARY`) of each image; empty slots have image -1."""

    scores: torch.Tensor
    images: torch.Tensor
    positions: torch.Tensor
    secondary: torch.Tensor

    @classmethod
    def empty(cls, units: int, k: int, device=None) -> TopK:
        return cls(
            torch.full((units, k), -torch.inf, device=device),
            torch.full((units, k), _NO_IMAGE, dtype=torch.long, device=device),
            torch.zeros((units, k), dtype=torch.long, device=device),
            torch.full((units, k), -torch.inf, device=device),
        )

    def merge(
        self,
        scores: torch.Tensor,
        images: torch.Tensor,
        positions: torch.Tensor,
        secondary: torch.Tensor | None = None,
    ) -> None:
        """Fold in candidates (U, M) and keep the best K per unit (:func:`rank`: score desc,
        secondary desc, image asc). ``secondary`` None: all -inf (ties go by image index)."""
        k = self.scores.shape[1]
        if secondary is None:
            secondary = torch.full_like(scores, -torch.inf)
        s = torch.cat([self.scores, scores], dim=1)
        i = torch.cat([self.images, images], dim=1)
        p = torch.cat([self.positions, positions], dim=1)
        t = torch.cat([self.secondary, secondary.to(s.dtype)], dim=1)
        order = rank(s, i, t)[:, :k]
        self.scores, self.images = s.gather(1, order), i.gather(1, order)
        self.positions, self.secondary = p.gather(1, order), t.gather(1, order)

    def valid_images(self) -> torch.Tensor:
        """``images`` with empty slots as -1."""
        return torch.where(self.images == _NO_IMAGE, -1, self.images)


@dataclass
class LayerState:
    """Scan state of one layer: ``units`` = channels followed by random directions."""

    units: int
    map_size: tuple[int, int]
    topk: dict[str, TopK]
    thresholds: torch.Tensor | None  # (U,), for `area`
    count: int = 0  # number of values seen per unit (images x positions)
    sum: torch.Tensor | None = None  # (U,) float64
    sumsq: torch.Tensor | None = None
    max: torch.Tensor | None = None
    positive: torch.Tensor | None = None  # (U,) int64, values > 0

    @classmethod
    def empty(
        cls, units: int, map_size: tuple[int, int], k: int, criteria: Iterable[str], device=None
    ) -> LayerState:
        return cls(
            units,
            tuple(map_size),
            {c: TopK.empty(units, k, device) for c in criteria},
            None,
            0,
            torch.zeros(units, dtype=torch.float64, device=device),
            torch.zeros(units, dtype=torch.float64, device=device),
            torch.full((units,), -torch.inf, device=device),
            torch.zeros(units, dtype=torch.long, device=device),
        )

    def update(self, acts: torch.Tensor, images: torch.Tensor, scratch: Scratch | None = None) -> None:
        """Fold in one batch: ``acts`` (B, U, H, W) for source images ``images`` (B,).
        ``scratch``: a work buffer kept by the caller across batches (faster on a CPU)."""
        flat = acts.float().flatten(2)  # (B, U, P)
        n_pos = flat.shape[2]
        # Each reduction reads the activations once. On a CPU, counts are comparisons written
        # as 0/1 into a reused float32 buffer and summed: exact (a row has < 2**24 positions)
        # and several times faster than summing a bool tensor, which converts element by
        # element to int64. A GPU sums bools fast, and a map-sized float buffer would cost memory.
        on_cpu = flat.device.type == "cpu"
        buf = (scratch or Scratch()).like(flat) if on_cpu else None

        def count_above(limit) -> torch.Tensor:  # (B, U) float32
            if on_cpu:
                return torch.gt(flat, limit, out=buf).sum(dim=2)
            return (flat > limit).sum(dim=2, dtype=torch.float32)

        peak, where = flat.max(dim=2)
        total = flat.sum(dim=2)  # (B, U)
        scores = {"max": peak, "mean": total / n_pos}
        if "area" in self.topk:
            if self.thresholds is None:
                raise ConvscopeError("the `area` criterion needs thresholds before the scan")
            above = count_above(self.thresholds.view(1, -1, 1))
            scores["area"] = above / n_pos
        cand = images.to(acts.device).view(1, -1).expand(self.units, -1)
        where_t = where.T
        for name, top in self.topk.items():
            top.merge(scores[name].T, cand, where_t, scores[SECONDARY[name]].T)
        self.count += flat.shape[0] * n_pos
        self.sum += total.sum(dim=0, dtype=torch.float64)
        self.sumsq += torch.linalg.vector_norm(flat, dim=2).double().square().sum(dim=0)
        self.max = torch.maximum(self.max, peak.max(dim=0).values)
        self.positive += count_above(0).sum(dim=0, dtype=torch.float64).long()

    def merge(self, other: LayerState) -> None:
        if (other.units, other.map_size, set(other.topk)) != (self.units, self.map_size, set(self.topk)):
            raise ScanMismatchError("layer states differ in units, map size or criteria")
        if (self.thresholds is None) != (other.thresholds is None) or (
            self.thresholds is not None and not torch.equal(self.thresholds, other.thresholds)
        ):
            raise ScanMismatchError(
                "scans used different `area` thresholds; scan every part with the same thresholds "
                "(scan(..., thresholds=first.thresholds)) to merge them"
            )
        for name, top in self.topk.items():
            o = other.topk[name]
            top.merge(o.scores, o.images, o.positions, o.secondary)
        self.count += other.count
        self.sum += other.sum
        self.sumsq += other.sumsq
        self.max = torch.maximum(self.max, other.max)
        self.positive += other.positive

    # -- derived statistics ---------------------------------------------------------------
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)

    def std(self) -> torch.Tensor:
        m = self.mean()
        return (self.sumsq / max(self.count, 1) - m * m).clamp_min(0).sqrt()

    def fraction_positive(self) -> torch.Tensor:
        return self.positive.double() / max(self.count, 1)

    # -- (de)serialisation as plain tensors (torch.save / weights_only load) --------------
    def to_dict(self) -> dict:
        d = {
            "units": self.units,
            "map_size": list(self.map_size),
            "count": self.count,
            "sum": self.sum.cpu(),
            "sumsq": self.sumsq.cpu(),
            "max": self.max.cpu(),
            "positive": self.positive.cpu(),
            "thresholds": self.thresholds.cpu() if self.thresholds is not None else None,
        }
        for name, top in self.topk.items():
            d[f"topk.{name}"] = {
                "scores": top.scores.cpu(),
                "images": top.images.cpu(),
                "positions": top.positions.cpu(),
                "secondary": top.secondary.cpu(),
            }
        return d

    @classmethod
    def from_dict(cls, d: Mapping, device=None) -> LayerState:
        if any("secondary" not in v for k, v in d.items() if k.startswith("topk.")):
            raise ScanMismatchError(
                "this scan state was saved by an older convscope (top-K without "
                "the tie-breaking key); scan again"
            )
        topk = {
            k.split(".", 1)[1]: TopK(**{n: t.to(device) for n, t in v.items()})
            for k, v in d.items()
            if k.startswith("topk.")
        }
        thr = d["thresholds"]
        return cls(
            int(d["units"]),
            tuple(d["map_size"]),
            topk,
            thr.to(device) if thr is not None else None,
            int(d["count"]),
            d["sum"].to(device),
            d["sumsq"].to(device),
            d["max"].to(device),
            d["positive"].to(device),
        )
