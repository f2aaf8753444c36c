"""Concept data opened again from the spec it recorded (a Broden folder or automatic colours)."""

from __future__ import annotations

from convscope.dissect.broden import BrodenDataset
from convscope.dissect.colors import ColorConcepts, ColorNamer
from convscope.errors import DataError
from convscope.inputs.sources import open_spec


def open_concept_data(spec: dict) -> BrodenDataset | ColorConcepts:
    """A concept dataset again from its ``spec`` (what ``BrodenDataset.spec`` and
    ``ColorConcepts.spec`` record), e.g. in another process."""
    if spec.get("kind") == "broden":
        return BrodenDataset(spec["source"], split=spec.get("split"), limit=spec.get("images"))
    if spec.get("kind") == "auto-color":
        source = open_spec(spec["source"])
        namer = ColorNamer.from_file(spec["table"]) if spec.get("table") else ColorNamer.prototypes()
        return ColorConcepts(source, seg=spec["seg"], namer=namer)
    raise DataError(f"cannot open concept data of kind {spec.get('kind')!r}")
