"""What a dissection returns: per layer the (units x concepts) IoU matrix and thresholds, and per
unit its label."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from convscope.dissect.concepts import Concept
from convscope.results import Result


@dataclass
class LayerDissection:
    """``iou`` (U, C) over concept numbers ``concepts``; ``thresholds`` (U,) in activation units;
    ``top_images`` (U, k) dataset indices of each unit's most activating images (largest
    maximum first) with ``top_values`` (U, k) those maxima; ``coverage`` (U,) the fraction of
    all pixels inside each unit's thresholded region (about the quantile, unless it saturates)."""

    layer: str
    thresholds: np.ndarray
    concepts: list[int]
    iou: np.ndarray
    top_images: np.ndarray
    top_values: np.ndarray
    coverage: np.ndarray

    @property
    def units(self) -> int:
        return self.iou.shape[0]

    def best(self, unit: int) -> tuple[int, float]:
        """(concept number, IoU) of the unit's best concept."""
        j = int(self.iou[unit].argmax())
        return self.concepts[j], float(self.iou[unit, j])

    def ranking(self, unit: int, n: int = 5) -> list[tuple[int, float]]:
        """The unit's ``n`` best concepts as (number, IoU), best first."""
        order = np.argsort(-self.iou[unit], kind="stable")[:n]
        return [(self.concepts[j], float(self.iou[unit, j])) for j in order]


@dataclass(frozen=True)
class UnitLabel:
    layer: str
    unit: int
    concept: int
    name: str
    category: str
    iou: float
    detector: bool
    coverage: float = 0.0  # fraction of all pixels in the unit's region
    too_broad: bool = False  # region above ``max_coverage``: labelled, not a detector


@dataclass
class LayerSummary:
    """Counts of one layer: ``detectors`` per category (units labelled by a concept of that
    category with IoU above the threshold) and ``unique`` concepts per category among them."""

    layer: str
    units: int
    detectors: dict[str, int]
    unique: dict[str, int]

    @property
    def total_detectors(self) -> int:
        return sum(self.detectors.values())

    @property
    def total_unique(self) -> int:
        return sum(self.unique.values())


@dataclass
class Dissection(Result):
    """Result of :func:`convscope.dissect.dissect` over ``layers``."""

    layers: dict[str, LayerDissection]
    concepts: dict[int, Concept]
    categories: list[str]
    iou_threshold: float
    quantile: float
    max_coverage: float
    images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dataset: dict = field(default_factory=dict)
    model: str = "model"
    seconds: dict = field(default_factory=dict)  # wall time of pass 1 and of the counting

    def label(self, layer: str, unit: int) -> UnitLabel:
        """The unit's best concept; ``detector`` when its IoU exceeds the threshold and its
        region is not too broad (coverage at most ``max_coverage``)."""
        d = self.layers[layer]
        c, v = d.best(unit)
        con = self.concepts[c]
        cov = float(d.coverage[unit])
        broad = cov > self.max_coverage
        return UnitLabel(
            layer, unit, c, con.name, con.category, v, v > self.iou_threshold and not broad, cov, broad
        )

    def labels(self, layer: str) -> list[UnitLabel]:
        return [self.label(layer, u) for u in range(self.layers[layer].units)]

    def headline(self) -> str:
        parts = ", ".join(f"{n} {self.summary(n).total_detectors}/{d.units}" for n, d in self.layers.items())
        head = f"dissection of {self.model} on {self.images} images"
        return f"{head}, detectors (IoU > {self.iou_threshold}): {parts}"

    def to_image(self, top: int = 12):
        """Unique detectors per category for each layer, then the ``top`` units of all layers
        by IoU with their labels."""
        from convscope.render.dissect import detectors_figure, top_units_figure
        from convscope.render.grid import stack
        from convscope.render.plots import figure_to_image

        summaries = [self.summary(n) for n in self.layers]
        labels = sorted((lab for n in self.layers for lab in self.labels(n)), key=lambda lab: -lab.iou)
        rows = [(f"{lab.layer}:{lab.unit} {lab.name}", lab.iou, lab.category) for lab in labels[:top]]
        return stack(
            [
                figure_to_image(
                    detectors_figure(summaries, title=f"{self.model}: unique detectors per category")
                ),
                figure_to_image(top_units_figure(rows, self.iou_threshold, f"best {len(rows)} units by IoU")),
            ]
        )

    def detectors(self, layer: str) -> dict[str, list[int]]:
        """Detector units grouped by their concept's name."""
        out: dict[str, list[int]] = {}
        for lab in self.labels(layer):
            if lab.detector:
                out.setdefault(lab.name, []).append(lab.unit)
        return out

    def summary(self, layer: str) -> LayerSummary:
        det = dict.fromkeys(self.categories, 0)
        uniq: dict[str, set[int]] = {c: set() for c in self.categories}
        for lab in self.labels(layer):
            if lab.detector:
                det[lab.category] = det.get(lab.category, 0) + 1
                uniq.setdefault(lab.category, set()).add(lab.concept)
        return LayerSummary(layer, self.layers[layer].units, det, {c: len(v) for c, v in uniq.items()})

    def to_records(self, layer: str) -> list[dict]:
        """One JSON-able row per unit: label, IoU, threshold, detector, top-3 concepts."""
        d = self.layers[layer]
        rows = []
        for lab in self.labels(layer):
            rows.append(
                {
                    "layer": layer,
                    "unit": lab.unit,
                    "label": lab.name,
                    "category": lab.category,
                    "iou": round(lab.iou, 6),
                    "detector": lab.detector,
                    "threshold": float(d.thresholds[lab.unit]),
                    "coverage": round(lab.coverage, 6),
                    "runners_up": [
                        [self.concepts[c].name, round(v, 6)] for c, v in d.ranking(lab.unit, 4)[1:]
                    ],
                }
            )
        return rows

    def write_report(self, paths, concepts: str, subject=None, data=None, **options) -> dict:
        """Write the dissection report (unit tables, charts, unit figures, summary) where the
        atlas path helpers ``paths`` put the report of concept set ``concepts``; returns what
        each file shows -> its path. Options: see :func:`convscope.dissect.report.write_report`."""
        from convscope.dissect.report import write_report  # the report draws; results stay light

        return write_report(self, paths, concepts, subject, data, **options)
