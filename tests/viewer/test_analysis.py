"""viewer/analysis.py from Python, without the web app: predictions and the most active units of
an image relative to the atlas's stored maxima."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.testing import tiny_subject
from convscope.viewer.analysis import analyse_image, most_active_units, predictions, unit_maxima


class _Reader:
    """The two queries the analysis asks of an atlas, over given per-unit maxima."""

    def __init__(self, maxima: dict[str, list]):
        self.maxima = maxima

    def layers(self):
        return [{"name": n, "channels": len(m)} for n, m in self.maxima.items()]

    def units(self, layer, page=0, per_page=100, sort="unit", label=None):
        rows = [{"unit": u, "max": m} for u, m in enumerate(self.maxima[layer])]
        return rows[page * per_page : (page + 1) * per_page], len(rows)


def _peaks(subject, img, layer):
    with subject.record([layer]) as rec, torch.inference_mode():
        subject(subject.load_images([img]))
    a = rec[layer].float()[0]
    return (a.flatten(1).amax(1) if a.dim() == 3 else a).numpy()


def test_most_active_units_are_relative_to_the_stored_maxima():
    subject = tiny_subject()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8))
    maxima = [0.5, 2.0, 0.0, None, 1.0, 4.0, 0.25, 8.0]  # 0 and missing count as 1
    reader = _Reader({"conv1": maxima})
    rows = most_active_units(subject, img, reader, per_layer=8, limit=5)
    peak = _peaks(subject, img, "conv1")
    safe = np.array([m or 1.0 for m in maxima])
    rel = peak / safe
    assert [r["unit"] for r in rows] == list(np.argsort(-rel)[:5])
    for r in rows:
        assert r["layer"] == "conv1" and r["score"] == pytest.approx(peak[r["unit"]], rel=1e-5)
        assert r["relative"] == pytest.approx(rel[r["unit"]], rel=1e-5)
    np.testing.assert_array_equal(unit_maxima(reader, reader.layers()[0]), safe)


def test_predictions_and_the_combined_analysis():
    subject = tiny_subject()
    img = Image.new("RGB", (40, 30), "teal")
    preds = predictions(subject, img, k=3)
    assert [p["label"] for p in preds] == subject.predict(subject.load_images([img]), k=3).names(0)
    assert all(0 <= p["prob"] <= 1 for p in preds) and preds[0]["prob"] >= preds[-1]["prob"]
    reader = _Reader({"conv1": [1.0] * 8, "conv2": [1.0] * 16})
    found = analyse_image(subject, img, reader)
    assert found.predictions == predictions(subject, img)
    assert found.units == most_active_units(subject, img, reader)
    assert {r["layer"] for r in found.units} <= {"conv1", "conv2"} and len(found.units) == 16


def test_analysis_of_an_atlas_image_matches_its_stored_maxima(viewer_atlas):
    from convscope.viewer.state import open_reader, reopen_atlas

    reader = open_reader(viewer_atlas)
    subject, source = reopen_atlas(reader)
    found = analyse_image(subject, source.read(0), reader)
    assert len(found.predictions) == 5 and len(found.units) == 16  # 8 of each of 2 layers
    for r in found.units:
        stored = reader.unit(r["layer"], r["unit"])["max"]
        assert r["relative"] == pytest.approx(r["score"] / max(abs(stored or 1.0), 1e-12), rel=1e-5)
