"""microscope_to_atlas: every stage run and recorded in the atlas's stages table, a killed run
resumed to the same atlas as an uninterrupted one, a stage re-run alone, failures recorded, the
plan measured without writing anything."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from PIL import Image

from convscope.atlas import Atlas
from convscope.atlas.microscope_build import (
    STAGES,
    MicroscopeStageError,
    microscope_to_atlas,
    rf_grid,
    rf_units,
)
from convscope.atlas.store import AtlasConflictError
from convscope.errors import UserInputError
from convscope.testing import tiny_subject

FAST = {
    "scan": {"k": 3, "batch_size": 4, "threshold_sample": 8, "directions": 2, "workers": 0},
    "visuals": {"steps": 3, "size": 32, "batch": 4},  # 2 units (2 images each) a stored batch
    "dissect": {"batch_size": 4, "workers": 0, "units": 1},
    "rf": {"units": 2, "top": 2, "stride": 16},
    "concepts": {"k": 3, "visualize": {"steps": 2, "size": 32, "batch": 4}, "workers": 0, "batch_size": 4},
    "activation_atlas": {
        "grid": 3, "steps": 2, "size": 32, "layout": "pca", "max_samples": 40, "samples_per_image": 4,
        "min_count": 1, "workers": 0, "batch_size": 4,
    },
}  # fmt: skip
NO_CONCEPTS = [s for s in STAGES if s != "concepts"]
# what an atlas holds, stage by stage (the stages table's times differ from run to run)
TABLES = {
    "scan": ["units", "topk", "directions"],
    "visuals": ["visuals"],
    "dissect": ["dissections", "unit_labels"],
    "rf": ["empirical_rf"],
    "concepts": ["dictionaries"],
    "activation_atlas": ["activation_atlas_cells"],
}


@pytest.fixture(scope="module")
def subject():
    return tiny_subject(size=32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("microscope-images")
    rng = np.random.default_rng(0)
    for i in range(10):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        pixels[: 4 * (i % 8)] //= 3
        Image.fromarray(pixels).save(out / f"im{i:02d}.png")
    return out


def build(subject, folder, out, **kw):
    kw.setdefault("stages", NO_CONCEPTS)
    return microscope_to_atlas(subject, folder, out, layers="conv2", units=4, options=FAST, **kw)


def contents(out) -> dict:
    """Every stored row of the stages' tables (the scan's ``runs`` row holds times) and the bytes
    of every picture."""
    con = sqlite3.connect(out / "atlas.db")
    rows = {
        t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
        for ts in TABLES.values()
        for t in ts
    }
    con.close()
    rows.pop("dictionaries")  # holds its creation time
    rows["dissections"] = [r[:10] + r[11:] for r in rows["dissections"]]  # without its finishing time
    pictures = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}
    pictures = {k: v for k, v in pictures.items() if not k.startswith("render/dissect")}  # report figures
    return {"rows": rows, "pictures": pictures}


@pytest.fixture(scope="module")
def whole(subject, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "a"
    notes = []
    built = build(subject, folder, out, progress=lambda d, t, note=None: notes.append(note))
    return out, built, notes


def test_every_stage_runs_and_is_recorded(whole):
    out, built, notes = whole
    assert built.ran == NO_CONCEPTS
    rows = {r["name"]: r for r in Atlas.open(out, readonly=True).stages()}
    assert list(rows) == NO_CONCEPTS
    for name, row in rows.items():
        assert row["status"] == "done" and row["error"] is None, name
        assert row["seconds"] >= 0 and row["finished"] >= row["started"]
        assert row["settings"]["layers"] == ["conv2"]
    assert rows["visuals"]["settings"]["units"] == 4 and rows["scan"]["settings"]["k"] == 3
    for stage in NO_CONCEPTS:  # each stage's bar starts with (0, 0, stage)
        assert stage in notes
    assert "visuals: conv2" in notes and "rf: conv2" in notes  # the layer being worked on
    atlas = Atlas.open(out, readonly=True)
    assert atlas.visual_units("conv2") == {0, 1, 2, 3}
    assert {r["unit"] for r in atlas.empirical_rfs("conv2")} == set(rf_units(16, 2, 0, "conv2"))
    # FAST's stride 16 kept, the patch "auto": conv2 of the 32 px model sees 31 px -> 11 px
    assert {(r["occluder"], r["stride"]) for r in atlas.empirical_rfs("conv2")} == {(11, 16)}
    assert (
        len(atlas.topk("conv2", 0, "area")) == 3 and len(atlas.topk("conv2", 1, "max", direction=True)) == 3
    )
    assert "auto-color" in atlas.concept_sets()
    assert [a["layer"] for a in atlas.activation_atlases()] == ["conv2"]


def test_a_killed_run_resumes_to_the_same_atlas(whole, subject, folder, tmp_path):
    out = tmp_path / "a"

    def kill(done, total, note=None):
        if note == "visuals: conv2" and done > 4:  # inside the second stored batch of the visuals
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(subject, folder, out, progress=kill)
    rows = {r["name"]: r["status"] for r in Atlas.open(out, readonly=True).stages()}
    assert rows["scan"] == "done" and rows["visuals"] == "running" and rows["rf"] == "pending"
    assert len(Atlas.open(out, readonly=True).visual_units("conv2")) == 2
    with pytest.raises(AtlasConflictError, match="--resume"):  # neither resume nor overwrite
        build(subject, folder, out)
    again = build(subject, folder, out, resume=True)
    assert again.ran == NO_CONCEPTS[1:]
    assert [p.action for p in again.plan][:2] == ["skip", "resume"]
    assert contents(out) == contents(whole[0])


def test_a_stage_rerun_alone_replaces_its_output(whole, subject, folder, tmp_path):
    import shutil

    out = tmp_path / "a"
    shutil.copytree(whole[0], out)
    before = {r["name"]: r for r in Atlas.open(out, readonly=True).stages()}
    tile = Atlas(out).visual_tile("conv2", 0, "positive", 0)
    tile.write_bytes(b"stale")
    built = build(subject, folder, out, stages=["visuals"], overwrite=True)
    assert built.ran == ["visuals"]
    after = {r["name"]: r for r in Atlas.open(out, readonly=True).stages()}
    assert after["visuals"]["started"] > before["visuals"]["finished"]
    assert {k: v for k, v in after.items() if k != "visuals"} == {
        k: v for k, v in before.items() if k != "visuals"
    }
    assert contents(out) == contents(whole[0])  # the stale tile made again, the rest untouched
    with pytest.raises(AtlasConflictError, match="steps 3 \\(now 5\\)"):  # a resume with other settings
        microscope_to_atlas(
            subject, folder, out, layers="conv2", units=4, stages=["visuals"], resume=True,
            options={**FAST, "visuals": {**FAST["visuals"], "steps": 5}},
        )  # fmt: skip


def test_a_resume_keeps_the_recorded_defaults_of_an_older_atlas(whole, subject, folder, tmp_path):
    import shutil

    out = tmp_path / "a"
    shutil.copytree(whole[0], out)
    atlas = Atlas(out)
    rf = {r["name"]: r for r in atlas.stages()}["rf"]["settings"]
    # an atlas made when the rf stage's occluder defaulted to 11 px / 3 px
    atlas.write_stage("rf", "running", {**rf, "patch": 11, "fill": "noise"})
    atlas.write_stage("rf", "done")
    built = build(subject, folder, out, resume=True)
    assert [p.action for p in built.plan] == ["skip"] * len(NO_CONCEPTS) and built.ran == []

    def again(options):
        return microscope_to_atlas(
            subject, folder, out, layers="conv2", units=4, stages=NO_CONCEPTS, resume=True, options=options
        )

    # what the caller asks for must still match
    with pytest.raises(AtlasConflictError, match="fill 'noise' \\(now 'gray'\\)"):
        again(options={**FAST, "rf": {**FAST["rf"], "fill": "gray"}})
    # an accel that says the default (fp32, the CPU's layout) records nothing, so it resumes too
    fp32 = {**FAST, "visuals": {**FAST["visuals"], "accel": {"precision": "fp32", "channels_last": False}}}
    assert again(options=fp32).ran == []


def test_a_failing_stage_is_recorded_and_stops_the_run(subject, folder, tmp_path, monkeypatch):
    import convscope.empirical.discrepancy as discrepancy

    def fails(*args, **kwargs):  # what only the run finds (bad options are refused before it)
        raise RuntimeError("the occluder broke\non two lines")

    monkeypatch.setattr(discrepancy, "empirical_rf", fails)
    out = tmp_path / "a"
    with pytest.raises(MicroscopeStageError, match="stage rf failed: the occluder broke on two lines"):
        microscope_to_atlas(
            subject, folder, out, layers="conv2", stages=["scan", "rf", "activation_atlas"], options=FAST
        )
    rows = {r["name"]: r for r in Atlas.open(out, readonly=True).stages()}
    assert rows["scan"]["status"] == "done"
    assert rows["rf"]["status"] == "failed" and "the occluder broke" in rows["rf"]["error"]
    assert "\n" not in rows["rf"]["error"]
    assert rows["activation_atlas"]["status"] == "pending"  # never started


def test_units_per_layer_for_the_visuals(subject, folder, tmp_path):
    out = tmp_path / "a"
    units = {"conv1": [6, 1], "conv2": rf_units(16, 3, 5, "conv2")}  # a seeded sample, unsorted
    kw = {"layers": ["conv1", "conv2"], "stages": ["visuals"], "options": FAST, "units": units}
    built = microscope_to_atlas(subject, folder, out, plan_only=True, **kw)
    assert next(p for p in built.plan if p.name == "visuals").note == "10 images x 3 steps"
    built = microscope_to_atlas(subject, folder, out, **kw)
    atlas = Atlas.open(out, readonly=True)
    assert atlas.visual_units("conv1") == {1, 6} and atlas.visual_units("conv2") == set(units["conv2"])
    (row,) = atlas.stages()
    assert row["settings"]["units"] == {"conv1": [1, 6], "conv2": sorted(units["conv2"])}
    again = microscope_to_atlas(subject, folder, out, resume=True, **kw)  # the same dict: done
    assert [p.action for p in again.plan] == ["skip"] and again.ran == []
    with pytest.raises(AtlasConflictError, match="units"):  # another sample: refused by name
        other = {"conv1": [1], "conv2": [0]}
        microscope_to_atlas(subject, folder, out, resume=True, **{**kw, "units": other})
    for bad, message in (
        ({"conv2": [0]}, "missing: conv1"),
        ({"conv1": [0], "conv2": [0], "fc": [1]}, "not chosen: fc"),
        ({"conv1": [0], "conv2": [16]}, "units 0..15"),
        ({"conv1": ["x"], "conv2": [0]}, "lists of unit numbers"),
    ):
        with pytest.raises(UserInputError, match=message):
            microscope_to_atlas(subject, folder, tmp_path / "b", **{**kw, "units": bad})
    assert not (tmp_path / "b").exists()


def test_rf_grid_scales_with_what_a_unit_sees():
    from types import SimpleNamespace

    from convscope.receptive import ReceptiveField

    def fake(size, is_global=False):
        rf = ReceptiveField((size, size), (1.0, 1.0), (0.0, 0.0), is_global=is_global)
        return SimpleNamespace(input_size=(224, 224), layer=lambda name: SimpleNamespace(rf=rf))

    assert rf_grid(fake(7.0), "a") == (11, 3)  # the old fixed grid on shallow layers
    assert rf_grid(fake(67.0), "a") == (11, 4)
    assert rf_grid(fake(339.0), "a") == (29, 14)  # larger than the image: the image side counts
    assert rf_grid(fake(1.0, is_global=True), "a") == (29, 14)
    assert rf_grid(fake(339.0), "a", patch=11, stride=3) == (11, 3)  # numbers are kept
    assert rf_grid(fake(339.0), "a", stride=5) == (29, 5)
    for bad in ({"patch": 0}, {"stride": "fine"}, {"stride": True}):
        with pytest.raises(UserInputError, match="'auto' or a number"):
            rf_grid(fake(7.0), "a", **bad)


def test_concepts_stage(subject, folder, tmp_path):
    out = tmp_path / "a"
    options = {**FAST, "concepts": {**FAST["concepts"], "layers": "block"}}  # the stage's own layers
    built = microscope_to_atlas(
        subject, folder, out, layers="conv2", stages=["concepts"], concepts="nmf:3", options=options
    )
    assert built.ran == ["concepts"]
    (row,) = Atlas.open(out, readonly=True).dictionaries()
    assert (row["layer"], row["method"], row["n"]) == ("block", "nmf", 3)


def test_the_plan_measures_and_writes_nothing(subject, folder, tmp_path):
    out = tmp_path / "a"
    built = microscope_to_atlas(
        subject, folder, out, layers="conv2", units=4, concepts="nmf:3", options=FAST, plan_only=True
    )
    assert not out.exists()
    assert [p.name for p in built.plan] == list(STAGES)
    for p in built.plan:
        assert p.action == "run" and p.seconds > 0 and p.note, p
    visuals = next(p for p in built.plan if p.name == "visuals")
    assert visuals.note == "8 images x 3 steps"


def test_bad_requests_fail_before_anything_is_written(subject, folder, tmp_path):
    out = tmp_path / "a"
    for kw, message in (
        ({"stages": ["scan", "paint"]}, "unknown stage"),
        ({"stages": ["concepts"]}, "needs concepts"),
        ({"concepts": "nmf"}, "METHOD:N"),
        ({"units": 0}, "units"),
        ({"layers": "nope"}, "nope"),
        ({"options": {"paint": {}}}, "unknown stage"),
        ({"stages": ["rf"]}, "run the scan stage first"),
        ({"broden": tmp_path / "missing"}, "not a folder"),
    ):
        with pytest.raises(UserInputError, match=message):
            microscope_to_atlas(subject, folder, out, **{"layers": "conv2", **kw})
        assert not out.exists()


def test_an_older_atlas_has_no_stages_until_upgraded(whole, tmp_path):
    import shutil

    from convscope.atlas.schema import SCHEMA_VERSION

    out = tmp_path / "a"
    shutil.copytree(whole[0], out)
    with sqlite3.connect(out / "atlas.db") as con:
        con.execute("DROP TABLE stages")
        con.execute("UPDATE meta SET value = '8' WHERE key = 'schema_version'")
    old = Atlas.open(out, readonly=True)
    assert old.schema_version == 8 and old.stages() == []
    upgraded = Atlas.open(out)
    assert upgraded.schema_version == SCHEMA_VERSION == 9 and upgraded.stages() == []
    upgraded.write_stage("scan", "running", {"k": 1})
    assert [(r["name"], r["status"], r["settings"]) for r in upgraded.stages()] == [
        ("scan", "running", {"k": 1})
    ]
