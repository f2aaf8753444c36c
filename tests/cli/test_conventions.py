"""One spelling per concept on the command line (README, "Command-line conventions"), the old
spellings still accepted but hidden, and progress that reaches a log when stderr is no terminal."""

from __future__ import annotations

import re

import pytest
import typer

import convscope.zoo
from convscope.cli.main import app, main, modern_args
from convscope.testing import tiny_subject

COMMANDS = typer.main.get_command(app).commands


def _parse(command: str, args: list[str]) -> dict:
    """The parameters ``command`` gets from ``args`` (parsed as on the command line, not run)."""
    cmd = COMMANDS[command]
    with cmd.make_context(command, list(args)) as ctx:
        return dict(ctx.params)


@pytest.fixture()
def tiny_models(monkeypatch):
    """``tiny`` loads convscope.testing's TinyCNN (32 x 32 inputs), so commands run in a second."""
    real = convscope.zoo.load

    def load(model, *args, **kwargs):
        if model == "tiny":
            return tiny_subject(size=32).to(kwargs.get("device", "cpu"))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(convscope.zoo, "load", load)


def _help(command: str, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "250")
    assert main([command, "--help"]) == 0
    return capsys.readouterr().out


NEW = {  # command: spellings its --help shows
    "scan": ["--data", "--layers", "--batch-size", "--resume", "[model]"],
    "features": ["--data", "--layers", "--batch-size", "--resume", "[model]"],
    "dissect": ["--data", "--layers", "--batch-size", "--resume", "[model]"],
    "concepts": ["--data", "--layers", "--batch-size", "--resume", "[model]"],
    "explain": ["--data", "--layers", "--target", "[model]"],
    "evaluate": ["--data", "--layers", "--target", "--resume", "[model]"],
    "microscope": ["--data", "--layers", "--resume", "[model]"],
    "attack": ["--data", "--target", "[model]"],
    "fool": ["--classes", "[model]"],
    "classviz": ["--classes", "[model]"],
    "visualize": ["--layers", "--batch-size", "[model]"],
    "invert": ["--data", "--layers", "[model]"],
    "dream": ["--data", "--layers", "[model]"],
    "topk": ["--layers"],
    "rf": ["--layers"],
    "stimuli": ["--layers"],
    "neighbors": ["--layers"],
    "project": ["--layers"],
    "compare-scans": ["--layers"],
    "train": ["--data", "--resume", "--batch-size"],
    "finetune": ["--data", "--resume", "--batch-size", "[model]"],
    "filters": ["--data", "--layers"],
    "demo": ["[model]"],
    "layers": ["[model]"],
}
OLD = [
    r"--layer\b(?!s)",
    r"--batch\b(?!-)",
    r"--class\b(?!e)",
    "--images",
    r"--restart\b",
    "--model",
    r"\[images\]",
    r"\[data.arg\]",
    r"\[image\]",
    r"\[IMAGES\]",
]


@pytest.mark.parametrize("command", sorted(NEW))
def test_help_shows_the_one_spelling(command, capsys, monkeypatch):
    text = _help(command, capsys, monkeypatch)
    for name in NEW[command]:
        assert name in text, (command, name)
    for pattern in OLD:
        assert not re.search(pattern, text), (command, pattern)


def test_every_command_with_a_model_defaults_to_the_offline_one():
    for name, cmd in COMMANDS.items():
        first = next((p for p in cmd.params if p.param_type_name == "argument"), None)
        if first is not None and first.name in ("model", "target"):
            assert first.default == "efficientnet_lite0", name
            assert not first.required, name


OLD_SPELLINGS = [  # command, old args, parameter, value it must give
    ("topk", ["atlas", "--layer", "blocks.4", "--unit", "1"], "layers", "blocks.4"),
    ("rf", ["atlas", "--layer=blocks.2"], "layers", "blocks.2"),
    ("stimuli", ["atlas", "--layer", "blocks.2", "--unit", "1"], "layers", "blocks.2"),
    ("neighbors", ["atlas", "--layer", "bn2"], "layers", "bn2"),
    ("project", ["atlas", "--layer", "bn2"], "layers", "bn2"),
    ("compare-scans", ["a", "b", "--layer", "conv_head"], "layers", "conv_head"),
    ("explain", ["tiny", "cat.jpg", "--layer", "conv2"], "layers", "conv2"),
    ("explain", ["tiny", "cat.jpg", "sample:coffee"], "images", ["cat.jpg", "sample:coffee"]),
    ("dream", ["tiny", "sample:coffee", "--layer", "conv2"], "layers", "conv2"),
    ("dream", ["tiny", "sample:coffee", "--layer", "conv2"], "images", ["sample:coffee"]),
    ("invert", ["tiny", "sample:coffee"], "images", ["sample:coffee"]),
    ("attack", ["tiny", "cat.jpg", "--target", "413"], "images", ["cat.jpg"]),
    ("attack", ["tiny", "cat.jpg", "--target", "413"], "target", "413"),
    ("visualize", ["--layers", "conv2", "--batch", "4"], "batch_size", 4),
    ("fool", ["tiny", "--class", "3"], "classes", "3"),
    ("dissect", ["--concepts", "auto-color", "--images", "photos/"], "images", ["photos/"]),
    ("features", ["--restart"], "resume", False),
    ("train", ["data.tar.gz"], "data_arg", "data.tar.gz"),
    ("demo", ["--out", "d", "--model", "torchvision:resnet18"], "model", "torchvision:resnet18"),
    ("demo", ["--model=timm:resnet18"], "model", "timm:resnet18"),
    ("scan", ["--layer", "blocks.2"], "layers", "blocks.2"),
    ("concepts", ["--layer", "bn2", "--batch", "8"], "layers", "bn2"),
]


@pytest.mark.parametrize(("command", "args", "param", "value"), OLD_SPELLINGS)
def test_old_spellings_still_parse(command, args, param, value):
    assert _parse(command, args)[param] == value


def test_new_spellings_parse():
    assert _parse("explain", ["--data", "a.jpg", "--data", "sample:chelsea"])["data"] == [
        "a.jpg",
        "sample:chelsea",
    ]
    assert _parse("explain", [])["model"] == "efficientnet_lite0"
    assert _parse("features", [])["resume"] is False and _parse("features", ["--resume"])["resume"]
    assert _parse("train", ["--data", "x", "--resume"])["resume"]
    assert _parse("finetune", ["--resume"])["resume"]


def test_modern_args_leaves_values_and_the_rest_alone():
    assert modern_args("scan", ["--layers", "a", "--", "--layer"]) == ["--layers", "a", "--", "--layer"]
    assert modern_args("features", ["--restart", "--layer", "x"]) == ["--layers", "x"]
    assert modern_args("demo", ["--out", "o", "--model", "m"]) == ["m", "--out", "o"]


def test_old_spellings_run(tiny_models, tmp_path, capsys):
    # explain with the image after the model and --layer, attack with a numeric --target,
    # fool with --class, visualize with --batch: the old command lines keep working
    assert (
        main(
            [
                "explain",
                "tiny",
                "sample:coffee",
                "--method",
                "gradcam",
                "--layer",
                "conv2",
                "--out",
                str(tmp_path / "e"),
            ]
        )
        == 0
    )
    assert (tmp_path / "e" / "coffee_gradcam.png").exists()
    code = main(
        [
            "attack",
            "tiny",
            "sample:coffee",
            "--method",
            "fgsm",
            "--target",
            "3",
            "--eps",
            "8/255",
            "--out",
            str(tmp_path / "a"),
        ]
    )
    assert code in (0, 1)  # 1: the attack did not succeed, which is not an input error
    assert (tmp_path / "a" / "coffee_fgsm.png").exists()
    assert main(["fool", "tiny", "--class", "3", "--steps", "2", "--out", str(tmp_path / "f")]) == 0
    assert (tmp_path / "f" / "fool_3_gradient.png").exists()
    assert (
        main(
            [
                "visualize",
                "tiny",
                "--layer",
                "conv2",
                "--units",
                "0-1",
                "--batch",
                "1",
                "--steps",
                "2",
                "--size",
                "32",
                "--out",
                str(tmp_path / "v"),
            ]
        )
        == 0
    )
    assert (tmp_path / "v" / "conv2_units.png").exists()


def test_new_spellings_run(tiny_models, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    from convscope.inputs.samples import sample_view

    sample_view("chelsea").save(folder / "cat.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "e"
    assert (
        main(
            [
                "explain",
                "tiny",
                "--data",
                str(folder),
                "--data",
                "sample:coffee/centre",
                "--method",
                "saliency",
                "--target",
                "class:2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "cat_saliency.png").exists() and (out / "coffee_centre_saliency.png").exists()
    assert "broken.jpg" in capsys.readouterr().err  # skipped and counted, not fatal
    assert main(
        [
            "attack",
            "tiny",
            "--data",
            "sample:coffee",
            "--method",
            "fgsm",
            "--target",
            "class:3",
            "--out",
            str(tmp_path / "a"),
        ]
    ) in (0, 1)
    capsys.readouterr()
    assert (
        main(
            ["attack", "tiny", "--data", "sample:coffee", "--target", "conv2:1", "--out", str(tmp_path / "a")]
        )
        == 2
    )
    assert "class" in capsys.readouterr().err
    assert (
        main(["explain", "tiny", "--data", "sample:coffee", "--layers", "conv1,conv2", "--method", "gradcam"])
        == 2
    )
    assert "one layer" in capsys.readouterr().err
    assert main(["explain", "sample:coffee"]) == 2  # an image where the model goes: a hint
    assert "--data" in capsys.readouterr().err


def test_scan_takes_a_bundled_photo_in_data(tiny_models, tmp_path, capsys):
    out = tmp_path / "atlas"
    assert (
        main(
            [
                "scan",
                "tiny",
                "--data",
                "sample:c*",
                "--layers",
                "conv2",
                "--k",
                "2",
                "--threshold-sample",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    from convscope.atlas import Atlas

    names = set(Atlas.open(out).topk("conv2", 0).names)
    assert names and all(
        n.split("/")[0] in ("chelsea", "coffee", "coins", "colorwheel", "camera", "clock") for n in names
    )


RATE_ETA = re.compile(
    r"^(\S[^:]*): (\d+(?:\.\d)?)/(\d+) \(\d+%\), \d+\.\d+ [\w-]+/s, (ETA \d+:\d\d:\d\d|"
    r"ETA unknown|took \d+:\d\d:\d\d)"
)


def _progress_lines(err: str, label: str) -> list[tuple[float, int, str]]:
    out = []
    for line in err.splitlines():
        m = RATE_ETA.match(line)
        if m and m.group(1) == label:
            out.append((float(m.group(2)), int(m.group(3)), m.group(4)))
    return out


def test_progress_lines_when_not_a_terminal(tiny_models, tmp_path, capsys, monkeypatch):
    """stderr is captured (no terminal): plain lines with done/total, rate and ETA."""
    monkeypatch.setenv("CONVSCOPE_PROGRESS_INTERVAL", "0")
    assert (
        main(
            [
                "scan",
                "tiny",
                "--data",
                "convscope:samples",
                "--pattern",
                "c*",
                "--layers",
                "conv2",
                "--k",
                "2",
                "--threshold-sample",
                "4",
                "--batch-size",
                "6",
                "--out",
                str(tmp_path / "atlas"),
            ]
        )
        == 0
    )
    lines = _progress_lines(capsys.readouterr().err, "scanning")
    assert len(lines) >= 3, lines
    assert any(eta.startswith("ETA ") for _, _, eta in lines)
    assert lines[-1][0] == lines[-1][1] and lines[-1][2].startswith("took")
    assert all(a[0] <= b[0] for a, b in zip(lines, lines[1:]))


def test_explain_reports_progress_within_a_method(tiny_models, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_PROGRESS_INTERVAL", "0")
    assert (
        main(
            [
                "explain",
                "tiny",
                "--data",
                "sample:coffee",
                "--data",
                "sample:chelsea",
                "--method",
                "occlusion,saliency",
                "--window",
                "8",
                "--stride",
                "1",  # 625 positions: more than one batch even at the tiny model's auto batch
                "--out",
                str(tmp_path / "e"),
            ]
        )
        == 0
    )
    lines = _progress_lines(capsys.readouterr().err, "explaining")
    done = [d for d, total, _ in lines]
    assert {total for _, total, _ in lines} == {4}  # 2 methods x 2 images
    # occlusion (the first method) reports batches of positions, not only its end
    assert any(0 < d < 2 and d != 1 for d in done), done
    assert done[-1] == 4


def test_attribution_progress_callback(tiny_models):
    import torch

    from convscope.attribution import explain

    subject = tiny_subject(size=32)
    x = torch.rand(2, 3, 32, 32)
    for method, options in (
        ("occlusion", {"window": 8, "stride": 2, "batch": 16}),
        ("scorecam", {"batch": 4}),
        ("saliency", {}),
    ):
        seen = []
        explain(subject, x, method, progress=lambda d, t, seen=seen: seen.append((d, t)), **options)
        assert seen[0] == (0, 2) and seen[-1] == (2, 2), method
        assert all(t == 2 for _, t in seen)
        assert all(a <= b for (a, _), (b, _) in zip(seen, seen[1:])), method
        if method != "saliency":
            assert any(0 < d < 2 and d != 1 for d, _ in seen), (method, seen)


def test_progress_lines_interval(monkeypatch):
    import io

    from convscope.cli.common import ProgressLines

    clock = [100.0]
    buf = io.StringIO()
    bar = ProgressLines("scanning", 100, "img", buf, interval=10)
    bar.clock = lambda: clock[0]
    for t, done in ((0, 0), (4, 20), (9, 40), (11, 50), (15, 60), (21.5, 80), (25, 100)):
        clock[0] = 100.0 + t
        bar.update(done)
    lines = buf.getvalue().splitlines()
    assert lines == [
        "scanning: 50/100 (50%), 4.5 img/s, ETA 0:00:11",
        "scanning: 80/100 (80%), 3.7 img/s, ETA 0:00:05",
        "scanning: 100/100 (100%), 4.0 img/s, took 0:00:25",
    ]


def test_a_slow_rate_is_not_shown_as_zero():
    import io

    from convscope.cli.common import ProgressLines

    clock = [0.0]
    buf = io.StringIO()
    bar = ProgressLines("evaluating", 4, "maps", buf, interval=10)
    bar.clock = lambda: clock[0]
    bar.update(0)
    clock[0] = 50.0  # 1 map in 50 s: 0.02 maps/s
    bar.update(1)
    assert buf.getvalue().splitlines()[0] == "evaluating: 1/4 (25%), 0.020 maps/s, ETA 0:02:30"


def test_progress_lines_of_a_second_phase():
    # a new total starts a new phase: its own rate and its own closing line
    import io

    from convscope.cli.common import ProgressLines

    clock = [0.0]
    buf = io.StringIO()
    bar = ProgressLines("dissecting", 10, "img", buf, interval=1)
    bar.clock = lambda: clock[0]
    for t, done, total in (
        (0, 0, None),
        (2, 5, None),
        (4, 10, None),
        (4, 0, 40),
        (6, 10, None),
        (8, 40, None),
    ):
        clock[0] = t
        bar.update(done, total)
    assert buf.getvalue().splitlines() == [
        "dissecting: 5/10 (50%), 2.5 img/s, ETA 0:00:02",
        "dissecting: 10/10 (100%), 2.5 img/s, took 0:00:04",
        "dissecting: 10/40 (25%), 5.0 img/s, ETA 0:00:06",
        "dissecting: 40/40 (100%), 10.0 img/s, took 0:00:04",
    ]


def test_progress_interval_env(tiny_models, monkeypatch, capsys):
    monkeypatch.setenv("CONVSCOPE_PROGRESS_INTERVAL", "soon")
    assert main(["explain", "tiny", "--data", "sample:coffee", "--method", "saliency"]) == 2
    assert "CONVSCOPE_PROGRESS_INTERVAL" in capsys.readouterr().err


def test_a_failed_attack_exits_1(tiny_models, tmp_path):
    # a 1e-6 step changes no prediction, so the attack fails: its typer.Exit(1) is the exit code
    code = main(
        [
            "attack",
            "tiny",
            "--data",
            "sample:coffee",
            "--method",
            "fgsm",
            "--eps",
            "1e-6",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 1
    assert (tmp_path / "coffee_fgsm.png").exists()
