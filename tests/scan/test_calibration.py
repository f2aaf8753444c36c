"""The calibration sample of `area` thresholds holds the same images whatever broken files lie
beside them: they are replaced by the next images in the sample's order, in one process (and
in the Ray engine, tests/scale/test_ray.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.inputs.sources import open_images
from convscope.scan import scan
from convscope.testing import tiny_subject

OPTIONS = {"k": 4, "batch_size": 8, "threshold_sample": 16, "directions": 2}


def write_textures(root, n: int = 40) -> None:
    """``n`` random-texture PNGs in two classes (far more than the 16-image sample)."""
    rng = np.random.default_rng(17)
    for i in range(n):
        d = root / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        arr = (rng.random((36, 40, 3)) ** (1 + i % 4) * 255).astype(np.uint8)
        Image.fromarray(arr).save(d / f"{i:03d}.png")


def add_broken_files(root) -> None:
    """Files that cannot be decoded, named so that they sort among the good ones."""
    good = sorted(root.rglob("*.png"))
    for j, p in enumerate(good[::3]):
        (p.parent / f"{p.stem}a.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
        (p.parent / f"{p.stem}b.png").write_bytes(p.read_bytes()[:200])  # truncated
        if j % 2:
            (p.parent / f"{p.stem}c.txt").write_text("notes")
    (root / "c0" / "loop.png").symlink_to("loop.png")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    clean, dirty = tmp_path_factory.mktemp("clean"), tmp_path_factory.mktemp("dirty")
    write_textures(clean)
    write_textures(dirty)
    add_broken_files(dirty)
    return clean, dirty


def by_name(result, layer: str, criterion: str, direction: bool = False):
    units = result.directions[layer].shape[0] if direction else result.channels[layer]
    return [result.topk(layer, u, criterion, direction=direction).names for u in range(units)]


def assert_same_scan(a, b, layers, exact: bool = True) -> None:
    """Two scans of the same good images (under other indices) agree: thresholds (bit for bit,
    or ``exact=False`` to float rounding, for batches made of other images) and every
    criterion's top-K images by name."""
    for layer in layers:
        if exact:
            assert torch.equal(a.states[layer].thresholds, b.states[layer].thresholds), layer
        else:
            torch.testing.assert_close(
                a.states[layer].thresholds, b.states[layer].thresholds, rtol=1e-5, atol=1e-6
            )
        for crit in ("max", "mean", "area"):
            assert by_name(a, layer, crit) == by_name(b, layer, crit), (layer, crit)
            assert by_name(a, layer, crit, True) == by_name(b, layer, crit, True), (layer, crit)


def test_broken_files_do_not_change_area_results(folders):
    subject = tiny_subject()
    clean, dirty = (open_images(f, transform=subject.transform) for f in folders)
    assert len(dirty) > len(clean) + 20
    a = scan(subject, clean, ["block", "fc"], **OPTIONS)
    b = scan(subject, dirty, ["block", "fc"], **OPTIONS)
    assert len(b.skipped) == len(dirty) - len(clean) and a.processed == b.processed == 40
    assert_same_scan(a, b, ["block", "fc"])
    # the sample matters: thresholds over the whole dataset are other ones
    whole = scan(subject, clean, ["block"], **{**OPTIONS, "threshold_sample": 1000})
    assert not torch.allclose(whole.states["block"].thresholds, a.states["block"].thresholds)
    # the sample keeps its size: 16 images that decode (a scan of the sample alone says so)
    cal = scan(subject, dirty, ["block"], **OPTIONS, calibration_only=True)
    assert cal.processed == 16 and torch.equal(cal.states["block"].thresholds, b.states["block"].thresholds)
    # read again from disk when the sample's activations do not fit in memory: the same
    c = scan(subject, dirty, ["block", "fc"], **OPTIONS, buffer_bytes=0)
    assert_same_scan(b, c, ["block", "fc"])


def test_resumed_scan_keeps_its_sample(folders, tmp_path):
    subject = tiny_subject()
    dirty = open_images(folders[1], transform=subject.transform)
    ref = scan(subject, dirty, ["block"], **OPTIONS)
    ckpt = tmp_path / "scan.ckpt"

    class Stop(Exception):
        pass

    def stop_after_calibration(done, total):
        if ckpt.exists():  # saved after the calibration sample and after every batch since
            raise Stop

    with pytest.raises(Stop):
        scan(
            subject,
            dirty,
            ["block"],
            **OPTIONS,
            checkpoint=ckpt,
            checkpoint_every=0,
            progress=stop_after_calibration,
        )
    saved = torch.load(ckpt, weights_only=True)
    assert len(saved["sample"]) > 16 and saved["position"] < len(dirty)  # broken ones replaced
    resumed = scan(subject, dirty, ["block"], **OPTIONS, checkpoint=ckpt, resume=True)
    assert_same_scan(ref, resumed, ["block"])
