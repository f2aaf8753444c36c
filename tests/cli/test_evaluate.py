"""``convscope evaluate``: the ranked table printed and stored in an atlas (tiny model), a killed
run resumed to the same table, a resume with other settings refused, --overwrite, one-line
errors before any work."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from PIL import Image

import convscope.zoo
from convscope.atlas import Atlas
from convscope.cli.main import main
from convscope.testing import tiny_subject

FAST = ["--methods", "saliency,gradcam,edge", "--metrics", "average_drop,pixel_flipping", "--n", "6"]
FAST += ["--chunk", "2", "--metric-option", "pixel_flipping.step=64"]

# the module that holds evaluate (convscope.attribution.evaluate is the function)
evaluate_module = importlib.import_module("convscope.attribution.evaluator")


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


def _table(path) -> list[str]:
    """The stored table.csv without its timing column."""
    ev = Atlas.open(path).evaluation("default")
    return [row.rsplit(",", 1)[0] for row in ev.to_csv().splitlines()]


def test_evaluate_prints_and_stores_the_ranked_table(tiny_model, images, tmp_path, capsys):
    out = tmp_path / "atlas"
    assert run("evaluate", "tiny", "--data", images, *FAST, "--out", out) == 0
    text = capsys.readouterr().out
    assert "3 method(s) x 2 metric(s) on 6 image(s)" in text and "pixel_flipping" in text
    assert "table.csv" in text and "ranked.png" in text and "/evaluations/default" in text
    atlas = Atlas.open(out)
    ev = atlas.evaluation("default")
    assert ev.methods == ["saliency", "gradcam", "edge"] and ev.metrics == ["average_drop", "pixel_flipping"]
    assert ev.settings["metric_options"]["pixel_flipping"] == {"step": 64}
    assert np.isfinite(ev.scores).all()
    for kind in ("result", "csv", "json", "plot"):
        assert atlas.evaluation_file("default", kind).is_file()
    # a second run with the same name is refused; --overwrite replaces it
    assert run("evaluate", "tiny", "--data", images, *FAST, "--out", out) == 2
    assert "--resume" in capsys.readouterr().err
    assert run("evaluate", "tiny", "--data", images, *FAST, "--n", "4", "--out", out, "--overwrite") == 0
    assert len(Atlas.open(out).evaluation("default").images) == 4


def test_a_killed_run_resumes_to_the_same_table(tiny_model, images, tmp_path, capsys, monkeypatch):
    whole = tmp_path / "whole"
    assert run("evaluate", "tiny", "--data", images, *FAST, "--out", whole) == 0
    real, calls = evaluate_module._score_chunk, []

    def killed_in_chunk_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the first chunk (3 methods) is done and checkpointed
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "_score_chunk", killed_in_chunk_two)
    out = tmp_path / "killed"
    capsys.readouterr()
    assert run("evaluate", "tiny", "--data", images, *FAST, "--out", out) == 130
    assert "--resume" in capsys.readouterr().err
    assert (out / ".evaluate-default.ckpt").is_file()
    monkeypatch.setattr(evaluate_module, "_score_chunk", real)
    # other settings: refused, naming them, and the checkpoint kept
    assert run("evaluate", "tiny", "--data", images, *FAST, "--seed", "5", "--out", out, "--resume") == 2
    err = capsys.readouterr().err
    assert "seed 0 (now 5)" in err and len(err.strip().splitlines()) == 1
    assert (out / ".evaluate-default.ckpt").is_file()
    calls.clear()
    monkeypatch.setattr(evaluate_module, "_score_chunk", lambda *a, **k: (calls.append(1), real(*a, **k)))
    assert run("evaluate", "tiny", "--data", images, *FAST, "--out", out, "--resume") == 0
    assert len(calls) == 3 * 2  # chunks two and three only
    assert _table(out) == _table(whole)
    assert not (out / ".evaluate-default.ckpt").exists()


def test_errors_are_one_line_before_any_work(tiny_model, images, tmp_path, capsys):
    out = tmp_path / "atlas"
    for bad, said in (
        (["--methods", "saliency,gradkam"], "gradcam"),
        (["--metrics", "road,pixel_flip"], "pixel_flipping"),
        (["--metric-option", "step=3"], "METRIC.OPTION=VALUE"),
        (["--metric-option", "road.stepz=3", "--metrics", "road"], "no option 'stepz'"),
        (["--name", "../up"], "evaluation name"),
        (["--target", "conv1:0"], "class scores"),
        (["--methods", "saliency,gradcam,edge", "--samples", "10"], "no method given takes the option"),
        (["--metrics", "road", "--metric-option", "road.order=42"], "order"),
    ):
        assert run("evaluate", "tiny", "--data", images, "--n", "2", *bad, "--out", out) == 2, bad
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, (bad, err)
        assert not out.exists(), bad


def test_evaluate_help_says_what_it_takes(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    assert run("evaluate", "--help") == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "LAYER:UNIT" not in text and "prob:N" in text  # evaluate explains class scores only
    assert "pointing_game" in text and "attribution_localisation" in text and "Python API only" in text


def test_each_method_keeps_its_own_defaults_and_takes_the_black_box_options(tiny_model, tmp_path):
    # nothing set: no fill or samples forced on the black-box methods (KernelSHAP / LIME draw 500
    # samples and fill zero, RISE fills zero, unless told)
    blocks = tmp_path / "blocks"  # images with regions, for SLIC (noise is one superpixel)
    blocks.mkdir()
    for i in range(2):
        img = np.zeros((32, 32, 3), np.uint8)
        img[:, 16:, i] = 255
        img[20:, :, 2] = 120
        Image.fromarray(img).save(blocks / f"b{i}.png")
    out = tmp_path / "a"
    args = ["--data", blocks, "--metrics", "average_drop", "--n", "2", "--chunk", "2", "--out", out]
    assert run("evaluate", "tiny", "--methods", "rise,occlusion", "--masks", 8, *args) == 0
    options = Atlas.open(out).evaluation("default").settings["options"]
    assert options["rise"] == {"masks": 8} and options["occlusion"] == {}
    # the explain options are there too: --segments, --cells, --samples, --fill
    more = ["--segments", 6, "--cells", 4, "--samples", 12, "--fill", "mean", "--name", "b"]
    assert run("evaluate", "tiny", "--methods", "rise,kernel_shap", "--masks", 8, *more, *args) == 0
    ev = Atlas.open(out).evaluation("b")
    assert ev.settings["options"]["kernel_shap"] == {"segments": 6, "samples": 12, "fill": "mean"}
    assert ev.settings["options"]["rise"] == {"masks": 8, "cells": 4, "fill": "mean"}
    assert np.isfinite(ev.scores).all()


def test_a_method_that_fails_on_every_image_exits_1(tiny_model, images, tmp_path, capsys, monkeypatch):
    from convscope.attribution import blackbox

    def broken(self, x, target):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(blackbox.Rise, "attribute", broken)
    args = ["--metrics", "average_drop", "--n", "2", "--chunk", "2", "--out", tmp_path / "a"]
    assert run("evaluate", "tiny", "--data", images, "--methods", "saliency,rise", "--masks", 4, *args) == 1
    captured = capsys.readouterr()
    assert "out of memory" in captured.out and "rise x average_drop" in captured.err
