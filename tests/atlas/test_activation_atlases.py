"""Activation atlases stored in an atlas: files and rows, read back, resume, overwrite, refusals
and a failed build leaving nothing."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from PIL import Image

from convscope.atlas import Atlas
from convscope.atlas.activation_atlas_build import activation_atlas_to_atlas
from convscope.atlas.queries import AtlasReader
from convscope.atlas.schema import SCHEMA_VERSION
from convscope.atlas.store import AtlasConflictError
from convscope.errors import NameNotFoundError, UserInputError
from convscope.testing import tiny_subject

OPTIONS = dict(samples_per_image=6, layout="pca", grid=3, min_count=1, steps=3, size=16, workers=0)


@pytest.fixture(scope="module")
def subject():
    return tiny_subject(size=32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("aa-images")
    rng = np.random.default_rng(1)
    for i in range(8):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        pixels[: 4 * i] //= 2
        Image.fromarray(pixels).save(out / f"im{i}.png")
    return out


@pytest.fixture(scope="module")
def built(subject, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("aa") / "atlas"
    notes = []
    res = activation_atlas_to_atlas(
        subject, folder, out, ["block", "conv2"], progress=lambda d, t, n: notes.append(n), **OPTIONS
    )
    return res, notes


def test_stored_and_read_back(built):
    res, notes = built
    assert res.layers == ["block", "conv2"] and res.reused == []
    assert "block: visualisation" in notes and "conv2: layout" in notes
    store = Atlas.open(res.atlas.path)
    assert [a["layer"] for a in store.activation_atlases()] == ["block", "conv2"]
    for layer, result in res.results.items():
        back = store.activation_atlas(layer)
        assert np.array_equal(back.tiles, result.tiles) and back.top_label == result.top_label
        cells = store.activation_atlas_cells(layer)
        assert [(c["row"], c["col"]) for c in cells] == [tuple(rc) for rc in result.cells]
        assert [c["count"] for c in cells] == result.counts.tolist()
        assert [c["top_class"] for c in cells] == result.top_class.tolist()
        assert cells[0]["typical"] == [tuple(t) for t in result.typical[0].tolist() if t[0] >= 0]
        reader = AtlasReader(res.atlas.path)
        assert reader.activation_atlas(layer)["cells"] == len(result.cells)
        tile = reader.activation_atlas_file(layer, "tile", 0)
        want = (np.clip(result.tiles[0], 0, 1) * 255).round().astype(np.uint8)
        assert np.array_equal(np.asarray(Image.open(tile).convert("RGB")), want)
        big = np.asarray(Image.open(reader.activation_atlas_file(layer, "image")).convert("RGB"))
        assert big.shape == (3 * 16, 3 * 16, 3)
        assert reader.activation_atlas_file(layer, "tile", 999) is None
    with pytest.raises(NameNotFoundError):
        store.activation_atlas("conv1")


def test_resume_reuses_and_refuses_other_settings(subject, folder, built):
    res, _ = built
    again = activation_atlas_to_atlas(subject, folder, res.atlas.path, "block", resume=True, **OPTIONS)
    assert again.reused == ["block"] and again.results == {}
    with pytest.raises(AtlasConflictError, match="already holds"):
        activation_atlas_to_atlas(subject, folder, res.atlas.path, "block", **OPTIONS)
    with pytest.raises(AtlasConflictError, match="grid 3 \\(now 4\\)"):
        activation_atlas_to_atlas(
            subject, folder, res.atlas.path, "block", resume=True, **{**OPTIONS, "grid": 4}
        )
    assert Atlas.open(res.atlas.path).activation_atlas("block").grid == 3  # left as it was


def test_overwrite_rebuilds(subject, folder, tmp_path):
    out = tmp_path / "atlas"
    activation_atlas_to_atlas(subject, folder, out, "block", **OPTIONS)
    res = activation_atlas_to_atlas(subject, folder, out, "block", overwrite=True, **{**OPTIONS, "grid": 2})
    assert Atlas.open(out).activation_atlas("block").grid == 2 and res.results["block"].grid == 2
    assert len(list((out / "activation_atlases" / "block" / "tiles").iterdir())) == len(
        res.results["block"].cells
    )


def test_refusals_before_work_and_failed_build_leaves_nothing(subject, folder, tmp_path):
    out = tmp_path / "new"
    with pytest.raises(UserInputError, match="unknown"):
        activation_atlas_to_atlas(subject, folder, out, "block", colour=1, **OPTIONS)
    with pytest.raises(UserInputError, match="layout"):
        activation_atlas_to_atlas(subject, folder, out, "block", **{**OPTIONS, "layout": "mds"})
    assert not out.exists()
    with pytest.raises(UserInputError, match="min_count"):  # found after the vectors are taken
        activation_atlas_to_atlas(subject, folder, out, "block", **{**OPTIONS, "min_count": 10_000})
    assert not out.exists()


def test_older_atlas_has_none_and_upgrades(subject, folder, tmp_path):
    out = tmp_path / "old"
    activation_atlas_to_atlas(subject, folder, out, "block", **OPTIONS)
    con = sqlite3.connect(out / "atlas.db")
    con.execute("DROP TABLE activation_atlases")
    con.execute("DROP TABLE activation_atlas_cells")
    con.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    assert AtlasReader(out).activation_atlases() == []
    upgraded = Atlas.open(out)
    assert upgraded.schema_version == SCHEMA_VERSION and upgraded.activation_atlases() == []
