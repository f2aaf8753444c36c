"""Evaluations of attribution methods in the atlas: stored (result, table, plot, index) and read
back, older atlases upgraded, and evaluate_to_atlas seeded, resumable, refusing what it must and
leaving no new atlas behind when it fails."""

from __future__ import annotations

import importlib
import sqlite3

import numpy as np
import pytest
from PIL import Image

from convscope.atlas import Atlas
from convscope.atlas.evaluate_build import evaluate_to_atlas, pick_images
from convscope.atlas.queries import AtlasReader
from convscope.atlas.schema import SCHEMA_VERSION
from convscope.atlas.store import AtlasConflictError
from convscope.attribution.evaluation import Evaluation
from convscope.errors import NameNotFoundError, UserInputError
from convscope.inputs.sources import open_images
from convscope.testing import tiny_subject

METHODS = ["saliency", "gradcam", "edge"]
METRICS = ["pixel_flipping", "average_drop"]

# the module that holds evaluate (convscope.attribution.evaluate is the function)
evaluate_module = importlib.import_module("convscope.attribution.evaluator")


def made(seed: int = 0, methods=("a", "b"), metrics=("m1", "m2"), n: int = 5) -> Evaluation:
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(len(methods), len(metrics), n))
    scores[0, 0, 1] = np.nan
    return Evaluation(
        methods=list(methods),
        metrics=list(metrics),
        images=[f"img{i}" for i in range(n)],
        scores=scores,
        higher_is_better={m: i == 0 for i, m in enumerate(metrics)},
        targets=["class 1"] * n,
        seconds=np.ones((len(methods), len(metrics))),
        model="tiny",
        settings={"seed": seed},
    )


@pytest.fixture()
def atlas(tmp_path):
    return Atlas.create(tmp_path / "atlas", {"name": "tiny"}, {"description": "test images"})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def subject():
    return tiny_subject()


def test_store_and_read_back(atlas):
    ev = made()
    files = atlas.write_evaluation("run-1", ev, {"seed": 0})
    assert set(files) == {"result", "csv", "json", "plot"} and all(p.is_file() for p in files.values())
    assert files["result"].parent == atlas.path / "evaluations" / "run-1"
    again = atlas.evaluation("run-1")
    assert again.methods == ev.methods and np.array_equal(again.scores, ev.scores, equal_nan=True)
    assert files["csv"].read_text() == ev.to_csv()
    (row,) = atlas.evaluations()
    assert (row["name"], row["methods"], row["metrics"], row["images"]) == (
        "run-1",
        ["a", "b"],
        ["m1", "m2"],
        5,
    )
    assert atlas.evaluation_settings("run-1") == {"seed": 0}
    # re-writing replaces it whole: no file of the old one left, no set-aside folders
    atlas.write_evaluation("run-1", made(1, methods=("c",)))
    assert atlas.evaluation("run-1").methods == ["c"] and len(atlas.evaluations()) == 1
    assert sorted(p.name for p in (atlas.path / "evaluations").iterdir()) == ["run-1"]
    with pytest.raises(NameNotFoundError, match="run-1"):
        atlas.evaluation("run-2")


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "x" * 101, "a b", "<b>"])
def test_hostile_names_are_refused(atlas, name):
    with pytest.raises(UserInputError, match="evaluation name"):
        atlas.write_evaluation(name, made())
    assert not (atlas.path / "evaluations").exists()


def test_reader_never_follows_a_symlink(atlas, tmp_path):
    atlas.write_evaluation("e", made())
    secret = tmp_path / "secret.csv"
    secret.write_text("secret")
    path = atlas.evaluation_file("e", "csv")
    path.unlink()
    path.symlink_to(secret)
    reader = AtlasReader(atlas.path)
    assert reader.evaluation_file("e", "csv") is None
    assert reader.evaluation_file("e", "plot") is not None
    assert reader.evaluation_report("e")["table"][0]["metric"] == "m1"
    with pytest.raises(NameNotFoundError):
        reader.evaluation_file("nope", "csv")


def test_an_old_atlas_upgrades(atlas):
    with sqlite3.connect(atlas.db_path) as con:
        con.execute("DROP TABLE evaluations")
        con.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    old = Atlas.open(atlas.path, readonly=True)  # read as it is
    assert old.schema_version == 5 and old.evaluations() == [] and AtlasReader(atlas.path).evaluations() == []
    upgraded = Atlas.open(atlas.path)
    assert upgraded.schema_version == SCHEMA_VERSION
    upgraded.write_evaluation("e", made())
    assert [e["name"] for e in upgraded.evaluations()] == ["e"]


def test_pick_images_is_a_seeded_sample_in_order(folder):
    source = open_images(folder)
    a, b = pick_images(source, 5, 0), pick_images(source, 5, 0)
    names = [r.name for r in a.records]
    assert names == [r.name for r in b.records] == sorted(names) and len(names) == 5
    assert names != [r.name for r in pick_images(source, 5, 1).records]
    assert pick_images(source, 50, 0) is source


def _run(subject, folder, out, **kw):
    kw.setdefault("n", 6)
    kw.setdefault("chunk", 2)
    return evaluate_to_atlas(subject, folder, out, METHODS, METRICS, **kw)


def test_evaluate_to_atlas_resume_and_overwrite(subject, folder, tmp_path):
    out = tmp_path / "a"
    done = _run(subject, folder, out, name="e1")
    ev = done.evaluation
    assert ev.methods == METHODS and len(ev.images) == 6 and not done.reused
    assert done.atlas.evaluations()[0]["name"] == "e1"
    assert not list(out.glob(".evaluate-*"))  # the checkpoint is gone once stored
    with pytest.raises(AtlasConflictError, match="--resume"):
        _run(subject, folder, out, name="e1")
    again = _run(subject, folder, out, name="e1", resume=True)
    assert again.reused and again.evaluation.to_csv() == ev.to_csv()
    with pytest.raises(AtlasConflictError, match=r"seed 0 \(now 3\)"):
        _run(subject, folder, out, name="e1", resume=True, seed=3)
    with pytest.raises(AtlasConflictError, match="chunk"):
        _run(subject, folder, out, name="e1", resume=True, chunk=3)
    with pytest.raises(AtlasConflictError, match=r"the image sample \(drawn with --seed") as e:
        _run(subject, folder, out, name="e1", resume=True, seed=3)
    assert "images '" not in str(e.value)  # no SHA-1 prefixes
    with pytest.raises(AtlasConflictError, match=rf"methods {', '.join(METHODS)} \(now {METHODS[0]}\)"):
        evaluate_to_atlas(subject, folder, out, METHODS[:1], METRICS, n=6, chunk=2, name="e1", resume=True)
    replaced = _run(subject, folder, out, name="e1", overwrite=True, n=4)
    assert not replaced.reused and len(Atlas.open(out).evaluation("e1").images) == 4


class Killed(KeyboardInterrupt):
    pass


def test_a_killed_run_resumes_to_the_same_table(subject, folder, tmp_path):
    whole = _run(subject, folder, tmp_path / "whole").evaluation
    out = tmp_path / "killed"
    seen = []

    def kill(done, total):
        seen.append(done)
        if done >= 2 * len(METHODS) + 1:  # the first chunk (2 images) is checkpointed, then killed
            raise Killed

    with pytest.raises(Killed):
        _run(subject, folder, out, progress=kill)
    assert (out / ".evaluate-default.ckpt").is_file() and (out / "atlas.db").is_file()  # kept for resume
    with pytest.raises(AtlasConflictError, match="interrupted"):
        _run(subject, folder, out)
    with pytest.raises(AtlasConflictError, match="metrics"):
        evaluate_to_atlas(subject, folder, out, METHODS, ["average_drop"], n=6, chunk=2, resume=True)
    assert (out / ".evaluate-default.ckpt").is_file()  # a refused resume loses nothing
    starts = []
    resumed = _run(subject, folder, out, resume=True, progress=lambda d, t: starts.append(d))
    assert starts[0] == 2 * len(METHODS)  # went on from the checkpoint
    assert np.array_equal(resumed.evaluation.scores, whole.scores, equal_nan=True)
    drop_seconds = lambda text: [row.rsplit(",", 1)[0] for row in text.splitlines()]  # noqa: E731
    assert drop_seconds(resumed.evaluation.to_csv()) == drop_seconds(whole.to_csv())


def test_failures_leave_no_new_atlas(subject, folder, tmp_path, monkeypatch):
    out = tmp_path / "new"
    with pytest.raises(NameNotFoundError):
        evaluate_to_atlas(subject, folder, out, ["saliency", "nope"], METRICS)
    with pytest.raises(NameNotFoundError):
        evaluate_to_atlas(subject, folder, out, METHODS, ["road", "nope"])
    with pytest.raises(UserInputError, match="name"):
        evaluate_to_atlas(subject, folder, out, METHODS, METRICS, name="../x")
    assert not out.exists()

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(evaluate_module, "evaluate", broken)
    with pytest.raises(RuntimeError, match="boom"):
        evaluate_to_atlas(subject, folder, out, METHODS, METRICS)
    assert not out.exists()
    # in an existing atlas a failure that is not the user's keeps the atlas as it was
    existing = tmp_path / "existing"
    Atlas.create(existing, {"name": "tiny"}, {"description": "x"})
    with pytest.raises(RuntimeError):
        evaluate_to_atlas(subject, folder, existing, METHODS, METRICS)
    assert Atlas.open(existing).evaluations() == []
    assert sorted(p.name for p in existing.iterdir() if not p.name.startswith("atlas.db-")) == ["atlas.db"]


def test_the_build_resumes_by_the_evaluations_own_fingerprint(subject, folder, tmp_path):
    # one guard: the atlas stores the fingerprint evaluate checks its checkpoint against (plus the
    # data it came from), not settings hashed its own way
    done = _run(subject, folder, tmp_path / "a", name="e1")
    stored = done.atlas.evaluation_settings("e1")
    assert {k: v for k, v in stored.items() if k != "data"} == done.evaluation.settings["fingerprint"]
    assert stored["data"] and stored["device"] == "cpu" and "preprocess" in stored
