from __future__ import annotations

import json

from PIL import Image

from convscope.cli.main import main


def test_features_then_every_command(cifar_dir, tmp_path, capsys):
    out = tmp_path / "atlas"
    assert (
        main(
            [
                "features",
                "--data",
                str(cifar_dir),
                "--layers",
                "bn1,bn2",
                "--out",
                str(out),
                "--batch-size",
                "25",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "neighbors",
                str(out),
                "--layers",
                "bn2",
                "--query",
                "0",
                "--query",
                "sample:chelsea",
                "--k",
                "4",
                "--eval",
            ]
        )
        == 0
    )
    got = json.loads((out / "render/neighbors/bn2/neighbors.json").read_text())
    assert len(got["queries"]) == 2 and len(got["queries"][0]["neighbors"]) == 4
    assert got["queries"][0]["neighbors"][0]["image"] != got["queries"][0]["query"]
    assert 0.1 < got["map"] <= 1
    assert Image.open(out / "render/neighbors/bn2/chelsea.png").width > 4 * 112
    assert main(["probe", str(out), "--test-fraction", "0.4"]) == 0
    assert (out / "render/probe/probe_gap_logistic.csv").read_text().count("\n") == 3
    assert main(["project", str(out), "--layers", "bn2", "--method", "pca", "--thumbnails", "20"]) == 0
    assert (out / "render/project/bn2/pca_thumbnails.png").exists()
    assert main(["compare", str(out), "--measure", "cka"]) == 0
    rows = (out / "render/compare/cka.csv").read_text().splitlines()
    assert rows[1].split(",")[1] == "1.0000"  # bn1 vs itself
    capsys.readouterr()
    assert main(["probe", str(out), "--layers", "bn3"]) == 2
    assert "bn2" in capsys.readouterr().err
