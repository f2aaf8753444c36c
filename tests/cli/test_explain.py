"""``convscope explain``'s options for the black-box methods and LRP reach the methods."""

from __future__ import annotations

import pytest

import convscope.attribution.api
import convscope.zoo
from convscope.attribution import blackbox  # noqa: F401  (registers rise, kernel_shap, lime)
from convscope.cli.main import main
from convscope.testing import tiny_subject


@pytest.fixture()
def spied(monkeypatch):
    """``tiny`` loads a 64 x 64 TinyCNN; the options each method is called with are kept."""
    real_load, real_explain = convscope.zoo.load, convscope.attribution.api.explain
    calls: dict[str, dict] = {}

    def load(model, *args, **kwargs):
        return tiny_subject(size=64) if model == "tiny" else real_load(model, *args, **kwargs)

    def explain(subject, x, method, **kw):
        calls[method] = {k: v for k, v in kw.items() if k not in ("target", "progress")}
        return real_explain(subject, x, method, **kw)

    monkeypatch.setattr(convscope.zoo, "load", load)
    monkeypatch.setattr(convscope.attribution.api, "explain", explain)
    return calls


def test_black_box_and_lrp_options_reach_their_methods(spied, tmp_path):
    pytest.importorskip("captum")
    pytest.importorskip("zennit")
    args = ["explain", "tiny", "--data", "sample:chelsea", "--out", str(tmp_path), "--target", "class:1"]
    opts = ["--masks", "16", "--cells", "4", "--segments", "8", "--samples", "20", "--composite", "epsilon"]
    assert main([*args, "--method", "rise,kernel_shap,lime,lrp,occlusion,smoothgrad", *opts]) == 0
    assert spied["rise"] == {"masks": 16, "cells": 4, "seed": 0}  # no --fill: RISE's own zero
    assert spied["kernel_shap"] == spied["lime"] == {"segments": 8, "samples": 20, "seed": 0}
    assert spied["lrp"] == {"composite": "epsilon"}
    assert spied["smoothgrad"]["samples"] == 20 and "fill" not in spied["occlusion"]
    for m in ("rise", "kernel_shap", "lime", "lrp"):
        assert (tmp_path / f"chelsea_{m}.png").exists()
    assert main([*args, "--method", "rise", "--masks", "4", "--fill", "blur"]) == 0
    assert spied["rise"]["fill"] == "blur"


def test_an_option_no_chosen_method_takes_is_refused(spied, tmp_path, capsys):
    args = ["explain", "tiny", "--data", "sample:chelsea", "--out", str(tmp_path / "o")]
    assert main([*args, "--method", "saliency,gradcam", "--samples", "10"]) == 2  # as evaluate
    err = capsys.readouterr().err
    assert "no method given takes the option 'samples'" in err and len(err.strip().splitlines()) == 1
    assert spied == {} and not (tmp_path / "o").exists()
    assert main([*args, "--method", "saliency,smoothgrad", "--samples", "3"]) == 0  # one takes it
    assert "samples" not in spied["saliency"] and spied["smoothgrad"]["samples"] == 3


def test_explain_help_lists_the_black_box_methods(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["explain", "--help"]) == 0
    text = capsys.readouterr().out
    for word in ("rise", "kernel_shap", "lime", "lrp", "--masks", "--segments", "--composite"):
        assert word in text
    assert "ignore the model: edge, random" in " ".join(text.split())
