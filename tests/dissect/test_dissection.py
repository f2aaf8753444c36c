from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convscope
from convscope.dissect import BrodenDataset, dissect, make_synthetic_broden
from convscope.errors import DataError
from convscope.scan.state import quantile_thresholds, saturation_rule


@pytest.fixture(scope="module")
def broden(tmp_path_factory):
    return make_synthetic_broden(tmp_path_factory.mktemp("broden"), n=24, size=112, seg=56)


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
    return convscope.Subject.wrap(nn.Sequential(conv, nn.Hardtanh(0, 1)), input_size=112,
                                  mean=(0, 0, 0), std=(1, 1, 1))


def test_red_indicator_is_labelled_red(red_net, broden):
    result = dissect(red_net, BrodenDataset(broden), ["1"], batch_size=8)
    name, category, iou = result.label("1", 0)
    assert (name, category) == ("red", "color") and iou > 0.9
    assert 0 in result.detectors("1")["red"]


def test_equals_a_numpy_reference(red_net, broden):
    data = BrodenDataset(broden, transform=red_net.transform)
    result = dissect(red_net, data, ["1"], batch_size=5)
    # reference: all activations on the host, exact quantile, per-image counting
    acts = []
    for i in range(len(data)):
        x, _, _, _ = data[i]
        with torch.no_grad():
            acts.append(red_net.model(x[None])[0])
    a = torch.stack(acts)
    thr = saturation_rule(quantile_thresholds(a.transpose(0, 1).reshape(2, -1)),
                          a.transpose(0, 1).reshape(2, -1).max(1).values)
    concepts = sorted(c for c in data.concepts if c > 0)
    inter = np.zeros((2, len(concepts)))
    union = np.zeros((2, len(concepts)))
    for i in range(len(data)):
        planes, image_level = data.labels(i)
        up = F.interpolate(a[i:i + 1], size=planes.shape[-2:], mode="bilinear",
                           align_corners=False)[0].numpy()
        for u in range(2):
            m = up[u] > thr[u].item()
            for j, c in enumerate(concepts):
                lab = np.zeros(planes.shape[-2:], bool) | (c in image_level)
                for p in planes:
                    lab |= p == c
                inter[u, j] += (m & lab).sum()
                union[u, j] += (m | lab).sum()
    ref = np.where(union > 0, inter / np.maximum(union, 1), 0)
    assert np.allclose(result.layers["1"].iou, ref, atol=1e-9)
    assert np.allclose(result.layers["1"].thresholds, thr.numpy())


def test_not_a_broden_directory(tmp_path):
    with pytest.raises(DataError, match="Broden"):
        BrodenDataset(tmp_path)
