"""Dissected layers of several models (or of one) side by side: detectors per category, as Bau
et al.'s comparison of last convolutional layers (``convscope dissect-compare``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from convscope.dissect.result import LayerSummary
from convscope.inputs.fileio import write_text
from convscope.results import Result


@dataclass
class DissectionComparison(Result):
    """One :class:`~convscope.dissect.result.LayerSummary` per compared layer, ``names`` its
    caption (``"MODEL\\nLAYER"``); ``unique``: the chart counts unique concepts (else every
    detector unit)."""

    summaries: list[LayerSummary]
    names: list[str]
    unique: bool = True

    def headline(self) -> str:
        return f"{len(self.summaries)} dissected layers compared"

    def to_image(self):
        """Grouped bars: unique concepts (or detectors) per category, one group per layer."""
        from convscope.render.dissect import detectors_figure
        from convscope.render.plots import figure_to_image

        return figure_to_image(detectors_figure(self.summaries, self.names, unique=self.unique))

    def rows(self) -> list[dict]:
        """Per compared layer: ``model`` (the caption on one line), ``units``, and ``detectors``
        and ``unique`` per category."""
        return [
            {"model": n.replace("\n", " "), "units": s.units, "detectors": s.detectors, "unique": s.unique}
            for n, s in zip(self.names, self.summaries)
        ]

    def write_report(self, out: str | Path) -> dict[str, Path]:
        """Write the chart to the PNG ``out`` and :meth:`rows` beside it (``out`` with suffix
        ``.json``); the paths written, by kind (``"png"``, ``"json"``)."""
        out = Path(out)
        return {
            "png": self.to_png(out),
            "json": write_text(out.with_suffix(".json"), json.dumps(self.rows(), indent=1)),
        }
