"""concepts_to_atlas: a concept set fitted, scanned, weighed, labelled and drawn into an atlas."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from convscope.atlas import Atlas
from convscope.atlas.concepts_build import checkpoint_path, concepts_to_atlas
from convscope.atlas.dictionaries import default_name
from convscope.atlas.store import AtlasConflictError
from convscope.dissect import BrodenDataset, make_synthetic_broden
from convscope.errors import LayerNotFoundError, UserInputError
from convscope.inputs.sources import open_images
from tests.concepts.conftest import LAYER, folder, subject  # noqa: F401 (fixtures)

FAST = {"visualize": {"steps": 2, "size": 32, "batch": 3}, "workers": 0, "batch_size": 4}


@pytest.fixture(scope="module")
def broden(tmp_path_factory):
    root = make_synthetic_broden(tmp_path_factory.mktemp("broden"), n=8, size=32, seg=16, seed=0)
    return BrodenDataset(root)


@pytest.fixture(scope="module")
def built(subject, folder, broden, tmp_path_factory):  # noqa: F811
    notes = []
    out = tmp_path_factory.mktemp("atlas") / "a"
    done = concepts_to_atlas(
        out,
        subject,
        folder,
        LAYER,
        n=4,
        k=3,
        concept_data=(broden, "synthetic"),
        progress=lambda done, total, note=None: notes.append(note),
        **FAST,
    )
    return done, notes


def test_everything_is_stored(built, subject, folder):  # noqa: F811
    done, _ = built
    atlas = Atlas.open(done.atlas.path, readonly=True)
    assert done.name == "nmf4-block"
    (row,) = atlas.dictionaries()
    assert (row["name"], row["layer"], row["method"], row["n"]) == ("nmf4-block", LAYER, "nmf", 4)
    assert row["scanned"] and row["importance"] and row["labels"]
    assert torch.equal(atlas.dictionary(done.name).dictionary, done.concepts.dictionary)
    imp = atlas.dictionary_importance(done.name)
    assert imp["matrix"].shape == (len(imp["classes"]), 4) and imp["counts"].sum() == 12
    assert [lab["concept"] for lab in atlas.dictionary_labels(done.name)] == [0, 1, 2, 3]
    assert {lab["dataset"] for lab in atlas.dictionary_labels(done.name)} == {"synthetic"}
    assert done.pictures == 4
    for i in range(4):
        picture = Image.open(atlas.dictionary_picture(done.name, i))
        assert picture.size == (32, 32)
    assert not list(atlas.path.glob(".concepts-*"))  # the checkpoints go once their results are stored


def test_the_stored_top_images_are_the_brute_force_ones(built, subject, folder):  # noqa: F811
    done, _ = built
    atlas = Atlas.open(done.atlas.path, readonly=True)
    source = open_images(folder, transform=subject.transform)
    x = torch.stack([source[i][0] for i in range(len(source))])
    best = done.concepts.heatmaps(subject, x).amax(dim=(2, 3))  # (images, concepts)
    for c in range(4):
        top = atlas.dictionary_topk(done.name, c)
        assert len(top) == 3
        assert list(top.images) == best[:, c].argsort(descending=True)[:3].tolist()
        assert top.scores[0] == pytest.approx(float(best[:, c].max()), rel=1e-4)


def test_progress_names_every_stage_in_order(built):
    _, notes = built
    stages = list(dict.fromkeys(n.split(":")[0] for n in notes))
    assert stages == ["collecting", "fitting", "scanning", "importance", "labels", "pictures"]


def test_a_second_run_is_refused_resumed_or_replaces(built, subject, folder):  # noqa: F811
    done, _ = built
    out = done.atlas.path
    stored = Atlas.open(out, readonly=True).dictionary(done.name).dictionary
    with pytest.raises(AtlasConflictError, match="--resume"):
        concepts_to_atlas(out, subject, folder, LAYER, n=4, **FAST)
    again = concepts_to_atlas(
        out, subject, folder, LAYER, n=4, k=3, resume=True, **{**FAST, "visualize": False}
    )
    assert again.reused == ["dictionary", "scan"] and again.scan is None
    assert torch.equal(again.concepts.dictionary, stored)
    with pytest.raises(AtlasConflictError, match="4 nmf concepts of block, not 3"):
        concepts_to_atlas(out, subject, folder, LAYER, n=3, name=done.name, resume=True, **FAST)
    other = concepts_to_atlas(
        out,
        subject,
        folder,
        LAYER,
        n=3,
        name=done.name,
        overwrite=True,
        seed=1,
        **{**FAST, "visualize": False},
    )
    atlas = Atlas.open(out, readonly=True)
    (row,) = atlas.dictionaries()
    assert row["n"] == 3 and other.reused == [] and row["scanned"]
    assert not row["labels"] and not atlas.dictionary_picture(done.name, 0).exists()  # all replaced


def test_unknown_layer_and_bad_input_fail_before_anything_is_written(subject, folder, tmp_path):  # noqa: F811
    out = tmp_path / "a"
    with pytest.raises(LayerNotFoundError, match="block"):
        concepts_to_atlas(out, subject, folder, "blok", **FAST)
    with pytest.raises(UserInputError, match="one layer"):
        concepts_to_atlas(out, subject, folder, "block,conv2", **FAST)
    with pytest.raises(UserInputError, match="nmf"):
        concepts_to_atlas(out, subject, folder, LAYER, method="nfm", **FAST)
    with pytest.raises(UserInputError, match="not a Broden directory"):
        concepts_to_atlas(out, subject, folder, LAYER, concept_data=str(tmp_path / "none"), **FAST)
    assert not out.exists()


def test_default_names_are_valid_dictionary_names():
    assert default_name("layer1.0.relu#1", "sae-topk", 64) == "sae-topk64-layer1.0.relu@1"
    assert default_name("blocks/3", "nmf", 8) == "nmf8-blocks_3"
    assert checkpoint_path(Atlas("x"), "nmf8-bn2", "fit").name.startswith(".")


class Stop(Exception):
    pass


@pytest.mark.parametrize("stage", ["collecting", "scanning"])
def test_an_interrupted_run_resumes_to_the_same_result(built, subject, folder, tmp_path, stage):  # noqa: F811
    done, _ = built
    out = tmp_path / "a"

    def stop(n, total, note=None):
        if note.startswith(stage) and n >= 8:  # after the scan's calibration sample
            raise Stop

    options = {**FAST, "visualize": False, "checkpoint_every": 0.0, "scan_options": {"threshold_sample": 4}}
    with pytest.raises(Stop):
        concepts_to_atlas(out, subject, folder, LAYER, n=4, k=3, progress=stop, **options)
    assert checkpoint_path(Atlas(out), done.name, "fit" if stage == "collecting" else "scan").exists()
    seen = []
    again = concepts_to_atlas(
        out,
        subject,
        folder,
        LAYER,
        n=4,
        k=3,
        resume=True,
        progress=lambda n, t, note=None: seen.append((note, n)),
        **options,
    )
    assert again.reused == ([] if stage == "collecting" else ["dictionary"])
    counts = [n for note, n in seen if note.startswith(stage) and n]
    assert counts[0] > 4, counts  # continued from the checkpoint, not from the first batch
    assert torch.equal(again.concepts.dictionary, done.concepts.dictionary)
    atlas = Atlas.open(out, readonly=True)
    for c in range(4):
        # the first run's own scan (its atlas was replaced by the test above)
        assert list(atlas.dictionary_topk(done.name, c).images) == list(done.scan.topk(LAYER, c).images)
    assert not list(out.glob(".concepts-*"))


def test_the_unit_writers_refuse_a_basis(subject, folder, tmp_path):  # noqa: F811
    from convscope.atlas import dissect_to_atlas, scan_to_atlas
    from convscope.concepts import fit_dictionary

    cs = fit_dictionary(torch.rand(40, 8), "pca", 3, layer=LAYER)
    src = open_images(folder, transform=subject.transform)
    with pytest.raises(UserInputError, match="concepts_to_atlas"):
        scan_to_atlas(subject, src, tmp_path / "a", LAYER, bases={LAYER: cs.basis()})
    with pytest.raises(UserInputError, match="concepts_to_atlas"):
        dissect_to_atlas(subject, "auto-color", tmp_path / "a", LAYER, bases={LAYER: cs.basis()})
    assert not (tmp_path / "a").exists()


def test_a_refused_fit_leaves_no_atlas_and_an_existing_one_as_it_was(subject, folder, tmp_path):  # noqa: F811
    """NMF refuses a layer with negative activations after the collection: the new atlas (and
    its folder) is gone again; in an empty folder the folder stays empty; an existing atlas is
    left with exactly the files it had."""
    out = tmp_path / "a"
    with pytest.raises(UserInputError, match="non-negative"):
        concepts_to_atlas(out, subject, folder, "conv1", n=3, **FAST)
    assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserInputError, match="non-negative"):
        concepts_to_atlas(empty, subject, folder, "conv1", n=3, **FAST)
    assert list(empty.iterdir()) == []
    have = tmp_path / "have"
    concepts_to_atlas(have, subject, folder, LAYER, n=3, **{**FAST, "visualize": False})
    files = sorted(p.relative_to(have) for p in have.rglob("*"))
    with pytest.raises(UserInputError, match="non-negative"):
        concepts_to_atlas(have, subject, folder, "conv1", n=3, **FAST)
    assert sorted(p.relative_to(have) for p in have.rglob("*")) == files
    assert [d["layer"] for d in Atlas.open(have, readonly=True).dictionaries()] == [LAYER]


def test_a_resume_with_other_settings_is_refused(subject, folder, tmp_path):  # noqa: F811
    """The build settings are stored with the set; a --resume that asks for another seed, k,
    per_image, max_samples, method option or scan option is refused, naming them; --overwrite
    replaces."""
    out = tmp_path / "a"
    fast = {**FAST, "visualize": False}
    first = concepts_to_atlas(out, subject, folder, LAYER, n=3, k=2, per_image=4, **fast)
    stored = Atlas.open(out, readonly=True).dictionary_settings(first.name)
    assert stored["k"] == 2 and stored["seed"] == 0 and stored["per_image"] == 4
    with pytest.raises(AtlasConflictError, match=r"k 2 \(now 5\).*per_image 4 \(now 2\).*seed 0 \(now 7\)"):
        concepts_to_atlas(out, subject, folder, LAYER, n=3, k=5, seed=7, per_image=2, resume=True, **fast)
    with pytest.raises(AtlasConflictError, match="max_iter"):
        concepts_to_atlas(out, subject, folder, LAYER, n=3, k=2, per_image=4, max_iter=5, resume=True, **fast)
    with pytest.raises(AtlasConflictError, match="scan_options"):
        concepts_to_atlas(
            out, subject, folder, LAYER, n=3, k=2, per_image=4, resume=True,
            scan_options={"criteria": ("mean",)}, **fast,
        )  # fmt: skip
    again = concepts_to_atlas(out, subject, folder, LAYER, n=3, k=2, per_image=4, resume=True, **fast)
    assert again.reused == ["dictionary", "scan"]
    concepts_to_atlas(out, subject, folder, LAYER, n=3, k=5, per_image=2, overwrite=True, **fast)
    assert Atlas.open(out, readonly=True).dictionary_settings(first.name)["k"] == 5
