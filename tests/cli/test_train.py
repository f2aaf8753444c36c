from __future__ import annotations

import shutil

import pytest
from PIL import Image

from convscope.cli.main import main


@pytest.fixture(scope="module")
def split_dir(cifar_dir, tmp_path_factory):
    """train/ (7 per class) and test/ (3 per class) from the CIFAR-10 subset."""
    root = tmp_path_factory.mktemp("split")
    for cls in sorted(p.name for p in cifar_dir.iterdir()):
        files = sorted((cifar_dir / cls).iterdir())
        for part, chunk in (("train", files[:7]), ("test", files[7:])):
            (root / part / cls).mkdir(parents=True)
            for f in chunk:
                shutil.copy(f, root / part / cls / f.name)
    return root


def test_train_then_filters(split_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(split_dir), "--epochs", "2", "--batch-size", "16", "--out", str(out)]
    assert main(args) == 0
    for name in (
        "metrics.csv",
        "curves.png",
        "confusion.png",
        "confusion.csv",
        "filters_evolution.png",
        "epoch_000.pt",
        "epoch_002.pt",
    ):
        assert (out / name).exists(), name
    rows = (out / "confusion.csv").read_text().splitlines()
    assert sum(int(v) for r in rows[1:] for v in r.split(",")[1:]) == 30
    assert "test accuracy" in capsys.readouterr().out
    assert main(args) == 2  # the folder holds a run: refused without --resume, nothing overwritten
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0  # resumes, finds it finished
    # the old spelling (DATA as a positional argument) still works
    assert main(["train", str(split_dir), "--epochs", "3", "--out", str(out), "--resume"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["filters", str(out), "--out", str(tmp_path / "evo.png")]) == 0
    assert Image.open(tmp_path / "evo.png").width > 300
    assert (
        main(
            [
                "filters",
                "torchvision:alexnet",
                "--weights",
                "none",
                "--n",
                "8",
                "--out",
                str(tmp_path / "f.png"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "filters",
                "efficientnet_lite0",
                "--layers",
                "blocks.1.0.conv_dw",
                "--n",
                "4",
                "--data",
                str(split_dir / "test"),
                "--out",
                str(tmp_path / "top.png"),
            ]
        )
        == 0
    )
    assert "most activated" in capsys.readouterr().out


def test_finetune_sweep_and_before_after(split_dir, tmp_path, capsys):
    out = tmp_path / "ft"
    assert (
        main(
            [
                "finetune",
                "efficientnet_lite0",
                "--data",
                str(split_dir),
                "--limit",
                "3",
                "--freeze",
                "8,9",
                "--epochs",
                "1",
                "--batch-size",
                "10",
                "--scan-layer",
                "conv_head",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "transfer.png").exists() and (out / "freeze_9" / "confusion.csv").exists()
    assert (
        main(
            [
                "compare-scans",
                str(out / "scan_before"),
                str(out / "scan_after"),
                "--layers",
                "conv_head",
                "--units",
                "0-1",
                "--k",
                "3",
                "--out",
                str(tmp_path / "cmp"),
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "cmp").glob("*.png"))) == 2


def test_finetune_unknown_scan_layer_writes_nothing(split_dir, tmp_path, capsys):
    """An unknown --scan-layer fails with the layer error before the split cache, the scan
    images or any run folder is written (it used to surface only once the first scan began)."""
    out = tmp_path / "ft"
    args = ["finetune", "efficientnet_lite0", "--weights", "none", "--data", str(split_dir)]
    args += ["--scan-layer", "blocks.99", "--out", str(out)]
    assert main(args) == 2
    assert "blocks.99" in capsys.readouterr().err
    assert not out.exists()


def test_write_filters_is_the_filters_command_in_python(tmp_path):
    """``convscope filters MODEL`` as one call: the grid filters_grid draws, in the PNG asked for."""
    import numpy as np

    from convscope.testing import tiny_subject
    from convscope.train.filters import filters_grid, write_filters

    subject = tiny_subject()
    pic = write_filters(tmp_path / "f.png", subject, ["conv1"], 4)
    grid, captions = filters_grid(subject, ["conv1"], 4)
    assert pic.drawn == captions == [f"conv1:{i}" for i in range(4)] and pic.ranking is None
    assert np.array_equal(np.asarray(Image.open(pic.path).convert("RGB")), np.asarray(grid.convert("RGB")))
