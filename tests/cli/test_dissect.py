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


def test_dissect_to_atlas_is_the_command_in_python(tmp_path):
    """What ``convscope dissect`` does, as one call: the atlas, its stored dissection and the
    report; an unknown layer or engine fails before anything (not even the synthetic concepts)
    is written; compare_dissections reads the layers back for dissect-compare."""
    import pytest

    from convscope.atlas.build import compare_dissections, dissect_to_atlas
    from convscope.errors import LayerNotFoundError, NameNotFoundError, UserInputError
    from convscope.testing import tiny_subject

    subject = tiny_subject(size=32)
    out = tmp_path / "atlas"
    with pytest.raises(LayerNotFoundError):
        dissect_to_atlas(subject, "synthetic", out, "conv9", synthetic_images=8)
    with pytest.raises(NameNotFoundError):
        dissect_to_atlas(subject, "synthetic", out, "conv1", engine="rya", synthetic_images=8)
    assert not out.exists()
    done = dissect_to_atlas(
        subject, "synthetic", out, "conv1,conv2", synthetic_images=8, units=1, batch_size=4, workers=0
    )
    assert (
        done.concepts == "synthetic" and done.other == [] and list(done.result.layers) == ["conv1", "conv2"]
    )
    summary = json.loads(done.atlas.dissection_file("synthetic", "summary.json").read_text())
    assert [r["layer"] for r in summary["layers"]] == ["conv1", "conv2"] and summary["images"] == 8
    stored = done.atlas.dissection("synthetic")
    assert [u.name for u in stored.labels("conv2")] == [u.name for u in done.result.labels("conv2")]

    cmp = compare_dissections([(out, "conv1"), f"{out}:conv2", out])
    assert [r["model"] for r in cmp.rows()] == ["tiny conv1", "tiny conv2", "tiny conv2"]
    assert cmp.rows()[0]["unique"] == done.result.summary("conv1").unique
    files = cmp.write_report(tmp_path / "cmp.png")
    assert json.loads(files["json"].read_text()) == cmp.rows() and Image.open(files["png"]).width > 200
    with pytest.raises(UserInputError, match="no dissection of 'conv9'"):
        compare_dissections([(out, "conv9")])


def test_dissect_to_atlas_holds_the_writer_lock(tmp_path):
    """A Python caller of dissect_to_atlas is one writer for the whole run (dissection, store,
    report), not only for each database write: another writer cannot slip in between."""
    import fcntl
    import os

    from convscope.atlas.build import dissect_to_atlas
    from convscope.atlas.paths import AtlasPaths
    from convscope.scale.engine import LocalEngine
    from convscope.testing import tiny_subject

    out = tmp_path / "atlas"
    seen = []

    class Probe(LocalEngine):
        def dissect(self, *args, **kwargs):
            fd = os.open(AtlasPaths(out).lock_path, os.O_RDWR | os.O_CREAT)
            try:  # what another process trying to write gets meanwhile
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append("free")
            except BlockingIOError:
                seen.append("held")
            finally:
                os.close(fd)
            return super().dissect(*args, **kwargs)

    dissect_to_atlas(tiny_subject(), "synthetic", out, "conv2", engine=Probe(), synthetic_images=8)
    assert seen == ["held"]
