"""dissect(bases={layer: basis}) dissects a basis's codes as the layer's units."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from convscope.concepts import collect_activations, fit_dictionary
from convscope.dissect import BrodenDataset, ColorConcepts, dissect, make_synthetic_broden
from convscope.dissect.transform import dissection_transform
from convscope.errors import UserInputError
from convscope.testing import tiny_subject

LAYER = "block"  # non-negative, 8 channels


class Permuted:
    """Channels reordered and scaled by powers of two (exact in float32): a basis whose
    dissection must be the plain one, permuted."""

    def __init__(self, channels: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(channels, generator=gen)
        self.scale = 2.0 ** torch.randint(-2, 3, (channels,), generator=gen).float()
        self.n = self.channels = channels
        self.fingerprint = f"permuted{seed}"

    def __call__(self, maps):
        return maps[:, self.perm] * self.scale.to(maps.device)[None, :, None, None]

    def to(self, device):
        return self


@pytest.fixture(scope="module")
def subject():
    return tiny_subject(size=64)


@pytest.fixture(scope="module")
def broden(tmp_path_factory):
    return make_synthetic_broden(tmp_path_factory.mktemp("broden"), n=12, size=64, seg=32)


def test_a_permuted_scaled_basis_gives_the_plain_dissection_permuted(subject, broden):
    data = BrodenDataset(broden)
    plain = dissect(subject, data, [LAYER], batch_size=5, workers=0).layers[LAYER]
    basis = Permuted(plain.units)
    got = dissect(subject, data, [LAYER], batch_size=5, workers=0, bases={LAYER: basis}).layers[LAYER]
    p = basis.perm.numpy()
    assert got.units == plain.units and plain.iou.max() > 0.01
    assert np.allclose(got.thresholds, plain.thresholds[p] * basis.scale.numpy())
    assert np.array_equal(got.iou, plain.iou[p])
    assert np.array_equal(got.top_images, plain.top_images[p])
    assert np.array_equal(got.coverage, plain.coverage[p])


def test_bases_are_checked_before_anything_runs(subject, broden):
    data = BrodenDataset(broden)
    with pytest.raises(UserInputError, match="4 channels"):
        dissect(subject, data, [LAYER], bases={LAYER: Permuted(4)})
    with pytest.raises(UserInputError, match="not dissected"):
        dissect(subject, data, [LAYER], bases={"conv2": Permuted(16)})


def _separating(flat: np.ndarray, quantile: float) -> np.ndarray:
    """Per code, the middle of the gap below its top ``quantile`` of values (or, where none is
    above the quantile, below its maximum): where the dissection puts its thresholds."""
    out = []
    for v in flat:
        q = np.quantile(v.astype(np.float64), 1 - quantile)
        hi = v[v > q].min() if (v > q).any() else v.max()
        rest = v[v < hi]
        out.append(rest.max() + (hi - rest.max()) / 2 if len(rest) else np.nextafter(hi, -np.inf))
    return np.array(out, dtype=np.float32)


def test_concept_codes_dissected_equal_a_brute_force_over_auto_colours(tmp_path):
    subject = tiny_subject(size=32)
    rng = np.random.default_rng(1)
    palette = np.array([[230, 20, 20], [20, 40, 220], [250, 250, 250], [20, 160, 30]], np.uint8)
    for i in range(10):  # blocks of flat colour, so that colour regions and codes both vary
        cells = palette[rng.integers(0, len(palette), (4, 4))]
        Image.fromarray(np.kron(cells, np.ones((8, 8, 1), np.uint8))).save(tmp_path / f"im{i}.png")
    acts = collect_activations(subject, tmp_path, LAYER, per_image=32, seed=0, workers=0)
    cs = fit_dictionary(acts.x, "nmf", 3, layer=LAYER, seed=0)
    data = ColorConcepts(tmp_path, seg=16)
    q = 0.05
    res = dissect(subject, data, [LAYER], quantile=q, workers=0, bases={LAYER: cs.basis()}).layers[LAYER]
    # brute force: every image's concept maps on the host, thresholds, masks and counts in NumPy
    tf = dissection_transform(subject)
    x = torch.stack([tf(data.image(i)) for i in range(len(data))])
    codes = cs.heatmaps(subject, x)  # (N, 3, 8, 8)
    flat = codes.transpose(0, 1).reshape(3, -1).numpy()
    thr = _separating(flat, q)
    assert np.allclose(res.thresholds, thr, atol=1e-6)
    up = F.interpolate(codes, size=(16, 16), mode="bilinear", align_corners=False).numpy()
    numbers = sorted(data.concepts)
    inter = np.zeros((3, len(numbers)))
    union = np.zeros((3, len(numbers)))
    for i in range(len(data)):
        labels = data.labels(i)[0][0]
        for k in range(3):
            m = up[i, k] > thr[k]
            for j, c in enumerate(numbers):
                inter[k, j] += (m & (labels == c)).sum()
                union[k, j] += (m | (labels == c)).sum()
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0)
    assert iou.max() > 0.05  # not trivially zero
    assert np.abs(res.iou - iou).max() < 1e-6
