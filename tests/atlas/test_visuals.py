"""Stored feature visualisations: tiles and rows written per batch and read back, a killed build
resumed to the same tiles as an uninterrupted one, other settings refused by name, overwrite,
older atlases read as they are and upgraded."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from PIL import Image

from convscope.atlas import Atlas
from convscope.atlas.queries import AtlasReader
from convscope.atlas.schema import SCHEMA_VERSION
from convscope.atlas.store import AtlasConflictError
from convscope.atlas.visuals_build import visuals_to_atlas
from convscope.errors import UserInputError
from convscope.testing import tiny_subject

OPTS = {"steps": 4, "size": 32, "seed": 1, "diversity": 2, "batch": 8}  # 2 units (4 images each) a batch


@pytest.fixture(scope="module")
def subject():
    return tiny_subject()


def tiles(atlas: Atlas, layer: str = "conv2") -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(atlas.visuals_dir(layer).glob("*.png"))}


def test_stored_and_read_back(subject, tmp_path):
    seen = []
    built = visuals_to_atlas(
        subject, tmp_path / "a", "conv2", 3, progress=lambda d, t, note=None: seen.append((d, t)), **OPTS
    )
    atlas = built.atlas
    assert built.made == {"conv2": 3} and seen[-1] == (12, 12)
    (row,) = atlas.visual_layers()
    assert row["layer"] == "conv2" and row["units"] == 3 and len(row["slots"]) == 4
    assert atlas.visual_units("conv2") == {0, 1, 2}
    rows = atlas.visuals("conv2", 1)
    assert [(r["kind"], r["index"]) for r in rows] == [
        ("positive", 0), ("negative", 0), ("diversity", 0), ("diversity", 1)
    ]  # fmt: skip
    assert rows[0]["objective"] > rows[1]["objective"] and rows[0]["steps"] == 4 and rows[0]["size"] == 32
    png = Image.open(atlas.visual_tile("conv2", 1, "negative", 0))
    assert png.size == (32, 32)
    assert len(tiles(atlas)) == 12
    reader = AtlasReader(atlas.path)
    assert reader.visual_layer("conv2")["units"] == 3
    assert reader.visual_tile("conv2", 1, "diversity", 1) == atlas.visual_tile("conv2", 1, "diversity", 1)
    assert reader.visual_tile("conv2", 7, "positive", 0) is None
    assert reader.visual_objectives("conv2") == pytest.approx(
        {u: atlas.visuals("conv2", u)[0]["objective"] for u in range(3)}
    )


def test_killed_build_resumes_to_the_same_tiles(subject, tmp_path, monkeypatch):
    whole = visuals_to_atlas(subject, tmp_path / "whole", "conv2", 5, **OPTS).atlas
    real = Atlas.write_visuals
    calls = []

    def dies_on_second(self, result, settings):
        calls.append(list(result.units))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, result, settings)

    monkeypatch.setattr(Atlas, "write_visuals", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        visuals_to_atlas(subject, tmp_path / "cut", "conv2", 5, **OPTS)
    monkeypatch.setattr(Atlas, "write_visuals", real)
    cut = Atlas.open(tmp_path / "cut")
    assert cut.visual_units("conv2") == {0, 1}
    with pytest.raises(AtlasConflictError, match="--resume"):
        visuals_to_atlas(subject, cut.path, "conv2", 5, **OPTS)
    again = visuals_to_atlas(subject, cut.path, "conv2", 5, resume=True, **OPTS)
    assert again.reused == {"conv2": 2} and again.made == {"conv2": 3}
    assert tiles(cut) == tiles(whole)
    a, b = whole.visuals("conv2"), cut.visuals("conv2")
    assert [r["objective"] for r in a] == [r["objective"] for r in b]


def test_resume_with_other_settings_is_refused_by_name_and_overwrite_replaces(subject, tmp_path):
    atlas = visuals_to_atlas(subject, tmp_path / "a", "conv2", 2, **OPTS).atlas
    with pytest.raises(AtlasConflictError, match=r"steps 4 \(now 5\)"):
        visuals_to_atlas(subject, atlas.path, "conv2", 2, resume=True, **{**OPTS, "steps": 5})
    with pytest.raises(AtlasConflictError, match="slots"):
        visuals_to_atlas(subject, atlas.path, "conv2", 2, resume=True, **{**OPTS, "diversity": 0})
    visuals_to_atlas(subject, atlas.path, "conv2", 1, overwrite=True, **{**OPTS, "diversity": 0})
    assert atlas.visual_units("conv2") == {0} and len(tiles(atlas)) == 2


def test_units_per_layer_and_progress_names_the_layer(subject, tmp_path):
    notes = []
    built = visuals_to_atlas(
        subject, tmp_path / "a", ["conv1", "conv2"], {"conv1": [5, 2], "conv2": [7]},
        progress=lambda d, t, note=None: notes.append((d, t, note)), **{**OPTS, "diversity": 0},
    )  # fmt: skip
    atlas = built.atlas
    assert atlas.visual_units("conv1") == {2, 5} and atlas.visual_units("conv2") == {7}
    assert built.made == {"conv1": 2, "conv2": 1}
    assert notes[0] == (0, 6, None) and notes[-1] == (6, 6, "conv2")
    named = [note for _, _, note in notes[1:]]
    assert set(named) == {"conv1", "conv2"} and named == sorted(named)  # conv1's images first
    for units, message in (
        ({"conv2": [7]}, "missing: conv1"),
        ({"conv1": [1], "conv2": [7], "fc": [0]}, "not chosen: fc"),
        ({"conv1": [8], "conv2": [7]}, "units 0..7"),
    ):
        with pytest.raises(UserInputError, match=message):
            visuals_to_atlas(subject, tmp_path / "b", ["conv1", "conv2"], units, **OPTS)
    assert not (tmp_path / "b").exists()


def test_refused_before_writing(subject, tmp_path):
    with pytest.raises(UserInputError):
        visuals_to_atlas(subject, tmp_path / "a", "nope", 2, **OPTS)
    with pytest.raises(UserInputError, match="units 0..15"):
        visuals_to_atlas(subject, tmp_path / "a", "conv2", [3, 99], **OPTS)
    with pytest.raises(UserInputError, match="unknown kind"):
        visuals_to_atlas(subject, tmp_path / "a", "conv2", 2, kinds=("max",))
    assert not (tmp_path / "a").exists()
    with pytest.raises(UserInputError):
        Atlas(tmp_path).visual_tile("conv2", 0, "../x", 0)
    with pytest.raises(UserInputError):
        Atlas(tmp_path).visual_tile("..", 0, "positive", 0)


def test_older_atlas_is_read_as_it_is_and_upgraded(subject, tmp_path):
    atlas = visuals_to_atlas(subject, tmp_path / "a", "conv2", 1, **OPTS).atlas
    with sqlite3.connect(atlas.db_path) as con:
        con.execute("DROP TABLE visuals")
        con.execute("DROP TABLE visual_layers")
        con.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")
    old = Atlas.open(atlas.path, readonly=True)
    assert old.schema_version == 6 and old.visual_layers() == [] and old.visuals("conv2") == []
    reader = AtlasReader(atlas.path)
    assert reader.visual_layers() == [] and reader.visual_tile("conv2", 0, "positive", 0) is None
    upgraded = Atlas.open(atlas.path)
    assert upgraded.schema_version == SCHEMA_VERSION >= 7
    visuals_to_atlas(subject, atlas.path, "conv2", 1, **OPTS)
    assert upgraded.visual_units("conv2") == {0}
    assert np.asarray(Image.open(upgraded.visual_tile("conv2", 0, "positive", 0))).shape == (32, 32, 3)


def test_automatic_batch_stores_one_batch_per_optimisation(subject, tmp_path, monkeypatch):
    import convscope.synthesis.layer_visuals as LV

    opts = {**OPTS, "diversity": 0, "batch": None}  # positive and negative: 2 images a unit
    per = LV.image_bytes(subject, "conv2", size=opts["size"])
    monkeypatch.setattr(LV, "memory_budget", lambda device: 4.5 * per)  # 4 images fit
    written = []
    real = Atlas.write_visuals
    monkeypatch.setattr(
        Atlas,
        "write_visuals",
        lambda self, result, s: written.append(result.settings["batch"]) or real(self, result, s),
    )
    built = visuals_to_atlas(subject, tmp_path / "a", "conv2", 5, **opts)
    assert built.made == {"conv2": 5} and written == [4, 4, 2]  # 2 + 2 + 1 units
    fixed = visuals_to_atlas(subject, tmp_path / "b", "conv2", 5, **{**opts, "batch": 10})
    for unit in range(5):  # the batch does not change the images (to float rounding)
        for kind in ("positive", "negative"):
            a, b = (
                np.asarray(Image.open(x.atlas.visual_tile("conv2", unit, kind, 0)), int)
                for x in (built, fixed)
            )
            assert np.abs(a - b).max() <= 1
