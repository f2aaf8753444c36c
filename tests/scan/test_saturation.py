"""A layer that ends in a clamp (ReLU6, Hardtanh) gives many images the same `max`, 6.0: those
ties rank by the spatial mean of the map (then the image index) whatever the batches or shards,
the run records the key and the fraction of tied units, and the scan warns (the CLI in one line)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import convscope
from convscope.inputs.sources import open_images
from convscope.preprocess import Preprocess
from convscope.scan import scan
from convscope.scan.result import SaturationWarning
from convscope.subject import Subject

OPTIONS = {"k": 5, "threshold_sample": 16}


class Clamped(nn.Module):
    """conv (strong weights) -> clamp at 6 -> pooled classifier."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.act = act
        self.fc = nn.Linear(6, 3)
        with torch.no_grad():
            self.conv.weight.mul_(8)
            self.conv.bias.fill_(2.0)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


def clamped_subject(act: str = "relu6") -> Subject:
    torch.manual_seed(0)
    model = Clamped(nn.ReLU6() if act == "relu6" else nn.Hardtanh(0.0, 6.0))
    return Subject(
        model, Preprocess(size=(24, 24), resize=None, mode="squash"), ["a", "b", "c"], name=f"clamped-{act}"
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("sat")
    rng = np.random.default_rng(3)
    for i in range(40):
        arr = (rng.random((24, 24, 3)) ** (1 + i % 3) * 255).astype(np.uint8)
        Image.fromarray(arr).save(root / f"{i:03d}.png")
    return root


def _maps(subject, src, layer):
    with subject.record([layer]) as rec, torch.no_grad():
        subject(torch.stack([src[i][0] for i in range(len(src))]))
    return rec[layer].flatten(2)  # (N, U, P)


@pytest.mark.filterwarnings("ignore::convscope.scan.result.SaturationWarning")
@pytest.mark.parametrize("act", ["relu6", "hardtanh"])
def test_saturated_ties_rank_by_spatial_mean_in_any_batches_and_shards(folder, act):
    subject = clamped_subject(act)
    src = open_images(folder, transform=subject.transform)
    with pytest.warns(SaturationWarning, match=r"act \(\d+% of units\)"):
        ref = scan(subject, src, ["conv", "act"], batch_size=16, **OPTIONS)
    flat = _maps(subject, src, "act")
    peak, mean = flat.max(2).values, flat.mean(2)
    assert ((peak == 6.0).float().mean(0) > 0.3).all()  # every unit saturates on many images
    for u in range(6):
        p, m = peak[:, u].tolist(), mean[:, u].tolist()
        expected = sorted(range(40), key=lambda i: (-p[i], -m[i], i))[:5]
        assert ref.topk("act", u, "max").images.tolist() == expected, u
        at_six = [i for i in range(40) if p[i] == 6.0]
        assert expected != sorted(at_six)[:5]  # not the image index: that was arbitrary
    # the same lists from other batches (the same 16-image calibration sample) and from the
    # merge of two interleaved shards
    small = scan(subject, src, ["conv", "act"], batch_size=4, **OPTIONS)
    kw = {**OPTIONS, "batch_size": 7, "thresholds": ref.thresholds}
    halves = scan(subject, src, ["conv", "act"], indices=range(0, 40, 2), **kw).merge(
        scan(subject, src, ["conv", "act"], indices=range(1, 40, 2), **kw)
    )
    for other in (small, halves):
        for layer in ("conv", "act"):
            for crit in ("max", "mean", "area"):
                a, b = other.states[layer].topk[crit], ref.states[layer].topk[crit]
                assert torch.equal(a.images, b.images), (layer, crit)
                assert torch.allclose(a.scores, b.scores, atol=1e-5)
    # recorded with the run: the key, and the tied fraction per layer (none before the clamp)
    assert ref.config["secondary_key"] == {"max": "mean", "mean": "max", "area": "mean"}
    ties = ref.config["tied_at_max"]
    assert ties["act"] == 1.0 and ties["conv"] == 0.0
    assert list(ref.saturated) == ["act"] and halves.config["tied_at_max"] == ties


def test_a_layer_that_does_not_saturate_gives_no_warning(folder, recwarn):
    subject = clamped_subject()
    src = open_images(folder, transform=subject.transform)
    res = scan(subject, src, ["conv"], **OPTIONS)
    assert not [w for w in recwarn if issubclass(w.category, SaturationWarning)]
    assert res.saturated == {} and res.saturation_message() is None


def test_scan_command_says_so_in_one_line(folder, tmp_path, monkeypatch, capsys):
    from convscope.atlas import Atlas
    from convscope.cli.main import main

    real = convscope.zoo.load
    monkeypatch.setattr(
        convscope.zoo,
        "load",
        lambda model, *a, **kw: clamped_subject() if model == "clamped" else real(model, *a, **kw),
    )
    out = tmp_path / "atlas"
    assert (
        main(
            [
                "scan",
                "clamped",
                "--data",
                str(folder),
                "--layers",
                "act",
                "--k",
                "4",
                "--threshold-sample",
                "8",
                "--batch-size",
                "8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    cap = capsys.readouterr()
    lines = [ln for ln in (cap.out + cap.err).splitlines() if "saturate" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: act (100% of units)"), cap
    assert "SaturationWarning" not in cap.out + cap.err
    config = Atlas.open(out).run()["config"]
    assert config["tied_at_max"] == {"act": 1.0} and config["secondary_key"]["max"] == "mean"
