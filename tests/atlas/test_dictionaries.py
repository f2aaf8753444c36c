"""Learned concept sets ("dictionaries") in the atlas: every piece round-trips, a name is
replaced whole, an older atlas upgrades, a read-only atlas refuses to write."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.atlas import Atlas, AtlasReadOnlyError
from convscope.atlas.dictionaries import check_name, default_name
from convscope.atlas.schema import SCHEMA_VERSION
from convscope.concepts import collect_activations, fit_dictionary, scan_concepts
from convscope.dissect.result import UnitLabel
from convscope.errors import NameNotFoundError, UserInputError
from convscope.testing import tiny_subject

LAYER = "block"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dict-images")
    rng = np.random.default_rng(0)
    for i in range(10):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        pixels[: 4 * (i % 8)] //= 3
        Image.fromarray(pixels).save(folder / f"im{i:02d}.png")
    subject = tiny_subject(size=32)
    acts = collect_activations(subject, folder, LAYER, per_image=16, max_samples=120, seed=0, workers=0)
    nmf = fit_dictionary(acts.x, "nmf", 4, layer=LAYER, seed=0)
    pca = fit_dictionary(acts.x, "pca", 3, layer=LAYER, seed=0)
    scan = scan_concepts(subject, folder, nmf, k=3, batch_size=5, workers=0, threshold_sample=500)
    return subject, folder, acts, nmf, pca, scan


@dataclass
class Importance:  # the contract's attributes of a ConceptImportance
    matrix: torch.Tensor
    classes: list
    counts: torch.Tensor
    method: str = "gradient-x-activation"


class Labels:  # a Dissection's surface that the atlas reads: .layers and .labels(layer)
    def __init__(self, layer, n):
        self.layers = {layer: None}
        self._labels = [
            UnitLabel(layer, u, 10 + u, f"concept{u}", "color", 0.1 * u, u % 2 == 1, 0.05) for u in range(n)
        ]

    def labels(self, layer):
        return self._labels


def fresh(tmp_path) -> Atlas:
    return Atlas.create(tmp_path / "atlas", {"name": "tiny"}, {"description": "ten images"})


def test_every_piece_round_trips(made, tmp_path):
    subject, folder, acts, nmf, pca, scan = made
    atlas = fresh(tmp_path)
    atlas.write_dictionary("block-nmf-4", nmf)
    atlas.write_dictionary("block-pca-3", pca)
    atlas.write_dictionary_scan("block-nmf-4", scan)
    imp = Importance(
        torch.arange(12, dtype=torch.float32).reshape(3, 4) - 5, ["a", "b", "c"], torch.tensor([4, 3, 3])
    )
    atlas.write_dictionary_importance("block-nmf-4", imp)
    atlas.write_dictionary_labels("block-nmf-4", Labels(LAYER, 4), "synthetic")
    picture = Image.new("RGB", (20, 10), (200, 30, 40))
    path = atlas.write_dictionary_picture("block-nmf-4", 2, picture)

    again = Atlas.open(atlas.path, readonly=True)
    rows = again.dictionaries()
    assert [r["name"] for r in rows] == ["block-nmf-4", "block-pca-3"]
    first = rows[0]
    assert (first["layer"], first["method"], first["n"], first["channels"]) == (LAYER, "nmf", 4, 8)
    assert first["error"] == pytest.approx(nmf.error) and first["sparsity"] == pytest.approx(nmf.sparsity)
    assert (first["dead"], first["samples"]) == (nmf.dead, nmf.samples)
    assert first["scanned"] and first["importance"] and first["labels"]
    assert not (rows[1]["scanned"] or rows[1]["importance"] or rows[1]["labels"])

    for name, cs in (("block-nmf-4", nmf), ("block-pca-3", pca)):
        back = again.dictionary(name)
        assert (back.layer, back.method, back.n) == (cs.layer, cs.method, cs.n)
        assert torch.equal(back.dictionary, cs.dictionary)
        assert torch.allclose(back.encode(acts.x[:40]), cs.encode(acts.x[:40]), atol=1e-6)

    for crit in scan.criteria:
        for c in range(4):
            a, b = again.dictionary_topk("block-nmf-4", c, crit), scan.topk(LAYER, c, crit)
            assert len(a) > 0 and a.images.tolist() == b.images.tolist() and a.names == b.names
            assert np.allclose(a.scores, b.scores) and a.ys.tolist() == b.ys.tolist()
            assert a.xs.tolist() == b.xs.tolist() and (a.layer, a.unit, a.criterion) == (LAYER, c, crit)
    stats = again.dictionary_stats("block-nmf-4")
    assert np.allclose([s["max"] for s in stats], scan.stats(LAYER).max)

    got = again.dictionary_importance("block-nmf-4")
    assert got["classes"] == ["a", "b", "c"] and got["counts"].tolist() == [4, 3, 3]
    assert np.array_equal(got["matrix"], imp.matrix.numpy()) and got["method"] == imp.method
    assert again.dictionary_importance("block-pca-3") is None

    labels = again.dictionary_labels("block-nmf-4")
    assert [lab["label"] for lab in labels] == [f"concept{u}" for u in range(4)]
    assert [lab["detector"] for lab in labels] == [False, True, False, True]
    assert labels[3]["iou"] == pytest.approx(0.3) and labels[0]["dataset"] == "synthetic"

    assert path == again.dictionary_picture("block-nmf-4", 2) and path.is_file()
    assert Image.open(path).getpixel((3, 3)) == (200, 30, 40)


def test_rewriting_a_name_drops_what_was_stored_for_it(made, tmp_path):
    _, _, _, nmf, pca, scan = made
    atlas = fresh(tmp_path)
    atlas.write_dictionary("d", nmf)
    atlas.write_dictionary_scan("d", scan)
    atlas.write_dictionary_importance("d", Importance(torch.ones(2, 4), ["a", "b"], torch.tensor([1, 1])))
    atlas.write_dictionary_labels("d", Labels(LAYER, 4), "synthetic")
    atlas.write_dictionary_picture("d", 3, Image.new("RGB", (4, 4)))
    atlas.write_dictionary("keep", nmf)
    atlas.write_dictionary_scan("keep", scan)
    atlas.write_dictionary("d", pca)
    (row,) = [r for r in atlas.dictionaries() if r["name"] == "d"]
    assert (row["method"], row["n"], row["scanned"], row["importance"], row["labels"]) == (
        "pca",
        3,
        False,
        False,
        False,
    )
    assert atlas.dictionary_labels("d") == [] and atlas.dictionary_stats("d") == []
    assert not atlas.dictionary_picture("d", 3).exists()
    with pytest.raises(UserInputError, match="no concept scan"):
        atlas.dictionary_topk("d", 0)
    with sqlite3.connect(atlas.db_path) as con:
        assert con.execute("SELECT COUNT(*) FROM dictionary_topk WHERE name = 'd'").fetchone() == (0,)
    # the other dictionary is untouched
    assert len(atlas.dictionary_topk("keep", 1)) == len(scan.topk(LAYER, 1))


def test_bad_names_and_mismatches(made, tmp_path):
    _, _, _, nmf, pca, scan = made
    atlas = fresh(tmp_path)
    for bad in ("", "..", "../x", "a/b", ".hidden", "a b", "x" * 101, "a\0b"):
        with pytest.raises(UserInputError, match="dictionary name"):
            atlas.write_dictionary(bad, nmf)
    assert atlas.dictionaries() == []
    assert check_name(default_name("blocks.0#tokens", "sae-topk", 32)) == "sae-topk32-blocks.0@tokens"
    assert default_name("features/3 x", "nmf", 8) == "nmf8-features_3_x"
    atlas.write_dictionary("pca", pca)
    with pytest.raises(UserInputError, match="3 concepts"):
        atlas.write_dictionary_scan("pca", scan)  # a scan of the 4-concept set
    with pytest.raises(NameNotFoundError, match="did you mean pca"):
        atlas.dictionary("pcb")
    with pytest.raises(NameNotFoundError):
        atlas.write_dictionary_scan("nope", scan)
    with pytest.raises(UserInputError, match=r"no concept 3 \(0..2\)"):
        atlas.write_dictionary_picture("pca", 3, Image.new("RGB", (4, 4)))
    with pytest.raises(UserInputError, match=r"\(3 classes, 3 concepts\)"):
        atlas.write_dictionary_importance("pca", Importance(torch.ones(3, 4), ["a", "b", "c"], torch.ones(3)))
    with pytest.raises(UserInputError, match="3 concepts"):
        atlas.write_dictionary_labels("pca", Labels(LAYER, 4), "synthetic")
    atlas.write_dictionary("nmf", nmf)
    atlas.write_dictionary_scan("nmf", scan)
    with pytest.raises(UserInputError, match="criterion 'bogus'"):
        atlas.dictionary_topk("nmf", 0, "bogus")
    with pytest.raises(UserInputError, match="no concept -1"):
        atlas.dictionary_topk("nmf", -1)


def test_only_a_scan_of_the_stored_set_is_its_concept_scan(made, tmp_path):
    """A scan of the right width is not enough: a plain unit scan, or the scan of another set
    with as many concepts, is refused (the basis fingerprint in the scan's config)."""
    subject, folder, acts, nmf, _, scan = made
    from convscope.concepts.activations import as_source
    from convscope.scan.scanner import scan as scan_units

    atlas = fresh(tmp_path)
    units = scan_units(subject, as_source(subject, folder), [LAYER], k=3, workers=0, threshold_sample=100)
    assert units.channels[LAYER] == 8
    eight = fit_dictionary(acts.x, "nmf", 8, layer=LAYER, seed=0)
    atlas.write_dictionary("eight", eight)
    with pytest.raises(UserInputError, match="a scan of its units"):
        atlas.write_dictionary_scan("eight", units)
    other = fit_dictionary(acts.x, "pca", 4, layer=LAYER, seed=0)
    atlas.write_dictionary("other", other)
    with pytest.raises(UserInputError, match="another basis"):
        atlas.write_dictionary_scan("other", scan)  # the scan of `nmf`, also 4 concepts
    assert atlas.dictionaries()[1]["scanned"] is False
    atlas.write_dictionary("nmf", nmf)
    atlas.write_dictionary_scan("nmf", scan)  # its own scan is taken


def test_an_old_atlas_upgrades(made, tmp_path):
    _, _, _, nmf, _, scan = made
    atlas = fresh(tmp_path)
    with sqlite3.connect(atlas.db_path) as con:
        for table in ("dictionaries", "dictionary_scans", "dictionary_units", "dictionary_topk",
                      "dictionary_importance", "dictionary_labels"):  # fmt: skip
            con.execute(f"DROP TABLE {table}")
        con.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    old = Atlas.open(atlas.path, readonly=True)  # read as it is: no tables, no dictionaries
    assert old.schema_version == 4 and old.dictionaries() == []
    with pytest.raises(NameNotFoundError):
        old.dictionary("x")
    upgraded = Atlas.open(atlas.path)
    assert upgraded.schema_version == SCHEMA_VERSION == 9
    upgraded.write_dictionary("x", nmf)
    upgraded.write_dictionary_scan("x", scan)
    assert len(upgraded.dictionary_topk("x", 0)) == len(scan.topk(LAYER, 0))


def test_readonly_refuses_every_write(made, tmp_path):
    _, _, _, nmf, _, scan = made
    fresh(tmp_path).write_dictionary("x", nmf)
    ro = Atlas.open(tmp_path / "atlas", readonly=True)
    imp = Importance(torch.ones(1, 4), ["a"], torch.ones(1))
    for write in (
        lambda: ro.write_dictionary("x", nmf),
        lambda: ro.write_dictionary_scan("x", scan),
        lambda: ro.write_dictionary_importance("x", imp),
        lambda: ro.write_dictionary_labels("x", Labels(LAYER, 4), "s"),
        lambda: ro.write_dictionary_picture("x", 0, Image.new("RGB", (4, 4))),
    ):
        with pytest.raises(AtlasReadOnlyError, match="read-only"):
            write()
    assert [r["scanned"] for r in ro.dictionaries()] == [False]
    assert not ro.dictionary_picture("x", 0).exists()
