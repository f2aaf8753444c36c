"""Issue 17: the units of a classifier layer are named by their class (``classifier:285`` is
"Egyptian cat") in the atlas, the top-K picture, the viewer's pages and the static export."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def class_atlas(default_subject, tmp_path_factory):
    from convscope.atlas import scan_to_atlas
    from convscope.inputs.sources import open_images

    out = tmp_path_factory.mktemp("names") / "atlas"
    source = open_images("convscope:samples", transform=default_subject.transform, pattern="c*")
    scan_to_atlas(
        default_subject, source, out, ["blocks.6", "classifier"], k=4, batch_size=16, threshold_sample=8
    )
    return out


def test_the_atlas_records_class_names_of_the_classifier(class_atlas):
    from convscope.atlas import Atlas

    names = Atlas.open(class_atlas).unit_names()
    assert list(names) == ["classifier"]  # blocks.6 has 192 unnamed units
    assert len(names["classifier"]) == 1000 and names["classifier"][285] == "Egyptian cat"


def test_topk_picture_title_names_the_class(default_subject, class_atlas, monkeypatch):
    from convscope.atlas import Atlas, reopen
    from convscope.render import topk as render_topk_module
    from convscope.scan.patches import render_topk

    titles = []
    real = render_topk_module.topk_grid

    def spy(patches, overlays, captions, title, *args, **kwargs):
        titles.append(title)
        return real(patches, overlays, captions, title, *args, **kwargs)

    from convscope.scan import patches as patches_module  # convscope.scan is the verb

    monkeypatch.setattr(patches_module, "topk_grid", spy)
    store = Atlas.open(class_atlas)
    subject, source = reopen(store, default_subject)
    render_topk(subject, source, store.topk("classifier", 967))
    render_topk(subject, source, store.topk("blocks.6", 5))
    assert titles[0].startswith('classifier unit 967 "espresso"')
    assert titles[1].startswith("blocks.6 unit 5 -")


def test_viewer_pages_name_the_class(class_atlas):
    from convscope.atlas.queries import AtlasReader
    from convscope.viewer import pages

    reader = AtlasReader(class_atlas)
    meta = reader.meta()
    layer = reader.layer("classifier")
    rows, total = reader.units("classifier", 2, 100)  # units 200..299
    html = pages.layer_page(meta, layer, rows, total, 2, 100, "unit", None, pages.Links())
    assert "unit 285 (Egyptian cat)" in html and "unit 967" not in html
    tops = {"max": reader.topk("classifier", 285)}
    unit = pages.unit_page(
        meta, layer, reader.unit("classifier", 285), ["max"], tops, [], None, pages.Links()
    )
    assert "<h1>classifier unit 285 (Egyptian cat)</h1>" in unit
    plain = pages.unit_page(
        meta, reader.layer("blocks.6"), reader.unit("blocks.6", 3), ["max"], {}, [], None, pages.Links()
    )
    assert "<h1>blocks.6 unit 3</h1>" in plain
    idx = tops["max"][0]["image"]
    image = pages.image_page(meta, "x", "x.png", None, None, reader.image_units(idx), pages.Links())
    assert "classifier:285 (Egyptian cat)" in image


def test_names_are_escaped_and_a_bad_record_is_ignored():
    from convscope.viewer import pages

    unit = {"unit": 1, "max": 1.0, "mean": 0.1, "std": 0.2, "frac_pos": 0.5, "threshold": None}
    layer = {"name": "fc", "channels": 3}
    meta = {"model": {}, "unit_names": {"fc": ["a", "<b>", None]}}
    html = pages.unit_page(meta, layer, unit, [], {}, [], None, pages.Links())
    assert "fc unit 1 (&lt;b&gt;)" in html and "<b>" not in html
    for bad in ({"fc": "abc"}, {"fc": [1, 2]}, ["x"], None):
        html = pages.unit_page({"model": {}, "unit_names": bad}, layer, unit, [], {}, [], None, pages.Links())
        assert "<h1>fc unit 1</h1>" in html


def test_static_export_names_the_class(class_atlas, tmp_path):
    from convscope.viewer.export import export_html

    export_html(class_atlas, tmp_path / "site", units_per_layer=2)
    layer = (tmp_path / "site" / "layer_classifier_0.html").read_text()
    assert "unit 0 (tench)" in layer and "unit 1 (goldfish)" in layer
    unit = (tmp_path / "site" / "unit_classifier_1.html").read_text()
    assert "classifier unit 1 (goldfish)" in unit


def test_topk_command_names_the_class(class_atlas, capsys):
    import json

    from convscope.cli.main import main

    capsys.readouterr()
    args = ["topk", str(class_atlas), "--layers", "classifier", "--unit", "285", "--no-render"]
    assert main([*args, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["unit_name"] == "Egyptian cat"
    assert main(args) == 0
    assert "classifier unit 285 (Egyptian cat), top 4" in capsys.readouterr().out
    assert main(["topk", str(class_atlas), "--layers", "blocks.6", "--unit", "3", "--no-render"]) == 0
    assert "blocks.6 unit 3, top 4" in capsys.readouterr().out
