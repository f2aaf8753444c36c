from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn

import convscope
from convscope.dissect import BrodenDataset, dissect, make_synthetic_broden
from convscope.dissect.reference import reference_dissect
from convscope.dissect.transform import dissection_transform
from convscope.errors import DataError
from convscope.quantiles import quantile_thresholds
from convscope.testing import TinyCNN


@pytest.fixture(scope="module")
def broden(tmp_path_factory):
    return make_synthetic_broden(tmp_path_factory.mktemp("broden"), n=24, size=112, seg=56)


@pytest.fixture(scope="module")
def partial(broden, tmp_path_factory):
    """The same data with every third image's ``object`` annotation missing and one image
    broken: unions must skip unannotated images, the broken one is skipped and counted."""
    root = tmp_path_factory.mktemp("partial") / "broden"
    shutil.copytree(broden, root)
    with open(root / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for i, r in enumerate(rows):
        if i % 3 == 0:
            r["object"] = ""
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (root / "images" / rows[5]["image"]).write_bytes(b"not a jpeg")
    return root


def _wrap(model, size=112):
    return convscope.Subject.wrap(model, input_size=size, mean=(0, 0, 0), std=(1, 1, 1))


@pytest.fixture(scope="module")
def red_net():
    """Unit 0: clip(20 (R - G - B - 0.2), 0, 1) on [0, 1] pixels, an indicator of red;
    unit 1: brightness."""
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, :, 0, 0] = 20 * torch.tensor([1.0, -1.0, -1.0])
        conv.bias[0] = -4.0
        conv.weight[1, :, 0, 0] = 1 / 3
        conv.bias[1] = 0.0
    return _wrap(nn.Sequential(conv, nn.Hardtanh(0, 1)))


def test_red_indicator_is_labelled_red(red_net, broden):
    result = dissect(red_net, BrodenDataset(broden), ["1"], batch_size=8)
    lab = result.label("1", 0)
    assert (lab.name, lab.category) == ("red", "color") and lab.iou > 0.9 and lab.detector
    assert 0 in result.detectors("1")["red"]
    assert result.summary("1").detectors["color"] >= 1
    assert result.images == 24 and not result.skipped


def _separating(flat, q):
    """Per unit, the middle of the gap between the values above the quantile ``q`` (or, where
    none is, those at the maximum) and the largest value below them."""
    out = []
    for v, t in zip(flat.numpy(), q.numpy()):
        counted = v[v > t] if (v > t).any() else v[v == v.max()]
        hi = counted.min()
        rest = v[v < hi]
        if not len(rest):
            out.append(np.nextafter(hi, -np.inf))
            continue
        mid = rest.max() + (hi - rest.max()) / 2
        out.append(mid if mid < hi else rest.max())
    return torch.tensor(np.array(out, dtype=np.float32))


def _numpy_reference(subject, data, layer_module, quantile=0.005):
    """All activations on the host, exact quantile (in its gap), per-image counting; a unit's area counts
    for a category only on images annotated in it."""
    acts, items = [], []
    for i in range(len(data)):
        it = data[i]
        if it.error is None:
            with torch.no_grad():
                acts.append(layer_module(it.x[None])[0])
            items.append(it)
    a = torch.stack(acts)
    u = a.shape[1]
    flat = a.transpose(0, 1).reshape(u, -1)
    thr = _separating(flat, quantile_thresholds(flat, 1 - quantile))
    concepts = sorted(data.concepts)
    inter = np.zeros((u, len(concepts)))
    union = np.zeros((u, len(concepts)))
    for i, it in enumerate(items):
        planes = it.planes.numpy()
        up = F.interpolate(a[i : i + 1], size=data.seg_size, mode="bilinear", align_corners=False)[0].numpy()
        for k in range(u):
            m = up[k] > thr[k].item()
            for j, c in enumerate(concepts):
                lab = np.zeros(data.seg_size, bool) | (c in it.image_level)
                for p in planes:
                    lab |= p == c
                inter[k, j] += (m & lab).sum()
                annotated = data.concepts[c].category in it.annotated
                union[k, j] += ((m if annotated else np.zeros_like(m)) | lab).sum()
    return thr.numpy(), np.where(union > 0, inter / np.maximum(union, 1), 0)


@pytest.mark.parametrize("cache", [True, False])
def test_equals_numpy_references(partial, cache):
    torch.manual_seed(0)
    net = TinyCNN().eval()
    subject = _wrap(net, 64)
    # the transform dissect() uses: the reference below reads the same tensors (dissect no
    # longer sets it on the caller's data)
    data = BrodenDataset(partial, transform=dissection_transform(subject))
    result = dissect(subject, data, ["conv2"], batch_size=5, cache_bytes=1 << 30 if cache else 0)
    assert result.images == 23 and result.skipped[0][0] == data.name(5)
    upto_conv2 = nn.Sequential(net.conv1, nn.ReLU(), net.pool, net.block, net.conv2)
    thr, iou = _numpy_reference(subject, data, upto_conv2)
    d = result.layers["conv2"]
    assert np.allclose(d.thresholds, thr)
    assert np.abs(d.iou - iou).max() < 1e-6
    assert d.iou.max() > 0.01  # not trivially zero
    thr2, iou2 = reference_dissect(subject, BrodenDataset(partial), "conv2")
    assert np.abs(d.iou - iou2).max() < 1e-3 and (d.iou.argmax(1) == iou2.argmax(1)).all()
    # the top images are the ones with the largest maxima, best first
    assert (np.diff(d.top_values, axis=1) <= 0).all()


class Saturation(nn.Module):
    """Colourfulness of a 5 x 5-blurred image: high on the synthetic shapes, near 0 on the grey
    striped or noisy backgrounds (the blur averages out their channel noise)."""

    def forward(self, x):
        b = F.avg_pool2d(x, 5, 1, 2, count_include_pad=False)
        return b.amax(1, keepdim=True) - b.amin(1, keepdim=True)


def test_planted_shape_detector_is_found(tmp_path):
    """A unit trained to segment squares (from colour-blind input, so it must use shape) among
    two random units is labelled 'square' on fresh images."""
    size = 40
    train = BrodenDataset(make_synthetic_broden(tmp_path / "train", n=32, size=size, seg=size, seed=1))
    square = next(c for c, k in train.concepts.items() if k.name == "square")
    x = torch.stack([TF.pil_to_tensor(train.image(i)).float() / 255 for i in range(len(train))])
    y = torch.stack([torch.from_numpy((train.labels(i)[0] == square).any(0)) for i in range(len(train))])
    torch.manual_seed(0)
    body = nn.Sequential(
        *[
            m
            for i, o, d in ((1, 8, 1), (8, 8, 2), (8, 8, 4), (8, 8, 4))
            for m in (nn.Conv2d(i, o, 3, padding=d, dilation=d), nn.ReLU())
        ]
    )
    head = nn.Conv2d(8, 1, 1)
    with torch.no_grad():
        sat = Saturation()(x).contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam([*body.parameters(), *head.parameters()], 1e-2)
    for _ in range(200):
        loss = F.binary_cross_entropy_with_logits(head(body(sat)), y[:, None].float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    units = nn.Conv2d(8, 3, 1)  # unit 1 is the trained detector, units 0 and 2 random
    with torch.no_grad():
        units.weight[1], units.bias[1] = head.weight[0], head.bias[0]
    subject = _wrap(nn.Sequential(Saturation(), body, units, nn.Hardtanh(0, 1)), size)
    test = BrodenDataset(make_synthetic_broden(tmp_path / "test", n=32, size=size, seg=size, seed=2))
    result = dissect(subject, test, ["3"])
    lab = result.label("3", 1)
    assert lab.name == "square" and lab.detector and lab.iou > 0.25
    assert 1 in result.detectors("3")["square"]


def test_saturating_unit_is_not_a_detector(broden):
    """A unit at its ceiling everywhere has a region of all pixels: labelled, never a detector."""
    conv = nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(0.0)
        conv.bias.fill_(5.0)
    result = dissect(_wrap(nn.Sequential(conv, nn.Hardtanh(0, 1))), BrodenDataset(broden), ["1"])
    lab = result.label("1", 0)
    assert lab.coverage == 1.0 and lab.too_broad and not lab.detector


def test_not_a_broden_directory(tmp_path):
    with pytest.raises(DataError, match="Broden"):
        BrodenDataset(tmp_path)


def test_thresholds_and_top_images_do_not_depend_on_sharding(red_net, broden):
    """Pass 1 over three parts merges to the thresholds of one pass, bit for bit; pass 2's top
    images (unit 0, a clamped red indicator, ties at 1.0 and at 0) rank ties by the smaller
    image index, in parts and in one process alike."""
    from convscope.dissect.dissection import (
        _Counts,
        _Plan,
        count_state,
        merge_threshold_states,
        threshold_state,
    )

    data = BrodenDataset(broden, transform=dissection_transform(red_net))  # the peaks below read it
    plan = _Plan(red_net, data, ["1"])
    parts = [[0, 5, 9, 13, 21], [1, 2, 3, 4, 6, 7, 8], list(range(10, 24))]
    parts[2].remove(13)
    parts[2].remove(21)
    whole = merge_threshold_states(
        data, plan.maps, 0.005, [threshold_state(red_net, data, ["1"], batch_size=3)]
    )
    sharded = merge_threshold_states(
        data,
        plan.maps,
        0.005,
        [threshold_state(red_net, data, ["1"], indices=p, batch_size=4) for p in reversed(parts)],
    )
    thr = whole[0].thresholds("1", separate=True)
    assert torch.equal(sharded[0].thresholds("1", separate=True), thr)
    one = dissect(red_net, data, ["1"], batch_size=5, top=6).layers["1"]
    assert np.array_equal(one.thresholds, thr.numpy())
    merged = _Counts.from_dicts(
        thr,
        plan.n_c,
        len(plan.cats),
        6,
        plan.seg,
        plan.device,
        [count_state(red_net, data, ["1"], {"1": thr}, top=6, indices=p, batch_size=2)["1"] for p in parts],
    )
    peaks = []
    for i in range(len(data)):
        with torch.no_grad():
            peaks.append(red_net.model(data[i].x[None])[0].flatten(1).amax(1))
    peaks = torch.stack(peaks)  # (N, U)
    cut = peaks[:, 0].sort(descending=True).values[5]  # unit 0: 1.0 on a few images, else 0
    above, tied = int((peaks[:, 0] > cut).sum()), int((peaks[:, 0] == cut).sum())
    assert above < 6 < above + tied  # ties straddle the cut: the tie rule picks who is kept
    for u in range(2):
        p = peaks[:, u].tolist()
        expected = sorted(range(len(data)), key=lambda i: (-p[i], i))[:6]
        assert one.top_images[u].tolist() == expected, u
        assert merged.best_i[u].tolist() == expected, u


def test_dissect_leaves_the_callers_data_as_it_was(tmp_path):
    """dissect() used to set the caller's ``data.transform`` to its own: the data then read
    squashed, normalised images everywhere else."""
    from convscope.testing import tiny_subject

    subject = tiny_subject(size=48)
    data = BrodenDataset(make_synthetic_broden(tmp_path, n=4, size=48, seg=24))
    assert data.transform is None
    d = dissect(subject, data, ["conv2"], batch_size=4, iou_threshold=0.01)
    assert data.transform is None and d.images == 4
    own = dissection_transform(subject)
    data.transform = own
    dissect(subject, data, ["conv2"], batch_size=4)
    assert data.transform is own  # a transform of the caller's is used as it is
