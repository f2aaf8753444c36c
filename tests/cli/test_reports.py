"""The reports the CLI writes, written from Python: the library functions behind
``convscope dissect`` / ``probe`` / ``filters`` / ``explain`` (issue 18: the Python API can do
what the CLI does)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from convscope.atlas import AtlasPaths
from convscope.errors import UserInputError


def test_dissection_write_report_from_python(tiny, tmp_path):
    from convscope.dissect import BrodenDataset, dissect, make_synthetic_broden

    root = make_synthetic_broden(tmp_path / "broden", n=8, size=32, seg=16, seed=0)
    data = BrodenDataset(root)
    d = dissect(tiny, data, ["conv1", "conv2"], batch_size=4)
    paths = AtlasPaths(tmp_path / "atlas")
    files = d.write_report(paths, "synthetic", tiny, data, units=2)
    assert all(p.exists() for p in files.values())
    summary = json.loads(paths.dissection_file("synthetic", "summary.json").read_text())
    assert [r["layer"] for r in summary["layers"]] == ["conv1", "conv2"] and summary["images"] == 8
    rows = list(csv.DictReader(paths.dissection_layer_file("synthetic", "conv2", "units.csv").open()))
    assert [int(r["unit"]) for r in rows] == list(range(d.layers["conv2"].units))
    best = sorted(d.labels("conv2"), key=lambda lab: -lab.iou)[:2]
    for lab in best:
        assert paths.dissection_unit_render("synthetic", "conv2", lab.unit).exists()
    assert len(list(paths.dissection_dir("synthetic").glob("conv2/*.png"))) == 2
    # the demo's report: no tables, no summary, too-broad units left out
    demo = d.write_report(
        AtlasPaths(tmp_path / "demo"),
        "synthetic",
        tiny,
        data,
        units=1,
        broad=False,
        tables=False,
        summary=False,
    )
    assert not any(p.suffix in (".csv", ".json") for p in demo.values())
    drawn = sorted(p for p in demo.values() if p.parent.name in ("conv1", "conv2"))
    want = [
        AtlasPaths(tmp_path / "demo").dissection_unit_render("synthetic", n, lab.unit)
        for n in ("conv1", "conv2")
        for lab in sorted((x for x in d.labels(n) if not x.too_broad), key=lambda x: -x.iou)[:1]
    ]
    assert drawn == sorted(want)


def test_probe_write_report_writes_the_table(tmp_path):
    from convscope.represent import linear_probe

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(2), 20)
    feats = {"a": rng.normal(size=(40, 4)) + labels[:, None], "b": rng.normal(size=(40, 3))}
    result = linear_probe(feats, labels, seed=0)
    png, table = result.write_report(tmp_path / "probe.png")
    assert png.exists() and table == tmp_path / "probe.csv"
    rows = list(csv.DictReader(table.open()))
    assert [r["layer"] for r in rows] == ["a", "b"]
    assert float(rows[0]["test_accuracy"]) == pytest.approx(result.rows[0].test_accuracy, abs=1e-4)


def test_rank_filters_orders_by_mean_activation(tiny):
    from convscope.inputs.sources import open_images
    from convscope.train.filters import filters_grid, rank_filters

    source = open_images("convscope:samples", transform=tiny.transform).subset(range(4))
    ranking = rank_filters(tiny, source, ["conv1"], batch_size=2)
    assert ranking.images == 4
    # the same means computed directly
    x = torch.stack([source[i][0] for i in range(4)])
    with tiny.record(["conv1"], stop=True) as rec, torch.inference_mode():
        tiny(x)
    means = rec["conv1"].float().mean(dim=(0, 2, 3))
    torch.testing.assert_close(ranking.means["conv1"], means, rtol=1e-4, atol=1e-5)
    top = ranking.top("conv1", 3)
    assert top == [int(u) for u in means.argsort(descending=True)[:3]]
    grid, captions = filters_grid(tiny, ["conv1"], 3, ranking)
    assert [c.split()[0] for c in captions] == [f"conv1:{u}" for u in top] and grid.width > 0


def test_explain_refuses_an_option_the_method_does_not_take(tiny):
    import convscope
    from convscope.attribution import method_options, options_for

    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(UserInputError, match="saliency has no option 'window'") as e:
        convscope.explain(tiny, x, "saliency", target=0, window=8)
    assert "\n" not in str(e.value)
    with pytest.raises(UserInputError, match="did you mean 'window'"):
        convscope.explain(tiny, x, "occlusion", target=0, windw=8)
    assert method_options("gradcam") == ("layer",) and "seed" in method_options("smoothgrad")
    settings = {"layer": None, "window": 8, "seed": 1, "steps": 4}
    assert options_for("occlusion", settings) == {"window": 8, "seed": 1}
    assert options_for("ig", settings) == {"steps": 4}
    assert options_for("saliency", settings) == {}


def test_explain_report_from_python(tiny, tmp_path):
    import convscope
    from convscope.attribution.report import write_explain_report

    x = tiny.load_images([np.full((32, 32, 3), 120, np.uint8)])
    summary, written = write_explain_report(
        tiny, x, ["grey"], ["saliency", "occlusion"], tmp_path / "py", target=0, settings={"window": 8}
    )
    assert [(e["image"], e["method"]) for e in summary] == [("grey", "saliency"), ("grey", "occlusion")]
    assert sorted(p.name for p in written) == sorted(
        ["grey_saliency.png", "saliency.npz", "grey_occlusion.png", "occlusion.npz"]
    )
    assert json.loads((tmp_path / "py" / "explain.json").read_text()) == summary
    occ = np.load(tmp_path / "py" / "occlusion.npz")
    full = convscope.explain(tiny, x, "occlusion", target=0, window=8)
    np.testing.assert_allclose(occ["maps"], full.maps, rtol=1e-5)
