"""MaCo's transparency in stored feature visualisations: RGBA tiles whose alpha is each image's
normalised map, the settings saying so, RGB tiles for the other parametrisations, and a resumed
build that keeps the alpha."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from convscope.atlas import Atlas
from convscope.atlas.visuals_build import visuals_to_atlas
from convscope.testing import tiny_subject

MACO = {"param": "maco", "steps": 3, "size": 40, "seed": 2, "kinds": ["positive"], "batch": 2}


@pytest.fixture(scope="module")
def subject():
    return tiny_subject()


def pixels(atlas: Atlas, unit: int) -> np.ndarray:
    return np.asarray(Image.open(atlas.visual_tile("conv2", unit, "positive", 0)))


def test_maco_tiles_are_rgba_with_the_normalised_map(subject, tmp_path, monkeypatch):
    written = []
    real = Atlas.write_visuals

    def keep(self, result, settings):
        written.append(result)
        return real(self, result, settings)

    monkeypatch.setattr(Atlas, "write_visuals", keep)
    atlas = visuals_to_atlas(subject, tmp_path / "a", "conv2", 3, **MACO).atlas
    assert atlas.visual_settings("conv2")["alpha"] is True
    assert all(r["alpha"] for r in atlas.visuals("conv2"))
    results = {int(u): (r, i) for r in written for i, u in enumerate(r.units)}
    for unit in range(3):
        tile = Image.open(atlas.visual_tile("conv2", unit, "positive", 0))
        assert tile.mode == "RGBA" and tile.size == (40, 40)
        rgba = np.asarray(tile)
        result, row = results[unit]
        assert np.ptp(rgba[..., 3]) > 100  # not a constant alpha: the map faded somewhere
        np.testing.assert_array_equal(rgba[..., 3], np.round(result.alpha[row, 0] * 255).astype(np.uint8))
        np.testing.assert_array_equal(rgba[..., :3], result.images[row, 0])


def test_fft_tiles_stay_rgb(subject, tmp_path):
    atlas = visuals_to_atlas(subject, tmp_path / "a", "conv2", 2, steps=2, size=32, kinds=["positive"]).atlas
    assert Image.open(atlas.visual_tile("conv2", 1, "positive", 0)).mode == "RGB"
    assert "alpha" not in atlas.visual_settings("conv2")
    assert not any(r["alpha"] for r in atlas.visuals("conv2"))


def test_a_resumed_maco_build_keeps_the_alpha(subject, tmp_path, monkeypatch):
    whole = visuals_to_atlas(subject, tmp_path / "whole", "conv2", 4, **MACO).atlas
    real = Atlas.write_visuals
    calls = []

    def dies_on_second(self, result, settings):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, result, settings)

    monkeypatch.setattr(Atlas, "write_visuals", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        visuals_to_atlas(subject, tmp_path / "cut", "conv2", 4, **MACO)
    monkeypatch.setattr(Atlas, "write_visuals", real)
    again = visuals_to_atlas(subject, tmp_path / "cut", "conv2", 4, resume=True, **MACO)
    assert again.reused == {"conv2": 2} and again.made == {"conv2": 2}
    for unit in range(4):
        kept, full = pixels(again.atlas, unit), pixels(whole, unit)
        assert kept.shape == (40, 40, 4)
        assert np.abs(kept.astype(int) - full.astype(int)).max() <= 1


def older(path, drop: str, add: dict | None = None) -> None:
    """Make the stored settings of conv2 look like a build from before ``drop`` was recorded."""
    import json
    import sqlite3

    con = sqlite3.connect(path / "atlas.db")
    (text,) = con.execute("SELECT settings FROM visual_layers WHERE layer = 'conv2'").fetchone()
    settings = {k: v for k, v in json.loads(text).items() if k != drop} | (add or {})
    con.execute("UPDATE visual_layers SET settings = ? WHERE layer = 'conv2'", (json.dumps(settings),))
    con.commit()
    con.close()


def test_a_maco_build_from_before_the_alpha_is_refused_with_the_way_out(subject, tmp_path):
    from convscope.atlas.store import AtlasConflictError

    out = tmp_path / "a"
    visuals_to_atlas(subject, out, "conv2", 2, **MACO)
    older(out, "alpha")
    with pytest.raises(AtlasConflictError, match="before their transparency was stored; pass --overwrite"):
        visuals_to_atlas(subject, out, "conv2", 3, resume=True, **MACO)
    assert visuals_to_atlas(subject, out, "conv2", 3, overwrite=True, **MACO).atlas.visual_settings("conv2")[
        "alpha"
    ]


def test_a_build_that_named_its_accel_in_other_resumes(subject, tmp_path):
    fft = {**MACO, "param": "fft"}
    out = tmp_path / "a"
    visuals_to_atlas(subject, out, "conv2", 2, **fft)
    older(out, "", {"other": ["accel"]})  # how an fp32 accel was recorded before its precision
    atlas = visuals_to_atlas(subject, out, "conv2", 3, resume=True, **fft).atlas
    assert atlas.visual_units("conv2") == {0, 1, 2}
