from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from convscope.cli.main import main

SCAN = [
    "scan",
    "efficientnet_lite0",
    "--data",
    "convscope:samples",
    "--layers",
    "blocks.2,blocks.4,classifier",
    "--k",
    "6",
    "--directions",
    "3",
    "--threshold-sample",
    "16",
    "--batch-size",
    "8",
]


def _rows(atlas):
    with sqlite3.connect(atlas / "atlas.db") as con:
        return con.execute("SELECT * FROM topk ORDER BY layer, kind, unit, criterion, rank").fetchall()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "atlas"
    assert main(SCAN + ["--out", str(out)]) == 0
    return out


def test_scan_then_topk(reference, tmp_path, capsys):
    capsys.readouterr()
    png = tmp_path / "cat.png"
    assert (
        main(
            [
                "topk",
                str(reference),
                "--layers",
                "classifier",
                "--unit",
                "285",
                "--format",
                "json",
                "--out",
                str(png),
            ]
        )
        == 0
    )
    got = json.loads(capsys.readouterr().out)
    assert got["top"][0]["name"].startswith("chelsea")
    assert Image.open(png).width > 6 * 100
    assert (
        main(
            [
                "topk",
                str(reference),
                "--layers",
                "blocks.4",
                "--unit",
                "2",
                "--direction",
                "--criterion",
                "area",
                "--no-render",
            ]
        )
        == 0
    )
    assert "direction 2" in capsys.readouterr().out
    assert main(["topk", str(reference), "--layers", "blocks.9", "--unit", "0"]) == 2
    assert "blocks.4" in capsys.readouterr().err


def test_scan_refuses_to_overwrite(reference, capsys):
    assert main(SCAN + ["--out", str(reference)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (
        main(
            [
                "scan",
                "--layers",
                "blocks.2",
                "--out",
                str(reference),
                "--data",
                "convscope:samples",
                "--pattern",
                "chelsea*",
            ]
        )
        == 2
    )
    assert "another --out" in capsys.readouterr().err


def test_unknown_layer_fails_before_work(tmp_path, capsys):
    assert main(["scan", "--layers", "blocks.2,blocks.44", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "blocks.4" in err and "scanning" not in err


def test_killed_scan_resumes_to_the_same_atlas(reference, tmp_path):
    out = tmp_path / "atlas"
    cmd = [sys.executable, "-m", "convscope.cli.main"] + SCAN + ["--out", str(out), "--checkpoint-every", "0"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    ckpt = out / "scan.ckpt"
    deadline = time.monotonic() + 120
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.exists():
            try:
                pos = torch.load(ckpt, weights_only=True)["position"]
            except Exception:  # caught between write and rename: impossible, but be safe
                pos = 0
            if pos >= 40:
                proc.send_signal(signal.SIGKILL)
                killed_at = pos
                break
        time.sleep(0.05)
    proc.wait()
    assert killed_at is not None and killed_at < 108, "the scan finished before it was killed"
    assert not (out / "atlas.db").exists() or not _rows(out)
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "scanned 108 images" in done.stdout
    assert _rows(out) == _rows(reference)


def test_rf_and_stimuli_commands(reference, capsys):
    from convscope.atlas import Atlas

    assert (
        main(["rf", str(reference), "--layers", "blocks.2", "--units", "0-1", "--top", "2", "--stride", "8"])
        == 0
    )
    out = capsys.readouterr().out
    assert "theoretical 67 px" in out
    rows = Atlas.open(reference).empirical_rfs("blocks.2")
    assert [r["unit"] for r in rows] == [0, 1] and rows[0]["average"].ndim == 2
    assert 0 < rows[0]["size"] < 67
    assert (reference / "render" / "blocks.2" / "unit0001_rf.png").exists()
    assert (reference / "render" / "rf_sizes.png").exists()
    assert main(["stimuli", str(reference), "--layers", "blocks.2", "--unit", "1", "--stride", "16"]) == 0
    assert (reference / "render" / "blocks.2" / "unit0001_stimuli.png").exists()


def test_speed_options(tmp_path, capsys):
    out = tmp_path / "fast"
    assert (
        main(
            [
                "scan",
                "--data",
                "convscope:samples",
                "--pattern",
                "chelsea*",
                "--layers",
                "blocks.2",
                "--k",
                "3",
                "--batch-size",
                "8",
                "--channels-last",
                "--decode",
                "device",
                "--workers",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    with sqlite3.connect(out / "atlas.db") as con:
        (config,) = con.execute("SELECT config FROM runs").fetchone()
    assert json.loads(config)["decode"] == "device"
    capsys.readouterr()
    assert main(["scan", "--layers", "blocks.2", "--precision", "half", "--out", str(tmp_path / "x")]) == 2
    assert "precision must be one of fp32, bf16, fp16" in capsys.readouterr().err


def test_scan_of_an_empty_folder_is_a_one_line_error(tmp_path, capsys):
    empty = tmp_path / "photos"
    (empty / "sub").mkdir(parents=True)
    assert main(["scan", "--data", str(empty), "--layers", "blocks.2", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no images in folder" in err and "photos" in err
    assert not (tmp_path / "a").exists()
