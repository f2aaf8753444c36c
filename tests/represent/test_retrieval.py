from __future__ import annotations

import numpy as np
import pytest

from convscope.represent import (
    NeighborIndex,
    PostProcess,
    average_precision,
    evaluate_labels,
    evaluate_oxford,
    load_oxford_gt,
    oxford_ap,
)
from convscope.represent.retrieval import OxfordQuery


def _brute_map(x, labels, metric):
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        d = -(x @ x.T)
    else:
        d = ((x[:, None] - x[None]) ** 2).sum(-1)
    aps = []
    for q in range(len(x)):
        order = [i for i in np.argsort(d[q], kind="stable") if i != q]
        rel = labels[order] == labels[q]
        hits, s = 0, 0.0
        for r, ok in enumerate(rel, 1):
            if ok:
                hits += 1
                s += hits / r
        aps.append(s / rel.sum())
    return np.mean(aps), np.mean(
        [
            (labels[[i for i in np.argsort(d[q], kind="stable") if i != q][:5]] == labels[q]).mean()
            for q in range(len(x))
        ]
    )


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_map_equals_brute_force(metric):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    x = (rng.normal(size=(4, 16))[labels] + 1.2 * rng.normal(size=(40, 16))).astype(np.float32)
    scores = evaluate_labels(x, labels, metric)
    ref_map, ref_p5 = _brute_map(x.astype(np.float64), labels, metric)
    assert scores.map == pytest.approx(ref_map, abs=1e-6)
    assert scores.precision[5] == pytest.approx(ref_p5, abs=1e-6)
    assert 0.3 < scores.map < 1.0


def test_average_precision_by_hand():
    assert average_precision(np.array([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([0, 1]), n_relevant=2) == pytest.approx(0.25)
    assert average_precision(np.zeros(3)) == 0.0


def test_approximate_indexes_find_the_exact_neighbours():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 32)).astype(np.float32)
    q = x[:50] + 0.01 * rng.normal(size=(50, 32)).astype(np.float32)
    _, exact = NeighborIndex(x).search(q, 5)
    assert (exact[:, 0] == np.arange(50)).all()
    for kind in ("ivf", "hnsw"):
        _, got = NeighborIndex(x, kind=kind, nprobe=16).search(q, 5)
        assert (got[:, 0] == exact[:, 0]).mean() > 0.95
        assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(got, exact)]) > 0.6
    s, i = NeighborIndex(x, "cosine").search(x[:3], 1)
    assert (i[:, 0] == np.arange(3)).all() and np.allclose(s[:, 0], 1.0, atol=1e-5)


def test_oxford_protocol(tmp_path):
    q = OxfordQuery("a_1", "a", None, frozenset({"g1"}), frozenset({"o1"}), frozenset({"j1"}))
    # junk skipped; positives at ranks 1 and 3 (after skipping)
    ap = oxford_ap(["g1", "j1", "x", "o1"], q)
    ref = (0.5 - 0) * (1 + 1) / 2 + 0 + (1 - 0.5) * (0.5 + 2 / 3) / 2
    assert ap == pytest.approx(ref)
    (tmp_path / "a_1_query.txt").write_text("oxc1_a 1 2 3 4\n")
    (tmp_path / "a_1_good.txt").write_text("b\n")
    (tmp_path / "a_1_ok.txt").write_text("")
    (tmp_path / "a_1_junk.txt").write_text("c\n")
    gt = load_oxford_gt(tmp_path)
    assert gt[0].image == "a" and gt[0].box == (1, 2, 3, 4) and gt[0].good == {"b"}
    x = np.array([[0.0, 0], [0.1, 0], [5, 5], [0.05, 0.2]], np.float32)
    scores = evaluate_oxford(x, ["a.jpg", "b.jpg", "d.jpg", "c.jpg"], gt)
    # ranking a, b, c (junk), d: the query image itself is a negative at rank 1 unless listed
    assert scores.map == pytest.approx(0.25)
    (tmp_path / "a_1_good.txt").write_text("a\nb\n")
    assert evaluate_oxford(x, ["a.jpg", "b.jpg", "d.jpg", "c.jpg"], load_oxford_gt(tmp_path)).map == 1.0


def test_postprocess_fit_on_one_set_apply_to_another():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12))
    pp = PostProcess.parse("l2,pca:6,whiten")
    z = pp.fit_transform(train)
    assert z.shape == (200, 6)
    assert np.allclose(np.cov(z.T), np.eye(6), atol=1e-3)
    other = pp.transform(rng.normal(size=(5, 12)))
    assert other.shape == (5, 6)
    assert np.allclose(np.linalg.norm(PostProcess.parse("power:0.5,l2").fit_transform(train), axis=1), 1)
    with pytest.raises(Exception, match="unknown"):
        PostProcess.parse("zca")
