"""The viewer's read-only queries (convscope.atlas.queries, once viewer/store.py): pages of units,
top-K as Atlas.topk has it, precise errors for unknown names, one connection per thread, the
reopen after atlas.db is replaced, read-only folders and older schemas."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import types

import numpy as np
import pytest
from PIL import Image

from convscope.atlas import Atlas, scan_to_atlas, schema
from convscope.atlas.queries import SORTS, AtlasReader
from convscope.errors import LayerNotFoundError, NameNotFoundError, UserInputError
from convscope.inputs.sources import open_images
from convscope.testing import tiny_subject


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    from convscope.dissect import BrodenDataset, dissect, make_synthetic_broden

    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(1)
    for i in range(10):
        (root / f"c{i % 2}").mkdir(exist_ok=True)
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(root / f"c{i % 2}/{i}.png")
    subject = tiny_subject()
    source = open_images(root, transform=subject.transform)
    out = tmp_path_factory.mktemp("atlas") / "a"
    atlas, result = scan_to_atlas(
        subject, source, out, ["block", "conv2"], k=3, directions=2, batch_size=5, threshold_sample=5
    )
    broden = BrodenDataset(make_synthetic_broden(tmp_path_factory.mktemp("b"), n=8, size=32, seg=16))
    atlas.write_dissection(dissect(subject, broden, ["block"], batch_size=4), "synthetic")
    rf = types.SimpleNamespace(
        unit=types.SimpleNamespace(layer="block", channel=2),
        size=9.5,
        height=9,
        width=10,
        theoretical=7.0,
        threshold=0.5,
        maps=[0, 1],
        average=np.arange(16, dtype=np.float32).reshape(4, 4),
    )
    atlas.write_empirical_rf(rf, 11, 6)
    return subject, source, atlas, result


def test_pages_and_sorts(made):
    _, _, atlas, result = made
    r = AtlasReader(atlas.path)
    rows, total = r.units("block", page=1, per_page=3)
    assert total == result.channels["block"] and [x["unit"] for x in rows] == [3, 4, 5]
    by_max, _ = r.units("block", per_page=100, sort="max")
    assert [x["max"] for x in by_max] == sorted((x["max"] for x in by_max), reverse=True)
    assert all(x["label"] is not None for x in by_max)  # labelled from the stored dissection
    name = by_max[0]["label"]
    found, n = r.units("block", per_page=100, label=name.upper())
    assert n == len(found) >= 1 and all(name.lower() in x["label"].lower() for x in found)
    assert SORTS == ("unit", "max", "iou", "label")
    with pytest.raises(UserInputError, match="sort by one of"):
        r.units("block", sort="median")


def test_top_k_is_the_atlas_s(made):
    _, _, atlas, _ = made
    r = AtlasReader(atlas.path)
    for direction in (False, True):
        a, b = r.unit_topk("conv2", 1, "mean", direction), atlas.topk("conv2", 1, "mean", direction)
        assert a.images.tolist() == b.images.tolist() and a.names == b.names
        assert np.allclose(a.scores, b.scores) and a.ys.tolist() == b.ys.tolist()
    assert r.criteria("block")[0] == "max" and set(r.criteria("block")) == {"max", "mean", "area"}
    assert list(r.topk("block", 0)[0]) == ["rank", "image", "score", "y", "x", "name"]
    assert np.allclose(r.direction_vector("conv2", 1), atlas.direction("conv2", 1))
    assert r.directions("conv2") == 2


def test_unknown_names_are_precise_errors(made):
    _, _, atlas, _ = made
    r = AtlasReader(atlas.path)
    with pytest.raises(LayerNotFoundError, match="scanned layer 'blok'") as e:
        r.layer("blok")
    assert e.value.close == ["block"] and isinstance(e.value, KeyError)  # the viewer's 404
    with pytest.raises(NameNotFoundError, match="random direction 'conv2:5'; did you mean"):
        r.direction_vector("conv2", 5)
    assert r.unit("block", 999) is None and r.image(999) is None and r.empirical_rf("block", 0) is None


def test_dissections_and_empirical_rfs(made):
    _, _, atlas, _ = made
    r = AtlasReader(atlas.path)
    assert set(r.dissection_summary()["block"]) == {"synthetic"}
    best = r.concepts("block", 0, n=2)
    labels = {x["unit"]: x for x in atlas.unit_labels("block")}
    assert len(best) == 2 and best[0]["concept"] == labels[0]["name"]
    assert best[0]["iou"] >= best[1]["iou"]
    rf = r.empirical_rf("block", 2)
    assert rf["size"] == 9.5 and rf["average"].tolist() == np.arange(16).reshape(4, 4).tolist()
    assert r.empirical_summary() == {"block": {"units": 1, "mean": 9.5}}


def test_reopen_reads_the_stored_specs(made):
    subject, source, atlas, _ = made
    r = AtlasReader(atlas.path)
    again, src = r.reopen(subject)
    assert again is subject and len(src) == len(source) and src.spec == source.spec
    assert r.meta()["model"] == atlas.model_spec and r.meta()["source"] == atlas.source_spec


def test_one_connection_per_thread(made):
    _, _, atlas, _ = made
    r = AtlasReader(atlas.path)
    seen = []
    t = threading.Thread(target=lambda: seen.append(r.con()))
    t.start()
    t.join()
    assert seen[0] is not r.con() and r.con() is r.con()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        r.con().execute("DELETE FROM units")


def test_a_replaced_atlas_is_reopened(made, tmp_path):
    subject, source, atlas, _ = made
    copy = tmp_path / "copy"
    shutil.copytree(atlas.path, copy)
    r = AtlasReader(copy)
    assert [x["name"] for x in r.layers()] == ["block", "conv2"] and not r.refresh()
    scan_to_atlas(subject, source, copy, ["conv2"], k=2, criteria=["max"], overwrite=True)
    assert r.refresh() and r.available()
    assert [x["name"] for x in r.layers()] == ["conv2"] and r.criteria("conv2") == ["max"]


def test_a_read_only_folder_and_an_older_schema(made, tmp_path, monkeypatch):
    _, _, atlas, _ = made
    old = tmp_path / "old"
    shutil.copytree(atlas.path, old)
    with sqlite3.connect(old / "atlas.db") as con:
        for table in ("empirical_rf", "concepts", "dissections", "unit_labels"):
            con.execute(f"DROP TABLE {table}")
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()
    for p in old.rglob("*"):
        os.chmod(p, 0o444)
    os.chmod(old, 0o555)
    if os.geteuid() == 0:  # root writes anyway: let the atlas see the folder as others would
        real = os.access
        monkeypatch.setattr(
            schema.os,
            "access",
            lambda p, mode: False if mode == os.W_OK and str(old) in os.fsdecode(p) else real(p, mode),
        )
    before = sorted(p.name for p in old.iterdir())
    try:
        r = AtlasReader(old)
        rows, total = r.units("block", per_page=2, sort="iou")
        assert total == atlas.layer("block")["channels"] and rows[0]["label"] is None
        assert r.dissection_summary() == {} and r.empirical_summary() == {}
        assert r.concepts("block", 0) == [] and r.empirical_rf("block", 2) is None
        assert r.meta()["schema"] == "1"
        assert sorted(p.name for p in old.iterdir()) == before
    finally:
        os.chmod(old, 0o755)


def test_not_an_atlas(tmp_path):
    with pytest.raises(UserInputError, match="not an atlas"):
        AtlasReader(tmp_path)
    (tmp_path / "atlas.db").write_bytes(b"not sqlite at all, but long enough to be read" * 40)
    with pytest.raises(UserInputError, match="not a convscope atlas"):
        AtlasReader(tmp_path)


def test_the_atlas_itself_reads_the_same(made):
    _, _, atlas, _ = made
    ro = Atlas.open(atlas.path, readonly=True)
    assert AtlasReader(atlas.path).layers() == ro.layers()
