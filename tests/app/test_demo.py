from __future__ import annotations

from types import SimpleNamespace

from convscope.app.demo import best_labels, scan_layers


def test_demo_scans_the_convolution_before_the_saturating_activation(default_subject):
    # bn2 (BatchNorm + ReLU6) saturates at 6.0: its top scores tie; conv_head feeds it
    assert scan_layers(default_subject) == ["blocks.2", "blocks.4", "conv_head", "classifier"]


def test_best_labels_leave_out_too_broad_units():
    labs = [
        SimpleNamespace(unit=0, iou=0.9, too_broad=True),
        SimpleNamespace(unit=1, iou=0.2, too_broad=False),
        SimpleNamespace(unit=2, iou=0.5, too_broad=False),
        SimpleNamespace(unit=3, iou=0.1, too_broad=False),
    ]
    assert [lab.unit for lab in best_labels(labs)] == [2, 1]


def test_the_demo_stores_a_concept_set_the_viewer_can_show(tmp_path, monkeypatch):
    import convscope.app.demo
    from convscope.app.demo import DemoResult, demo_concepts
    from convscope.atlas import Atlas
    from convscope.inputs.sources import open_images
    from convscope.testing import tiny_subject

    subject = tiny_subject(size=32)
    result, steps = DemoResult(tmp_path), []
    # 12 of the bundled photos and crops (all 108 take long to decode), pictures of 2 steps
    source = open_images("convscope:samples", transform=subject.transform)
    monkeypatch.setattr(convscope.app.demo, "DEMO_CONCEPT_STEPS", 2)
    demo_concepts(subject, tmp_path / "atlas", 0, result, steps.append, source.subset(range(0, 108, 9)))
    atlas = Atlas.open(tmp_path / "atlas", readonly=True)
    (row,) = atlas.dictionaries()
    last = subject.layers.stages()[-1].name
    assert (row["name"], row["layer"], row["n"]) == (f"nmf8-{last}", last, 8)
    assert row["scanned"] and row["importance"]
    assert all(len(atlas.dictionary_topk(row["name"], c)) == 8 for c in range(8))
    pictures = [p for what, p in result.files.items() if what.startswith("feature visualisation of concept")]
    assert len(pictures) == 8 and all(p.exists() for p in pictures)
    stages = ("collecting", "fitting", "scanning", "importance", "pictures")
    assert steps == [f"learned concepts: {s}" for s in stages]
