"""compare_bases: units vs random directions vs concepts, from one scan and one dissection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.concepts import collect_activations, fit_dictionary
from convscope.concepts.compare import BasisComparison, compare_bases
from convscope.dissect import BrodenDataset, dissect, make_synthetic_broden
from convscope.errors import UserInputError
from convscope.inputs.sources import open_images
from tests.concepts.conftest import LAYER

K = 4


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Three classes of 7 images, each class tinted its own way (so purity varies)."""
    root = tmp_path_factory.mktemp("labelled")
    rng = np.random.default_rng(0)
    for c, tint in enumerate([(1.0, 0.3, 0.3), (0.3, 1.0, 0.3), (0.3, 0.3, 1.0)]):
        (root / f"class{c}").mkdir()
        for i in range(7):
            px = rng.integers(0, 256, (32, 32, 3)) * np.array(tint)
            px[rng.integers(0, 24) :, : rng.integers(8, 32)] *= 0.4
            Image.fromarray(px.astype(np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def nmf(subject, labelled):
    acts = collect_activations(subject, labelled, LAYER, per_image=16, seed=0, workers=0)
    return fit_dictionary(acts.x, "nmf", 3, layer=LAYER, seed=0)


@pytest.fixture(scope="module")
def broden(tmp_path_factory):
    return make_synthetic_broden(tmp_path_factory.mktemp("broden"), n=8, size=32, seg=16)


def _brute_purity(scores: torch.Tensor, second: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    """Per column of ``scores`` (N, U): purity of the top-K images, ties by ``second`` then index."""
    out = []
    for u in range(scores.shape[1]):
        s, t = scores[:, u].numpy(), second[:, u].numpy()
        if np.all(s == s[0]) and np.all(t == t[0]):
            out.append(np.nan)
            continue
        order = sorted(range(len(s)), key=lambda i: (-s[i], -t[i], i))[:K]
        out.append(np.bincount(labels[order]).max() / K)
    return np.array(out)


def test_purity_of_every_family_matches_brute_force(subject, labelled, nmf, broden):
    res = compare_bases(subject, labelled, nmf, k=K, n_random=5, batch_size=6, workers=0, concept_data=broden)
    assert [len(res.purity[f]) for f in ("units", "random", "concepts")] == [8, 5, 3]
    src = open_images(labelled, transform=subject.transform)
    x = torch.stack([src[i][0] for i in range(len(src))])
    labels = np.array([r.label for r in src.records])
    with torch.inference_mode(), subject.record([LAYER], stop=True) as rec:
        subject(x)
    maps = rec[LAYER].float()
    families = {
        "units": maps,
        "random": torch.einsum("bchw,nc->bnhw", maps, res.directions),
        "concepts": nmf.heatmaps(subject, x),
    }
    assert torch.allclose(res.directions.norm(dim=1), torch.ones(5))
    for f, m in families.items():
        want = _brute_purity(m.flatten(2).amax(2), m.flatten(2).mean(2), labels)
        assert np.allclose(res.purity[f], want, equal_nan=True), f
    assert np.nanstd(np.concatenate(list(res.purity.values()))) > 0  # not all alike
    # detectors: the one stacked dissection equals separate dissections of each family
    data = BrodenDataset(broden)
    plain = dissect(subject, data, [LAYER], workers=0)
    assert np.array_equal(res.detector["units"], [lab.detector for lab in plain.labels(LAYER)])
    assert np.allclose(res.iou["units"], [lab.iou for lab in plain.labels(LAYER)])
    alone = dissect(subject, data, [LAYER], workers=0, bases={LAYER: nmf.basis()})
    assert np.allclose(res.iou["concepts"], [lab.iou for lab in alone.labels(LAYER)])
    assert res.iou["random"].shape == (5,) and res.label["random"][0]
    rows = {r["family"]: r for r in res.rows()}
    assert rows["concepts"]["mean_purity"] == pytest.approx(np.nanmean(res.purity["concepts"]))
    assert rows["units"]["detector_fraction"] == pytest.approx(res.detector["units"].mean())
    assert "| concepts | 3 |" in res.table()


def test_unlabelled_data_and_a_wrong_layer_are_refused(subject, folder, labelled, nmf, acts):
    with pytest.raises(UserInputError, match="class labels"):
        compare_bases(subject, folder, nmf, workers=0)
    other = fit_dictionary(acts.x[:, :4], "pca", 2, layer=LAYER)
    with pytest.raises(UserInputError, match="4 channels"):
        compare_bases(subject, labelled, other, workers=0)


def test_picture_and_round_trip(subject, labelled, nmf, tmp_path):
    res = compare_bases(subject, labelled, nmf, k=K, workers=0, criterion="mean")
    assert not res.detector and "detectors" not in res.table()
    res.to_png(tmp_path / "cmp.png")
    back = BasisComparison.load(res.save(tmp_path / "cmp.npz"))
    assert np.array_equal(back.purity["random"], res.purity["random"], equal_nan=True)
    assert back.criterion == "mean" and back.classes == res.classes
