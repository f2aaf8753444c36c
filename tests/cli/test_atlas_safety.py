"""Atlas safety through the command line: non-UTF-8 file names end to end, one writer at a
time, dissection reports drawn from the atlas, and one-line errors that leave files alone."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.atlas import Atlas
from convscope.cli.main import main
from convscope.inputs.images import display_name

CAFE = b"caf\xe9.jpg"  # Latin-1, not UTF-8: os.fsdecode gives "caf\udce9.jpg"


def _picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))


def _scan_args(data, out) -> list[str]:
    return [
        "scan",
        "--data",
        str(data),
        "--layers",
        "blocks.1",
        "--k",
        "3",
        "--threshold-sample",
        "3",
        "--batch-size",
        "3",
        "--workers",
        "0",
        "--out",
        str(out),
    ]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for i, name in enumerate([CAFE, b"ok.jpg", b"zebra.jpg"]):
        _picture(i).save(os.fsencode(root) + b"/" + name, format="JPEG")
    return root


@pytest.fixture(scope="module")
def named_atlas(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("named") / "atlas"
    assert main(_scan_args(photos, out)) == 0
    return out


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert "Traceback" not in err
    return err


def test_non_utf8_name_scan_resume_topk_viewer_export(named_atlas, photos, tmp_path, capsys):
    cafe = os.fsdecode(CAFE)
    shown = display_name(cafe)
    atlas = Atlas.open(named_atlas)
    assert [os.fsencode(n) for n in atlas.image_names()] == [CAFE, b"ok.jpg", b"zebra.jpg"]
    assert main(_scan_args(photos, named_atlas) + ["--resume"]) == 0  # resumes from its checkpoint
    assert "scanned 3 images" in capsys.readouterr().out
    png = tmp_path / "top.png"
    assert (
        main(
            [
                "topk",
                str(named_atlas),
                "--layer",
                "blocks.1",
                "--unit",
                "0",
                "--format",
                "json",
                "--out",
                str(png),
            ]
        )
        == 0
    )
    got = json.loads(capsys.readouterr().out)
    assert shown in [r["name"] for r in got["top"]] and Image.open(png).width > 100
    assert main(["topk", str(named_atlas), "--layer", "blocks.1", "--unit", "0", "--no-render"]) == 0
    assert shown in capsys.readouterr().out

    from fastapi.testclient import TestClient

    from convscope.viewer.app import create_app

    client = TestClient(create_app(named_atlas), base_url="http://127.0.0.1")
    page = client.get("/image/0")
    assert page.status_code == 200 and shown in page.text
    unit = client.get("/unit/blocks.1/0")
    assert unit.status_code == 200 and shown in unit.text

    old = os.umask(0o027)
    try:
        assert main(["export", str(named_atlas), "--html", str(tmp_path / "site"), "--units", "1"]) == 0
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "site").rglob("*") if p.is_file()]
    assert files and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o640}
    assert shown in (tmp_path / "site" / "image_0.html").read_text(encoding="utf-8")


HOLDER = textwrap.dedent("""
    import sys
    from convscope.atlas import Atlas
    with Atlas(sys.argv[1]).lock():
        print("locked", flush=True)
        sys.stdin.read()
""")


def test_second_writer_fails_fast_with_the_first_named(named_atlas, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in named_atlas.iterdir() if p.is_file()}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(named_atlas)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "convscope.cli.main",
                "scan",
                "--layers",
                "blocks.2",
                "--k",
                "2",
                "--overwrite",
                "--out",
                str(named_atlas),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        took = time.monotonic() - t0
        assert second.returncode == 2, second.stderr
        err = second.stderr.strip()
        assert len(err.splitlines()) == 1, err
        assert f"is being written by pid {holder.pid} (`convscope " in err and "started" in err
        assert took < 60  # before any model is loaded (the import of torch is most of it)
        capsys.readouterr()
        for args in (
            ["dissect", "--layers", "blocks.1", "--out", str(named_atlas)],
            ["rf", str(named_atlas), "--layer", "blocks.1", "--units", "0"],
            ["stimuli", str(named_atlas), "--layer", "blocks.1", "--unit", "0"],
            ["features", "--data", "convscope:samples", "--out", str(named_atlas)],
        ):
            assert main(args) == 2, args
            assert f"pid {holder.pid}" in _one_line_error(capsys)
        # readers need no lock
        assert main(["topk", str(named_atlas), "--layer", "blocks.1", "--unit", "0", "--no-render"]) == 0
    finally:
        holder.stdin.close()
        holder.wait(60)
    assert {p.name: p.read_bytes() for p in named_atlas.iterdir() if p.is_file()} == before


def test_dissect_report_covers_every_stored_layer(tmp_path, capsys):
    out = tmp_path / "atlas"
    base = ["dissect", "--concepts", "synthetic", "--synthetic-images", "8", "--show", "0", "--out", str(out)]
    assert main(base + ["--layers", "blocks.1"]) == 0
    assert main(base + ["--layers", "blocks.0"]) == 0
    summary = json.loads((out / "render" / "dissect" / "synthetic" / "summary.json").read_text())
    assert [r["layer"] for r in summary["layers"]] == ["blocks.0", "blocks.1"]
    assert sorted(Atlas.open(out).dissection("synthetic").layers) == ["blocks.0", "blocks.1"]


def test_one_line_errors_leave_files_alone(named_atlas, photos, tmp_path, capsys):
    capsys.readouterr()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "atlas.db").write_bytes(b"this is not sqlite\n" * 10)
    for args in (["topk", str(bad), "--layer", "blocks.1", "--unit", "0"], ["serve", str(bad)]):
        assert main(args) == 2, args
        assert "not a convscope atlas" in _one_line_error(capsys)
    assert (bad / "atlas.db").read_bytes() == b"this is not sqlite\n" * 10

    plain = tmp_path / "plain"
    plain.write_text("keep me")
    assert main(["scan", "--layers", "blocks.1", "--out", str(plain)]) == 2
    assert "is a file" in _one_line_error(capsys) and plain.read_text() == "keep me"

    fake = tmp_path / "fake.pt"
    import zipfile

    with zipfile.ZipFile(fake, "w") as z:
        z.writestr("fake/constants.pkl", "no")
        z.writestr("fake/code/x.py", "no")
    assert main(["layers", str(fake)]) == 2
    assert "not a TorchScript model" in _one_line_error(capsys)

    copy = tmp_path / "copy"
    shutil.copytree(named_atlas, copy)
    db = (copy / "atlas.db").read_bytes()
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"version": 2, "config": {}, "x": argparse.Namespace(a=1)}, pickled)
    for content in (b"\x00garbage" * 100, pickled.read_bytes()):
        (copy / "scan.ckpt").write_bytes(content)
        assert main(_scan_args(photos, copy) + ["--resume"]) == 2
        assert "not a readable scan checkpoint" in _one_line_error(capsys)
        assert (copy / "scan.ckpt").read_bytes() == content and (copy / "atlas.db").read_bytes() == db


def test_train_resuming_a_pickled_epoch_file(tmp_path, capsys):
    data = tmp_path / "data"
    for part in ("train", "test"):
        for c in ("a", "b"):
            (data / part / c).mkdir(parents=True)
            for i in range(2):
                _picture(i + 10 * (c == "b")).resize((32, 32)).save(data / part / c / f"{i}.png")
    out = tmp_path / "run"
    args = ["train", str(data), "--epochs", "1", "--batch-size", "4", "--out", str(out)]
    assert main(args) == 0
    last = sorted(out.glob("epoch_*.pt"))[-1]
    torch.save({"epoch": 1, "model": argparse.Namespace(a=1)}, last)
    before = last.read_bytes()
    capsys.readouterr()
    assert main(args + ["--resume"]) == 2
    assert "not a readable training checkpoint" in _one_line_error(capsys)
    assert last.read_bytes() == before
