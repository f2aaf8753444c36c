from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from PIL import Image

from convscope.atlas import Atlas, AtlasConflictError, render_units, reopen, scan_to_atlas
from convscope.errors import LayerNotFoundError, UserInputError
from convscope.inputs.sources import open_images
from convscope.testing import tiny_subject


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(24):
        (root / f"c{i % 2}").mkdir(exist_ok=True)
        Image.fromarray((rng.random((36, 36, 3)) * 255).astype(np.uint8)).save(root / f"c{i % 2}/{i}.png")
    (root / "c0" / "broken.png").write_bytes(b"nope")
    subject = tiny_subject()
    source = open_images(root, transform=subject.transform)
    out = tmp_path_factory.mktemp("atlas") / "a"
    atlas, result = scan_to_atlas(
        subject, source, out, ["block", "conv2"], k=3, directions=2, batch_size=8, threshold_sample=8
    )
    return subject, source, atlas, result


def test_roundtrip(setup):
    subject, source, atlas, result = setup
    again = Atlas.open(atlas.path)
    for layer in ("block", "conv2"):
        for crit in ("max", "mean", "area"):
            for unit in (0, 3):
                a, b = again.topk(layer, unit, crit), result.topk(layer, unit, crit)
                assert a.images.tolist() == b.images.tolist()
                assert a.names == b.names
                assert np.allclose(a.scores, b.scores)
                assert a.ys.tolist() == b.ys.tolist() and a.xs.tolist() == b.xs.tolist()
        d = again.topk(layer, 1, "max", direction=True)
        assert d.images.tolist() == result.topk(layer, 1, "max", direction=True).images.tolist()
        assert np.allclose(again.direction(layer, 1), result.directions[layer][1].numpy())
        s, r = again.stats(layer), result.stats(layer)
        assert np.allclose(s.mean, r.mean) and np.allclose(s.threshold, r.threshold)
    run = again.run()
    assert run["processed"] == 24 and run["skipped"] == 1 and run["config"]["k"] == 3
    assert again.skipped()[0][0] == "c0/broken.png"
    layers = {r["name"]: r for r in again.layers()}
    assert layers["block"]["rf_size_y"] == subject.layer("block").rf.size[0]
    assert layers["conv2"]["directions"] == 2
    with sqlite3.connect(atlas.db_path) as con:
        assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("9",)


def test_bad_queries(setup):
    _, _, atlas, _ = setup
    with pytest.raises(LayerNotFoundError, match="block"):
        atlas.topk("blok", 0)
    with pytest.raises(UserInputError):
        atlas.topk("block", 99)
    with pytest.raises(UserInputError, match="criterion"):
        atlas.topk("block", 0, "median")
    with pytest.raises(UserInputError, match="not an atlas"):
        Atlas.open(atlas.path.parent / "nothing")


def test_never_silently_overwritten(setup, tmp_path):
    subject, source, atlas, _ = setup
    with pytest.raises(AtlasConflictError, match="--resume"):
        scan_to_atlas(subject, source, atlas.path, ["block"])
    other = tiny_subject(seed=1)
    other.name = "another"
    with pytest.raises(AtlasConflictError, match="another --out"):
        scan_to_atlas(other, source, atlas.path, ["block"])
    fresh = tmp_path / "copy"
    scan_to_atlas(subject, source, fresh, ["block"], k=2, criteria=["max"])
    atlas2, res = scan_to_atlas(other, source, fresh, ["conv2"], k=2, criteria=["max"], overwrite=True)
    assert [r["name"] for r in atlas2.layers()] == ["conv2"] and atlas2.model_spec["name"] == "another"


def test_render_grids(setup):
    subject, source, atlas, _ = setup
    paths = render_units(atlas, subject, source, "block", [0, 1], criteria=["max", "area"])
    assert [p.name for p in paths] == [
        "unit0000_max.png",
        "unit0000_area.png",
        "unit0001_max.png",
        "unit0001_area.png",
    ]
    img = Image.open(paths[0])
    assert img.width == 3 * (112 + 4) + 4
    paths = render_units(atlas, subject, source, "conv2", [1], criteria=["mean"], direction=True)
    assert paths[0].name == "direction0001_mean.png"


def test_reopen_needs_a_loadable_model(setup):
    _, source, atlas, _ = setup
    with pytest.raises(Exception, match="wrapped model"):
        reopen(atlas)
    subject, src = reopen(atlas, subject=tiny_subject())
    assert len(src) == len(source)


def test_dissection_round_trip(setup, tmp_path):
    from convscope.dissect import BrodenDataset, dissect, make_synthetic_broden

    subject, _, atlas, _ = setup
    data = BrodenDataset(make_synthetic_broden(tmp_path / "b", n=12, size=32, seg=16))
    d = dissect(subject, data, ["block", "conv2"], batch_size=4)
    # an atlas written by schema 2 gains the tables on the first write
    with sqlite3.connect(atlas.db_path) as con:
        con.execute("DROP TABLE IF EXISTS dissections")
        con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    atlas.write_dissection(d, "synthetic")
    again = Atlas.open(atlas.path).dissection()
    assert again.concepts == d.concepts and again.categories == d.categories
    for name in ("block", "conv2"):
        a, b = again.layers[name], d.layers[name]
        assert np.allclose(a.iou, b.iou, atol=1e-6) and np.allclose(a.thresholds, b.thresholds)
        assert (a.top_images == b.top_images).all() and np.allclose(a.coverage, b.coverage)
        assert [lab.name for lab in again.labels(name)] == [lab.name for lab in d.labels(name)]
    rows = atlas.unit_labels("conv2")
    assert len(rows) == d.layers["conv2"].units and rows[0]["name"] == d.label("conv2", 0).name
    assert atlas.concept_sets() == ["synthetic"]
    with pytest.raises(UserInputError, match="auto-color"):
        atlas.dissection("auto-color")
    with sqlite3.connect(atlas.db_path) as con:
        assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("9",)


def test_for_model_refuses_another_model(setup, tmp_path):
    _, _, atlas, _ = setup
    assert Atlas.for_model(atlas.path, atlas.model_spec, {"description": "x"}).path == atlas.path
    with pytest.raises(AtlasConflictError, match="another --out"):
        Atlas.for_model(atlas.path, {"name": "other"}, {"description": "x"})
    fresh = Atlas.for_model(tmp_path / "new", {"name": "m"}, {"description": "concepts"})
    assert fresh.source_spec == {"description": "concepts"}


def test_readers_take_the_layer_vocabulary(setup, tmp_path):
    """An atlas reader takes the verbs' layer specs: aliases (the model's numbering), globs,
    comma lists, the words, callables; an unknown name lists the close scanned ones."""
    subject, source, _, _ = setup
    atlas, _ = scan_to_atlas(subject, source, tmp_path / "a", "conv1,block.conv2,conv2", k=2, batch_size=8)
    assert atlas.select("all-conv") == ["conv1", "block.conv2", "conv2"]
    assert atlas.select("block.*") == ["block.conv2"]
    assert atlas.select(lambda i: i.name.startswith("conv")) == ["conv1", "conv2"]
    alias = next(a for a, n in subject.layers.aliases.items() if n == "block.conv2")
    assert alias != "block.conv2"
    assert atlas.select(alias) == ["block.conv2"]
    assert atlas.layer(alias)["name"] == "block.conv2"
    assert list(atlas.topk(alias, 0).images) == list(atlas.topk("block.conv2", 0).images)
    assert (atlas.stats(alias).max == atlas.stats("block.conv2").max).all()
    with pytest.raises(LayerNotFoundError, match="scanned layer 'blok.conv2'.*block.conv2"):
        atlas.select("blok.conv2")

    # the viewer's reader and pages take the alias too
    from fastapi.testclient import TestClient

    from convscope.atlas.queries import AtlasReader
    from convscope.viewer.app import create_app

    assert AtlasReader(atlas.path).layer(alias)["name"] == "block.conv2"
    client = TestClient(create_app(atlas.path), base_url="http://127.0.0.1")
    assert client.get(f"/layer/{alias}").text == client.get("/layer/block.conv2").text
    api = client.get(f"/api/layer/{alias}")
    assert api.status_code == 200 and api.json() == client.get("/api/layer/block.conv2").json()

    from convscope.atlas.build import unit_top

    # topk by an alias names and files the scanned layer
    assert unit_top(atlas, alias, 0, render=False)["layer"] == "block.conv2"
