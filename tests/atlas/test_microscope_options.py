"""The microscope checks every chosen stage's options before its first stage starts: a misspelt
name is refused with its close match and the valid names, an impossible value in one line, the
plan reports the same, and nothing is written."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import convscope.atlas.microscope_build as M
from convscope.atlas.microscope_build import STAGES, microscope_to_atlas
from convscope.errors import UserInputError
from convscope.testing import tiny_subject

FAST = {
    "scan": {"k": 2, "batch_size": 4, "threshold_sample": 4, "directions": 0, "workers": 0},
    "rf": {"units": 1, "top": 1, "stride": 16},
}
ALL = [s for s in STAGES if M.available(s)]
BAD = [
    ({"activation_atlas": {"grid": 0}}, None, "grid must be"),
    ({"rf": {"pach": 11}}, None, r"unknown rf option 'pach' \(did you mean 'patch'\?\); its options: crit"),
    ({"rf": {"fill": "blur"}}, None, "fill is one of noise"),
    ({"rf": {"patch": 33}}, None, "larger than the 32 px input"),
    ({"rf": {"units": 0}}, None, "units must be a whole number >= 1"),
    ({"rf": {"stride": 0}}, None, "stride is 'auto' or a number of px >= 1"),
    ({"scan": {"k": 0}}, None, "k and batch size"),
    ({"scan": {"criterion": ["max"]}}, None, "did you mean 'criteria'"),
    ({"scan": {"criteria": ["maxx"]}}, None, "unknown criteria"),
    ({"visuals": {"stepps": 3}}, None, "did you mean 'steps'"),
    ({"visuals": {"param": "mako"}}, None, "unknown parametrisation 'mako'"),
    ({"visuals": {"kinds": ["max"]}}, None, "unknown kind"),
    ({"visuals": {"size": 0}}, None, "size is a side"),
    ({"dissect": {"batch_size": 0}}, None, "batch_size must be a whole number >= 1"),
    ({"dissect": {"quantil": 0.01}}, None, "did you mean 'quantile'"),
    ({"activation_atlas": {"layout": "tnse"}}, None, "layout must be one of"),
    ({"activation_atlas": {"gird": 4}}, None, "did you mean 'grid'"),
    ({"activation_atlas": {"layers": "nope"}}, None, "nope"),
    ({}, "nmff:4", "did you mean 'nmf'"),
    ({"concepts": {"visualize": {"stepz": 2}}}, "nmf:4", "did you mean 'visualize.steps'"),
    ({"concepts": {"k": 0}}, "nmf:4", "k must be a whole number >= 1"),
    ({"concepts": {"solvr": "mu"}}, "nmf:4", "did you mean 'solver'"),
]


@pytest.fixture(scope="module")
def subject():
    return tiny_subject(size=32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("options-images")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(out / f"im{i}.png")
    return out


@pytest.fixture()
def no_stage_runs(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a stage started")

    monkeypatch.setattr(M, "RUNNERS", dict.fromkeys(STAGES, refuse))


@pytest.mark.parametrize("plan", [False, True], ids=["run", "plan"])
@pytest.mark.parametrize(("options", "concepts", "message"), BAD)
def test_a_bad_option_is_refused_before_any_stage(subject, folder, tmp_path, no_stage_runs, options, concepts,
                                                  message, plan):  # fmt: skip
    stages = ALL if concepts else [s for s in ALL if s != "concepts"]
    with pytest.raises(UserInputError, match=message) as e:
        microscope_to_atlas(subject, folder, tmp_path / "a", layers="conv2", stages=stages, concepts=concepts,
                            options=options, plan_only=plan)  # fmt: skip
    assert "\n" not in str(e.value)
    assert not (tmp_path / "a").exists()  # no atlas, no scan


def test_only_the_chosen_stages_are_checked_and_a_good_set_runs(subject, folder, tmp_path):
    bad_later = {**FAST, "activation_atlas": {"grid": 0}, "visuals": {"param": "mako"}}
    built = microscope_to_atlas(subject, folder, tmp_path / "a", layers="conv2", stages=["scan", "rf"],
                                options=bad_later)  # fmt: skip
    assert built.ran == ["scan", "rf"]
    with pytest.raises(UserInputError, match="grid must be"):
        microscope_to_atlas(subject, folder, tmp_path / "a", layers="conv2", stages=["activation_atlas"],
                            options=bad_later, resume=True)  # fmt: skip
    assert [r["name"] for r in built.stages] == ["scan", "rf"]  # nothing recorded for the refused stage
