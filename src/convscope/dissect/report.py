"""The dissection report: per-layer unit tables (JSON, CSV), the concepts chart of each layer,
figures of the best units, the detectors chart over layers and a summary. ``convscope dissect``
and the demo both write it through :meth:`Dissection.write_report`.

Where the files go is the caller's: ``paths`` is any object with the atlas's dissection path
helpers (``dissection_file``, ``dissection_layer_file``, ``dissection_unit_render``, as
:class:`convscope.atlas.AtlasPaths` and :class:`convscope.atlas.Atlas` have), so that the atlas
layout is spelled in the atlas alone.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from convscope.inputs.fileio import save_image, write_text
from convscope.inputs.images import display_name

if TYPE_CHECKING:
    from convscope.dissect.result import Dissection, LayerSummary, UnitLabel


class ReportPaths(Protocol):
    """The file names of a dissection report (the atlas's path helpers)."""

    def dissection_file(self, concepts: str, name: str) -> Path: ...

    def dissection_layer_file(self, concepts: str, layer: str, suffix: str) -> Path: ...

    def dissection_unit_render(self, concepts: str, layer: str, unit: int) -> Path: ...


CSV_COLUMNS = ["layer", "unit", "label", "category", "iou", "detector", "threshold"]


def units_csv(records: list[dict]) -> str:
    """The unit table of :meth:`Dissection.to_records` as CSV text (one row per unit)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for r in records:
        w.writerow(
            [r["layer"], r["unit"], r["label"], r["category"], r["iou"], int(r["detector"]), r["threshold"]]
        )
    return buf.getvalue()


def best_labels(labels: Sequence[UnitLabel], n: int, broad: bool = True) -> list[UnitLabel]:
    """The ``n`` labels with the highest IoU; ``broad=False`` leaves out units flagged too broad
    (a unit whose region covers nearly every pixel matches every large concept)."""
    return sorted((lab for lab in labels if broad or not lab.too_broad), key=lambda lab: -lab.iou)[:n]


def write_report(
    dissection: Dissection,
    paths: ReportPaths,
    concepts: str,
    subject=None,
    data=None,
    *,
    units: int = 12,
    broad: bool = True,
    tables: bool = True,
    summaries: Sequence[LayerSummary] | None = None,
    title: str | None = None,
    summary: bool = True,
    other_settings: Sequence[str] = (),
) -> dict[str, Path]:
    """Write the report of ``dissection`` on the concept set named ``concepts`` where ``paths``
    puts it; returns what each written file shows -> its path, in the order written.

    Per layer: ``units.json`` and ``units.csv`` (``tables``), the concepts chart, and with
    ``subject`` and ``data`` (the concept dataset dissected) figures of the ``units`` best units
    by IoU (``broad=False``: units flagged too broad left out). Then the chart of unique detectors
    per category over ``summaries`` (default: this dissection's layers; the CLI passes every
    layer the atlas holds on these concepts) titled ``title``, and ``summary.json`` (``summary``)
    naming ``other_settings`` (stored layers dissected with other thresholds, not charted)."""
    from convscope.dissect.regions import unit_figure
    from convscope.render.dissect import concepts_figure, detectors_figure
    from convscope.render.plots import figure_to_image

    files: dict[str, Path] = {}
    if subject is not None and data is not None:
        from convscope.dissect.transform import with_dissection_transform

        data = with_dissection_transform(data, subject)  # as dissect() saw it; the caller's unchanged
    for name in dissection.layers:
        if tables:
            records = dissection.to_records(name)
            files[f"{name} units (json)"] = write_text(
                paths.dissection_layer_file(concepts, name, "units.json"), json.dumps(records, indent=1)
            )
            files[f"{name} units (csv)"] = write_text(
                paths.dissection_layer_file(concepts, name, "units.csv"), units_csv(records)
            )
        files[f"detectors of {name} per concept"] = save_image(
            figure_to_image(concepts_figure(dissection, name)),
            paths.dissection_layer_file(concepts, name, "concepts.png"),
        )
        if subject is None or data is None:
            continue
        for lab in best_labels(dissection.labels(name), units, broad):
            files[f"{name}:{lab.unit} = {lab.name} (IoU {lab.iou:.2f})"] = save_image(
                unit_figure(subject, data, dissection, name, lab.unit),
                paths.dissection_unit_render(concepts, name, lab.unit),
            )
    charted = list(summaries) if summaries is not None else [dissection.summary(n) for n in dissection.layers]
    chart_title = title or f"{dissection.model}: unique detectors per category ({concepts})"
    files["unique detectors per layer"] = save_image(
        figure_to_image(detectors_figure(charted, title=chart_title)),
        paths.dissection_file(concepts, "layers.png"),
    )
    if summary:
        files["summary (json)"] = write_text(
            paths.dissection_file(concepts, "summary.json"),
            json.dumps(summary_record(dissection, concepts, charted, other_settings), indent=1),
        )
    return files


def summary_record(
    dissection: Dissection, concepts: str, summaries: Sequence[LayerSummary], other_settings: Sequence[str]
) -> dict:
    """What ``summary.json`` holds: the run's settings, its skipped images and the detector
    counts of ``summaries``."""
    d = dissection
    return {
        "model": d.model,
        "concepts": concepts,
        "images": d.images,
        "iou_threshold": d.iou_threshold,
        "quantile": d.quantile,
        "max_coverage": d.max_coverage,
        "seconds": d.seconds,
        "skipped": [[display_name(n), display_name(r)] for n, r in d.skipped],
        "layers": [
            {"layer": s.layer, "units": s.units, "detectors": s.detectors, "unique": s.unique}
            for s in summaries
        ],
        "other_settings": list(other_settings),
    }
