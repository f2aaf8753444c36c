from __future__ import annotations

import json

from PIL import Image

from convscope import __version__
from convscope.cli.main import main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"convscope {__version__}"


def test_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "layers" in out and "demo" in out


def test_layers_alexnet_table(capsys):
    assert main(["layers", "torchvision:alexnet", "--weights", "none"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.strip().startswith("features.12 "))
    assert row.split()[1:] == ["MaxPool2d", "256x6x6", "256", "195", "32", "NCHW"]


def test_layers_json_and_filter(capsys):
    assert (
        main(["layers", "torchvision:alexnet", "--weights", "none", "--format", "json", "--filter", "conv*"])
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [
        "features.0",
        "features.3",
        "features.6",
        "features.8",
        "features.10",
    ]
    assert rows[0]["rf"] == "11" and rows[0]["stride"] == "4"


def test_bad_input_exits_2_in_one_line(capsys):
    assert main(["layers", "torchvision:alexnet", "--weights", "none", "--filter", "feature.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown layer 'feature.3'") and "features.3" in err
    assert len(err.splitlines()) == 1
    assert main(["layers", "no_such_model"]) == 2
    assert main(["layers", "--format", "xml"]) == 2
    assert main(["no-such-command"]) == 2
    capsys.readouterr()
    if not __import__("torch").cuda.is_available():
        assert main(["layers", "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_demo_writes_results(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "Egyptian cat" in text and "espresso" in text
    preds = json.loads((out / "predictions.json").read_text())
    by_name = {p["image"]: p["top"] for p in preds}
    # tabby, tiger cat or Egyptian cat: the offline default hesitates between them on Chelsea
    assert by_name["chelsea"][0]["index"] in (281, 282, 285) and len(by_name["chelsea"]) == 5
    assert by_name["coffee"][0]["index"] == 967
    table = (out / "layers.txt").read_text()
    assert "conv_stem" in table and "blocks.6" in table
    for png in ("filters_first_layer.png", "predictions.png", "receptive_fields.png"):
        img = Image.open(out / png)
        assert img.width > 100 and img.height > 100
    # 32 filters of 3x3, shown as 48 px cells: a 6 x 6 grid.
    assert Image.open(out / "filters_first_layer.png").size == (6 * 51 + 3, 6 * 51 + 3)
    assert not list(out.glob(".*.tmp"))
    # the scan of the bundled photos and crops
    from convscope.atlas import Atlas

    atlas = Atlas.open(out / "atlas")
    assert atlas.run()["processed"] == 108
    assert atlas.topk("classifier", 285).names[0].startswith("chelsea")
    assert atlas.topk("classifier", 967).names[0].startswith("coffee")
    assert (out / "atlas" / "render" / "classifier" / "unit0285_max.png").exists()
    assert len(list((out / "atlas" / "render").rglob("direction*_max.png"))) == 6
    # the small microscope: its stages recorded, and the activation atlas of blocks.4 stored
    assert [(s["name"], s["status"]) for s in atlas.stages()] == [
        ("scan", "done"),
        ("visuals", "done"),
        ("activation_atlas", "done"),
    ]
    (aa,) = atlas.activation_atlases()
    assert (aa["layer"], aa["grid"], aa["samples"]) == ("blocks.4", 6, 4 * 108) and aa["cells"] >= 10
    assert Image.open(atlas.activation_atlas_file("blocks.4", "image")).width == 6 * 48
    # eight NMF concepts of the last stage, scanned, weighed and drawn
    (concepts,) = atlas.dictionaries()
    assert (concepts["name"], concepts["n"], concepts["scanned"], concepts["importance"]) == (
        "nmf8-bn2",
        8,
        True,
        True,
    )
    assert all(atlas.dictionary_picture("nmf8-bn2", c).exists() for c in range(8))
    # the deepest convolution before its ReLU6 (bn2 saturates at 6.0): top scores do not tie
    for unit in (0, 1, 2):
        assert len(set(atlas.topk("conv_head", unit).scores.tolist())) > 1
        assert (out / "atlas" / "render" / "conv_head" / f"unit{unit:04d}_max.png").exists()
    # no unit flagged too broad among the dissection figures of the best units
    figures = list((out / "atlas" / "render" / "dissect").glob("*/*/unit*.png"))
    assert figures
    for png in figures:
        d = atlas.dissection(png.parent.parent.name)
        assert not d.label(png.parent.name, int(png.stem[4:])).too_broad, png
    for name in ("chelsea_saliency", "coffee_gradcam", "chelsea_occlusion", "zeiler_fergus_checkerboard"):
        assert Image.open(out / "explain" / f"{name}.png").width > 400
    assert (out / "atlas" / "render" / "blocks.2" / "unit0001_rf.png").exists()
    assert (out / "atlas" / "render" / "blocks.2" / "unit0000_stimuli.png").exists()
    assert [r["unit"] for r in atlas.empirical_rfs("blocks.2")] == [0, 1]
    for name in ("chelsea_pgd", "coffee_pgd", "fool_gradient", "fool_cppn"):
        assert Image.open(out / "adversarial" / f"{name}.png").width > 100
    for name in ("units", "classes", "inversion", "dream"):
        assert Image.open(out / "synthesis" / f"{name}.png").width > 100
    assert main(["demo", "--out", str(out)]) == 0  # the demo may redo its own atlas


def test_a_hook_method_on_torchscript_is_bad_input(tmp_path, capsys):
    import torch

    from convscope.testing import tiny_subject

    path = tmp_path / "tiny.torchscript.pt"
    torch.jit.script(tiny_subject(size=32).model).save(str(path))
    args = ["explain", str(path), "--data", "sample:chelsea", "--method", "gradcam"]
    args += ["--out", str(tmp_path / "o")]
    assert main(args) == 2  # README: bad input exits 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # torch's deprecation warnings come first
    assert last.startswith("error:") and "TorchScript" in last
