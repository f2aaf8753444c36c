"""``convscope concepts``: a concept set into an atlas from the command line (on the tiny model)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import convscope.zoo
from convscope.atlas import Atlas
from convscope.cli.main import main
from convscope.testing import tiny_subject


@pytest.fixture()
def tiny_model(monkeypatch):
    real = convscope.zoo.load

    def load(model, *args, **kwargs):
        if model == "tiny":
            s = tiny_subject(size=32)
            s.spec = {"name": "tiny", "model": "tiny", "weights": None, "arch": None}
            return s.to(kwargs.get("device") or "cpu")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(convscope.zoo, "load", load)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    out = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(out / f"im{i}.png")
    return out


def run(*args) -> int:
    return main([str(a) for a in args])


BASE = ("concepts", "tiny", "--n", 3, "--k", 2, "--steps", 2, "--workers", 0, "--batch-size", 4)


def test_help(capsys):
    assert main(["concepts", "--help"]) == 0
    text = capsys.readouterr().out
    for option in (
        "--layers",
        "--method",
        "--n",
        "--out",
        "--resume",
        "--device",
        "--seed",
        "--no-visualize",
    ):
        assert option in text


def test_concepts_into_an_atlas_and_resume(tiny_model, images, tmp_path, capsys):
    out = tmp_path / "atlas"
    assert run(*BASE, "--data", images, "--layer", "block", "--out", out, "--concept-data", "auto-color") == 0
    text = capsys.readouterr().out
    assert "3 nmf concepts" in text and "'nmf3-block'" in text and str(out / "atlas.db") in text
    atlas = Atlas.open(out, readonly=True)
    (row,) = atlas.dictionaries()
    assert (row["name"], row["n"], row["scanned"], row["labels"]) == ("nmf3-block", 3, True, True)
    assert {lab["dataset"] for lab in atlas.dictionary_labels("nmf3-block")} == {"auto-color"}
    assert all(atlas.dictionary_picture("nmf3-block", i).exists() for i in range(3))
    first = atlas.dictionary("nmf3-block").dictionary
    # the same command again is refused; with --resume it reuses what is stored
    assert run(*BASE, "--data", images, "--layers", "block", "--out", out) == 2
    assert "--resume" in capsys.readouterr().err
    assert run(*BASE, "--data", images, "--layers", "block", "--out", out, "--resume", "--no-visualize") == 0
    assert "reused from the atlas: dictionary, scan" in capsys.readouterr().out
    assert (Atlas.open(out, readonly=True).dictionary("nmf3-block").dictionary == first).all()


def test_unknown_layer_is_one_line_and_writes_nothing(tiny_model, images, tmp_path, capsys):
    out = tmp_path / "atlas"
    assert run(*BASE, "--data", images, "--layers", "blok", "--out", out) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "block" in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert run(*BASE, "--data", images, "--out", out) == 2  # no layer named
    assert "--layers" in capsys.readouterr().err
    assert not out.exists()


def test_nmf_of_a_negative_layer_names_the_clip_flag_and_clip_works(tiny_model, images, tmp_path, capsys):
    out = tmp_path / "atlas"
    assert run(*BASE, "--data", images, "--layers", "conv1", "--out", out, "--no-visualize") != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--clip" in err and len(err.splitlines()) == 1
    assert run(*BASE, "--data", images, "--layers", "conv1", "--out", out, "--no-visualize", "--clip") == 0
    text = capsys.readouterr().out
    assert "3 nmf concepts" in text
    # the last line is not broken inside the path, whatever the terminal's width
    assert f"atlas: {out / 'atlas.db'}" in text.splitlines()[-1]
    assert Atlas.open(out, readonly=True).dictionary("nmf3-conv1").settings["clip"] is True


def test_sae_settings_and_early_errors(tiny_model, images, tmp_path, capsys, monkeypatch):
    out = tmp_path / "atlas"
    base = ("concepts", "tiny", "--n", 4, "--k", 2, "--workers", 0, "--batch-size", 4, "--no-visualize")
    args = (*base, "--data", images, "--layers", "block", "--out", out, "--method", "sae-topk")
    assert run(*args, "--sae-k", 2, "--sae-steps", 5) == 0
    cs = Atlas.open(out, readonly=True).dictionary("sae-topk4-block")
    assert (cs.settings["k"], cs.settings["steps"], len(cs.curve)) == (2, 5, 5)
    capsys.readouterr()
    # a wrong method or an SAE option for NMF fail before the model is loaded
    loads = []
    monkeypatch.setattr(convscope.zoo, "load", lambda *a, **k: loads.append(a) or tiny_subject(size=32))
    assert run(*base, "--data", images, "--layers", "block", "--out", tmp_path / "b", "--method", "nfm") == 2
    assert "did you mean 'nmf'" in capsys.readouterr().err
    assert run(*base, "--data", images, "--layers", "block", "--out", tmp_path / "b", "--sae-k", 2) == 2
    assert "--sae-k" in capsys.readouterr().err and loads == []
