"""Issue 17: classes by name on the command line, errors in command-line spelling, close matches
for layers before any work."""

from __future__ import annotations

import json
import urllib.error

import torch

from convscope.cli.main import main


def test_explain_targets_a_class_by_name(tmp_path, capsys):
    out = tmp_path / "ex"
    assert (
        main(
            [
                "explain",
                "--data",
                "sample:chelsea",
                "--method",
                "saliency",
                "--target",
                "class:Zebra",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads((out / "explain.json").read_text())[0]["target"] == "logit(zebra)"
    capsys.readouterr()
    assert (
        main(
            [
                "explain",
                "--data",
                "sample:chelsea",
                "--method",
                "saliency",
                "--target",
                "class:zebar",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "did you mean 'zebra'" in capsys.readouterr().err
    assert main(["explain", "--data", "sample:chelsea", "--target", "zebra", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "class:N" in err and "did you mean class:zebra?" in err


def test_explain_checks_the_cam_layer_before_any_work(tmp_path, capsys):
    out = tmp_path / "ex"
    assert (
        main(
            [
                "explain",
                "--data",
                "sample:chelsea",
                "--method",
                "saliency,gradcam",
                "--layers",
                "blocks.55",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "did you mean blocks.5" in capsys.readouterr().err
    assert not out.exists()  # the saliency map was not computed first


def test_attack_fool_and_classviz_take_class_names(tmp_path, capsys):
    # (that 8 steps of 8/255 reach "-> zebra" was checked by hand; too slow for a test)
    assert main(
        [
            "attack",
            "--data",
            "sample:chelsea",
            "--target",
            "Zebra",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "a"),
        ]
    ) in (0, 1)
    assert "error" not in capsys.readouterr().err
    for args in (
        ["attack", "--data", "sample:chelsea", "--target", "zebar"],
        ["fool", "--classes", "espreso"],
        ["classviz", "--classes", "285,espreso"],
    ):
        assert main([*args, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert "did you mean 'zebra'" in err or "did you mean 'espresso'" in err
    assert not (tmp_path / "x").exists()


def test_class_lists_mix_indices_ranges_and_names(default_subject):
    from convscope.cli.common import parse_classes

    assert parse_classes(default_subject, "espresso, 0-2,Egyptian_cat") == [967, 0, 1, 2, 285]
    assert parse_classes(default_subject, "three-toed sloth") == [364]


def test_errors_use_command_line_spelling(tmp_path, capsys, monkeypatch):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    assert main(["layers", "torchvision:squeezenet1_0"]) != 0
    err = capsys.readouterr().err
    assert "--weights none" in err and "weights=None in Python" in err
    path = tmp_path / "w.pt"
    torch.save({"a": torch.zeros(1)}, path)
    assert main(["layers", str(path)]) == 2
    assert "--arch torchvision:resnet18" in capsys.readouterr().err
    assert main(["layers", "resnet18"]) == 2
    assert "--arch ARCH" in capsys.readouterr().err
