"""``convscope microscope``: the plan, the stages run and recorded, a resumed run keeping the
stages done, refusals before the model loads (on the tiny model)."""

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
    loads = []

    def load(model, *args, **kwargs):
        if model == "tiny":
            loads.append(model)
            s = tiny_subject(size=32)
            s.spec = {"name": "tiny", "model": "tiny", "weights": None, "arch": None}
            return s.to(kwargs.get("device") or "cpu")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(convscope.zoo, "load", load)
    return loads


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    out = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(out / f"im{i}.png")
    return out


def run(*args) -> int:
    return main([str(a) for a in args])


def test_plan_prints_the_stages_and_writes_nothing(tiny_model, images, tmp_path, capsys):
    out = tmp_path / "a"
    args = ("microscope", "tiny", "--data", images, "--out", out, "--layers", "conv2", "--units", 2)
    assert run(*args, "--steps", 2, "--stages", "scan,visuals,rf", "--plan") == 0
    text = capsys.readouterr().out
    for stage in ("scan", "visuals", "rf"):
        assert stage in text
    assert "4 images x 2 steps" in text and "total about" in text and "dissect" not in text
    assert not out.exists()


def test_stages_run_recorded_and_resumed(tiny_model, images, tmp_path, capsys):
    out = tmp_path / "a"
    args = ("microscope", "tiny", "--data", images, "--out", out, "--layers", "conv2", "--units", 2)
    assert run(*args, "--steps", 2, "--stages", "scan,visuals") == 0
    text = capsys.readouterr().out
    assert "ran scan, visuals" in text and f"convscope serve {out}" in text
    atlas = Atlas.open(out, readonly=True)
    assert [(r["name"], r["status"]) for r in atlas.stages()] == [("scan", "done"), ("visuals", "done")]
    assert atlas.visual_units("conv2") == {0, 1} and atlas.visuals("conv2", 0)[0]["steps"] == 2
    assert run(*args, "--steps", 2, "--stages", "scan,visuals") == 2  # neither --resume nor --overwrite
    assert "--resume" in capsys.readouterr().err
    assert run(*args, "--steps", 2, "--stages", "scan,visuals", "--resume") == 0
    assert "ran nothing; kept scan, visuals" in capsys.readouterr().out


def test_refusals_before_the_model_loads(tiny_model, images, tmp_path, capsys):
    args = ("microscope", "tiny", "--data", images, "--out", tmp_path / "a")
    assert run(*args, "--stages", "scan,paint") == 2
    assert "unknown stage(s) paint" in capsys.readouterr().err
    assert run(*args, "--units", "some") == 2
    assert "--units is 'all' or a number" in capsys.readouterr().err
    assert tiny_model == [] and not (tmp_path / "a").exists()


@pytest.mark.parametrize("plan", [(), ("--plan",)], ids=["run", "plan"])
def test_bad_stage_options_refused_before_the_scan(tiny_model, images, tmp_path, capsys, plan):
    args = ("microscope", "tiny", "--data", images, "--out", tmp_path / "a", "--layers", "conv2", *plan)
    assert run(*args, "--concepts", "nmff:4") == 2
    assert "unknown concept method 'nmff' (did you mean 'nmf'?)" in capsys.readouterr().err
    assert run(*args, "--stages", "scan,concepts", "--concepts", "sea-topk:4") == 2
    assert "did you mean 'sae-topk'?" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_precision_and_layout_reach_the_visuals_stage(tiny_model, images, tmp_path, capsys, monkeypatch):
    import convscope.synthesis.layer_visuals as LV

    got = []
    real = LV.optimize
    monkeypatch.setattr(LV, "optimize", lambda *a, **k: got.append(k.get("accel")) or real(*a, **k))
    monkeypatch.setenv("CONVSCOPE_PROGRESS_INTERVAL", "0")  # a progress line at every update
    out = tmp_path / "a"
    args = ("microscope", "tiny", "--data", images, "--out", out, "--layers", "conv2", "--units", 2)
    args += ("--steps", 2, "--stages", "visuals")
    assert run(*args, "--precision", "bf16", "--channels-last") == 0
    assert got and all(a.precision == "bf16" and a.channels_last is True for a in got)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("visuals:")]
    assert lines and "/4 (" in lines[0] and all(" img/s" in line for line in lines)  # 2 units x 2 kinds
    assert any("ETA" in line for line in lines) and "took" in lines[-1]
    atlas = Atlas.open(out, readonly=True)
    (row,) = atlas.stages()
    assert row["settings"]["accel"] == {"precision": "bf16", "channels_last": True, "decode": "cpu"}
    assert atlas.visual_layers()[0]["settings"]["precision"] == "bf16"
    assert run(*args, "--resume") == 2  # made in bf16: an fp32 resume is refused, by name
    assert "accel" in capsys.readouterr().err
    loads = len(tiny_model)
    assert run(*args, "--precision", "fp8", "--overwrite") == 2
    assert "precision must be one of" in capsys.readouterr().err and len(tiny_model) == loads
