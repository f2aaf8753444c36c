from __future__ import annotations

import csv
import json

from PIL import Image

from convscope.cli.main import main


def test_dissect_synthetic_then_compare(tmp_path, capsys):
    out = tmp_path / "atlas"
    args = [
        "dissect",
        "efficientnet_lite0",
        "--concepts",
        "synthetic",
        "--synthetic-images",
        "8",
        "--layers",
        "blocks.1,blocks.2",
        "--show",
        "1",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    where = out / "render" / "dissect" / "synthetic"
    summary = json.loads((where / "summary.json").read_text())
    assert [r["layer"] for r in summary["layers"]] == ["blocks.1", "blocks.2"]
    assert summary["images"] == 8
    rows = list(csv.DictReader((where / "blocks.2_units.csv").read_text().splitlines()))
    assert len(rows) == 40 and rows[0]["label"]
    assert Image.open(where / "layers.png").width > 200
    assert len(list((where / "blocks.2").glob("unit*.png"))) == 1
    assert "blocks.2" in capsys.readouterr().out
    # colour names of the bundled photos into the same atlas
    assert (
        main(
            [
                "dissect",
                "--concepts",
                "auto-color",
                "--limit",
                "6",
                "--layers",
                "blocks.1",
                "--show",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    png = tmp_path / "cmp.png"
    assert (
        main(
            [
                "dissect-compare",
                f"{out}:blocks.1",
                f"{out}:blocks.2",
                "--concepts",
                "synthetic",
                "--out",
                str(png),
            ]
        )
        == 0
    )
    assert Image.open(png).width > 200 and len(json.loads(png.with_suffix(".json").read_text())) == 2
    assert main(["dissect-compare", str(out), "--out", str(png)]) == 2  # two concept sets: name one
    assert "name one" in capsys.readouterr().err


def test_dissect_bad_concepts(tmp_path, capsys):
    assert main(["dissect", "--concepts", str(tmp_path / "nope"), "--out", str(tmp_path / "a")]) == 2
    assert "Broden" in capsys.readouterr().err
