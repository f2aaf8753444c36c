"""The atlas folder layout, spelled in one place (convscope.atlas.paths)."""

from __future__ import annotations

from pathlib import Path

from convscope.atlas import Atlas, AtlasPaths, is_private_file


def test_every_file_of_the_layout(tmp_path):
    p = AtlasPaths(tmp_path)
    r = tmp_path / "render"
    assert p.db_path == tmp_path / "atlas.db" and p.lock_path == tmp_path / "atlas.lock"
    assert p.checkpoint_path == tmp_path / "scan.ckpt"
    assert p.shards_dir() == tmp_path / "ray_shards"
    assert p.shards_dir("dissect") == tmp_path / "ray_dissect_shards"
    assert p.features_dir("gap") == tmp_path / "features" / "gap"
    assert p.unit_render("blocks.2", 1) == r / "blocks.2" / "unit0001_max.png"
    assert p.unit_render("fc", 3, "mean", direction=True) == r / "fc" / "direction0003_mean.png"
    assert p.empirical_rf_render("blocks.2", 1) == r / "blocks.2" / "unit0001_rf.png"
    assert p.stimuli_render("blocks.2", 0) == r / "blocks.2" / "unit0000_stimuli.png"
    assert p.rf_sizes(".json") == r / "rf_sizes.json"
    d = r / "dissect" / "synthetic"
    assert p.dissection_dir("synthetic") == d
    assert p.dissection_file("synthetic", "layers.png") == d / "layers.png"
    assert p.dissection_layer_file("synthetic", "blocks/1#cls", "units.csv") == d / "blocks_1@cls_units.csv"
    assert p.dissection_unit_render("synthetic", "a/b", 7) == d / "a_b" / "unit0007.png"
    assert p.neighbors_render("l4", "cat/01.jpg") == r / "neighbors" / "l4" / "cat_01.jpg.png"
    assert p.probe_render("gap", "logistic") == r / "probe" / "probe_gap_logistic.png"
    assert p.projection_render("l4", "tsne", thumbnails=True) == r / "project" / "l4" / "tsne_thumbnails.png"
    assert p.comparison_render("cka") == r / "compare" / "cka.png"
    assert p.comparison_render("cka", "other") == r / "compare" / "cka_other.png"


def test_the_atlas_has_the_helpers_without_a_database(tmp_path):
    atlas = Atlas(tmp_path / "nothing-yet")
    assert atlas.features_dir("mac") == Path(tmp_path / "nothing-yet" / "features" / "mac")
    assert not (tmp_path / "nothing-yet").exists()


def test_private_files_follow_the_layout(tmp_path):
    p = AtlasPaths(tmp_path)
    for f in (p.db_path, p.lock_path, p.checkpoint_path, tmp_path / "atlas.db-wal"):
        assert is_private_file(f.name)
    assert not is_private_file(p.unit_render("x", 0).name)


def test_a_name_cannot_place_a_file_outside_the_atlas(tmp_path):
    import pytest

    from convscope.atlas.paths import AtlasPaths
    from convscope.errors import UserInputError

    a = AtlasPaths(tmp_path / "atlas")
    hostile = [
        lambda: a.dissection_dir("../../tmp"),
        lambda: a.unit_render("../x", 1),
        lambda: a.empirical_rf_render("..", 1),
        lambda: a.features_dir("a/b"),
        lambda: a.comparison_render("cka", "../../y"),
        lambda: a.dissection_unit_render("set", "..", 1),
        lambda: a.neighbors_render("a\\b", "q"),
        lambda: a.projection_render("x\0", "pca"),
    ]
    for make in hostile:
        with pytest.raises(UserInputError, match="cannot name a file in the atlas"):
            make()
    # real layer names of every kind still work
    assert a.unit_render("layer1.0.relu#1", 3).parent.name == "layer1.0.relu#1"
    assert a.dissection_unit_render("set", "blocks.0/x", 1).parent.name == "blocks.0_x"
