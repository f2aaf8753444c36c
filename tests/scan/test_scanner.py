from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.errors import LayerNotFoundError, UserInputError
from convscope.inputs.sources import open_images
from convscope.quantiles import quantile_thresholds
from convscope.scan import ScanMismatchError, scan
from convscope.testing import tiny_subject


@pytest.fixture(scope="module")
def subject():
    return tiny_subject()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """60 random-texture images in 3 classes, plus one corrupt file and one text file."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(60):
        d = root / f"c{i % 3}"
        d.mkdir(exist_ok=True)
        arr = (rng.random((40, 48, 3)) ** (1 + i % 5) * 255).astype(np.uint8)
        Image.fromarray(arr).save(d / f"{i:03d}.png")
    (root / "c0" / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "c1" / "readme.txt").write_text("hello")
    return root


def _all_acts(subject, source, layer):
    """Brute force: the layer's activations for every readable image, by source index."""
    out = {}
    for i in range(len(source)):
        t, idx, err = source[i]
        if err is None:
            with subject.record([layer]) as rec:
                subject(t[None])
            out[idx] = rec[layer][0]
    return out


def test_scan_matches_brute_force(subject, folder):
    src = open_images(folder, transform=subject.transform)
    res = scan(subject, src, ["block", "fc"], k=4, batch_size=7, threshold_sample=1000)
    assert res.processed == 60 and len(res.skipped) == 2
    assert {src.records[i].name for i, _ in res.skipped} == {"c0/bad.jpg", "c1/readme.txt"}
    acts = _all_acts(subject, src, "block")
    idx = np.array(sorted(acts))
    a = torch.stack([acts[i] for i in idx])  # (N, C, H, W)
    flat = a.flatten(2)
    # thresholds: the sample covers the whole dataset, so they count exactly the values above
    # the exact quantile, from the middle of the gap between the values they separate
    vals = a.transpose(0, 1).reshape(a.shape[1], -1)
    exact = quantile_thresholds(vals)[:, None]
    t = res.states["block"].thresholds[:, None]
    assert torch.equal(vals > t, vals > exact)
    below = torch.where(vals <= exact, vals, -torch.inf).max(1).values
    above = torch.where(vals > exact, vals, torch.inf).min(1).values
    assert torch.allclose(t[:, 0], (below + above) / 2, atol=1e-6)
    scores = {
        "max": flat.max(2).values,
        "mean": flat.mean(2),
        "area": (flat > res.states["block"].thresholds.view(1, -1, 1)).float().mean(2),
    }
    for crit, s in scores.items():
        for u in range(a.shape[1]):
            top = res.topk("block", u, crit)
            best = np.sort(s[:, u].numpy())[::-1][:4]
            assert np.allclose(top.scores, best, atol=1e-5), (crit, u)
            assert np.allclose(s[np.searchsorted(idx, top.images), u].numpy(), top.scores, atol=1e-5)
    # the position of the maximum is the argmax of the unit's map in that image
    top = res.topk("block", 2, "max")
    m = acts[int(top.images[0])][2]
    assert m[top.ys[0], top.xs[0]] == m.max()
    stats = res.stats("block")
    vals = a.transpose(0, 1).reshape(a.shape[1], -1).double()
    assert np.allclose(stats.mean, vals.mean(1).numpy(), atol=1e-5)
    assert np.allclose(stats.std, vals.std(1, unbiased=False).numpy(), atol=1e-5)
    assert np.allclose(stats.max, vals.max(1).values.numpy(), atol=1e-5)
    # logit layer (no map): one value per image
    top = res.topk("fc", 0, "max")
    assert (top.ys == 0).all() and len(top) == 4


def test_threshold_from_a_sample_is_close_to_the_dataset_quantile(subject, folder):
    src = open_images(folder, transform=subject.transform)
    res = scan(subject, src, ["conv1"], k=2, batch_size=8, threshold_sample=16, criteria=["area"])
    acts = _all_acts(subject, src, "conv1")
    a = torch.stack(list(acts.values()))
    vals = a.transpose(0, 1).reshape(a.shape[1], -1)
    above = (vals > res.states["conv1"].thresholds.view(-1, 1)).float().mean(1)
    # 16 of 60 images: the fraction of all values above the estimate is 0.5% +- 0.25%
    assert torch.all((above > 0.0025) & (above < 0.0075)), above


def test_directions_are_scanned_like_units(subject, folder):
    src = open_images(folder, transform=subject.transform)
    res = scan(subject, src, ["conv2"], k=3, directions=5, seed=3, batch_size=16, criteria=["max", "mean"])
    d = res.directions["conv2"]
    assert d.shape == (5, 16) and torch.allclose(d.norm(dim=1), torch.ones(5))
    acts = _all_acts(subject, src, "conv2")
    idx = sorted(acts)
    proj = torch.einsum("nchw,dc->ndhw", torch.stack([acts[i] for i in idx]), d)
    for j in range(5):
        top = res.topk("conv2", j, "mean", direction=True)
        expected = proj[:, j].mean(dim=(1, 2))
        order = sorted(range(len(idx)), key=lambda i: -expected[i])[:3]
        assert top.images.tolist() == [idx[i] for i in order]
    again = scan(subject, src, ["conv2"], k=3, directions=5, seed=3, criteria=["max"])
    assert torch.equal(again.directions["conv2"], d)
    other = scan(subject, src, ["conv2"], k=3, directions=5, seed=4, criteria=["max"])
    assert not torch.equal(other.directions["conv2"], d)
    with pytest.raises(UserInputError, match="no direction 5"):
        res.topk("conv2", 5, direction=True)


def test_merge_of_halves_equals_full_scan(subject, folder):
    src = open_images(folder, transform=subject.transform)
    n = len(src)
    full = scan(subject, src, ["block", "conv2"], k=5, directions=2, batch_size=8, threshold_sample=16)
    # Interleaved halves: other batches than the full scan's, so scores agree to rounding.
    first = scan(
        subject,
        src,
        ["block", "conv2"],
        k=5,
        directions=2,
        batch_size=8,
        thresholds=full.thresholds,
        indices=range(0, n, 2),
    )
    second = scan(
        subject,
        src,
        ["block", "conv2"],
        k=5,
        directions=2,
        batch_size=8,
        thresholds=full.thresholds,
        indices=range(1, n, 2),
    )
    merged = first.merge(second)
    assert merged.processed == full.processed
    assert sorted(merged.skipped) == sorted(full.skipped)
    for layer in ("block", "conv2"):
        for crit in ("max", "mean", "area"):
            a, b = merged.states[layer].topk[crit], full.states[layer].topk[crit]
            assert torch.allclose(a.scores, b.scores, atol=1e-5)
            assert torch.equal(a.images, b.images), (layer, crit)
        assert torch.allclose(merged.states[layer].sum, full.states[layer].sum, rtol=1e-6)
    with pytest.raises(ScanMismatchError):
        scan(subject, src, ["block"], k=5, directions=2, batch_size=8, indices=range(10)).merge(
            scan(subject, src, ["block"], k=5, directions=2, batch_size=8, indices=range(10, 20))
        )


def test_merge_is_bit_exact_when_batches_coincide(subject, folder):
    src = open_images(folder, transform=subject.transform)
    full = scan(subject, src, ["block"], k=5, batch_size=8, criteria=["max", "mean"])
    a = scan(subject, src, ["block"], k=5, batch_size=8, criteria=["max", "mean"], indices=range(0, 32))
    b = scan(
        subject, src, ["block"], k=5, batch_size=8, criteria=["max", "mean"], indices=range(32, len(src))
    )
    merged = a.merge(b)
    for crit in ("max", "mean"):
        assert torch.equal(merged.states["block"].topk[crit].scores, full.states["block"].topk[crit].scores)
        assert torch.equal(merged.states["block"].topk[crit].images, full.states["block"].topk[crit].images)


class _Killed(Exception):
    pass


def test_resume_after_interruption_gives_the_same_result(subject, folder, tmp_path):
    src = open_images(folder, transform=subject.transform)
    kw = dict(k=4, directions=3, batch_size=6, threshold_sample=12, seed=1)
    ref = scan(subject, src, ["block", "fc"], **kw)
    ckpt = tmp_path / "scan.ckpt"
    calls = []

    def die(done, total):
        calls.append(done)
        if done >= 40:
            raise _Killed

    with pytest.raises(_Killed):
        scan(subject, src, ["block", "fc"], checkpoint=ckpt, checkpoint_every=0, progress=die, **kw)
    assert ckpt.exists()
    resumed = scan(subject, src, ["block", "fc"], checkpoint=ckpt, resume=True, **kw)
    assert resumed.processed == ref.processed and resumed.skipped == ref.skipped
    for layer in ("block", "fc"):
        for crit in ("max", "mean", "area"):
            assert torch.equal(resumed.states[layer].topk[crit].images, ref.states[layer].topk[crit].images)
            assert torch.equal(resumed.states[layer].topk[crit].scores, ref.states[layer].topk[crit].scores)
        assert torch.equal(resumed.states[layer].sum, ref.states[layer].sum)
    with pytest.raises(Exception, match="other settings"):
        scan(subject, src, ["block"], checkpoint=ckpt, resume=True, **kw)


def test_unbuffered_calibration_gives_the_same_result(subject, folder):
    src = open_images(folder, transform=subject.transform)
    a = scan(subject, src, ["block"], k=4, batch_size=8, threshold_sample=24)
    b = scan(subject, src, ["block"], k=4, batch_size=8, threshold_sample=24, buffer_bytes=0)
    assert torch.equal(a.states["block"].thresholds, b.states["block"].thresholds)
    for crit in ("max", "mean", "area"):
        assert torch.equal(a.states["block"].topk[crit].images, b.states["block"].topk[crit].images)


def test_bad_arguments_fail_before_work(subject, folder):
    src = open_images(folder, transform=subject.transform)
    seen = []
    with pytest.raises(LayerNotFoundError, match="block"):
        scan(subject, src, ["blok"], progress=lambda d, t: seen.append(d))
    with pytest.raises(UserInputError, match="criteria"):
        scan(subject, src, ["block"], criteria=["median"], progress=lambda d, t: seen.append(d))
    with pytest.raises(UserInputError):
        scan(subject, src, ["block"], k=0)
    assert not seen


def test_stages_and_all_conv(subject, default_subject):

    assert subject.layers.select("all-conv") == ["conv1", "block.conv1", "block.conv2", "conv2"]
    stages = default_subject.layers.select("stages")
    assert stages[0] == "blocks.0" and len(stages) == 5


def test_class_logits_find_their_class(default_subject, cifar_dir):
    # One ImageNet class per CIFAR-10 class, fixed before looking at the results.
    logit = {
        "airplane": 404,
        "automobile": 817,
        "bird": 15,
        "cat": 281,
        "deer": 351,
        "dog": 162,
        "frog": 31,
        "horse": 339,
        "ship": 510,
        "truck": 867,
    }
    src = open_images(cifar_dir, transform=default_subject.transform)
    res = scan(default_subject, src, ["classifier"], k=1, criteria=["max"], batch_size=50)
    hits = [
        c
        for c, u in logit.items()
        if src.classes[src.records[res.topk("classifier", u).images[0]].label] == c
    ]
    assert len(hits) >= 8, hits
