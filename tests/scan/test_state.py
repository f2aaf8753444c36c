from __future__ import annotations

import numpy as np
import pytest
import torch

from convscope.scan.state import LayerState, ScanMismatchError, TopK, quantile_thresholds


def _batches(n=40, units=6, hw=(3, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(n, units, *hw, generator=g)
    acts[7] = acts[5]  # exact ties: the smaller image index must win
    acts[5, 0, 0, 0] = acts[7, 0, 0, 0] = 100.0
    return acts


def _fold(acts, order, bs, thresholds):
    st = LayerState.empty(acts.shape[1], acts.shape[2:], 5, ("max", "mean", "area"))
    st.thresholds = thresholds
    for i in range(0, len(order), bs):
        idx = torch.tensor(order[i:i + bs])
        st.update(acts[idx], idx)
    return st


def test_topk_is_order_invariant_and_breaks_ties_by_index():
    acts = _batches()
    thr = torch.zeros(acts.shape[1])
    a = _fold(acts, list(range(40)), 7, thr)
    b = _fold(acts, list(np.random.default_rng(1).permutation(40)), 3, thr)
    for crit in ("max", "mean", "area"):
        assert torch.equal(a.topk[crit].images, b.topk[crit].images)
        assert torch.equal(a.topk[crit].scores, b.topk[crit].scores)
    # brute force
    flat = acts.flatten(2)
    for u in range(acts.shape[1]):
        scores = flat[:, u].max(dim=1).values.numpy()
        expected = sorted(range(40), key=lambda i: (-scores[i], i))[:5]
        assert a.topk["max"].images[u].tolist() == expected
    assert a.topk["max"].images[0, :2].tolist() == [5, 7]


def test_statistics_and_merge():
    acts = _batches()
    thr = torch.full((6,), 0.5)
    full = _fold(acts, list(range(40)), 8, thr)
    part1 = _fold(acts, list(range(0, 24)), 8, thr)
    part2 = _fold(acts, list(range(24, 40)), 8, thr)
    part2.merge(part1)
    for crit in ("max", "mean", "area"):
        assert torch.equal(part2.topk[crit].images, full.topk[crit].images)
    vals = acts.transpose(0, 1).reshape(6, -1).double()
    assert torch.allclose(full.mean(), vals.mean(1))
    assert torch.allclose(full.std(), vals.std(1, unbiased=False))
    assert torch.equal(full.max, vals.max(1).values.float())
    assert torch.allclose(full.fraction_positive(), (vals > 0).double().mean(1))
    assert torch.allclose(part2.mean(), full.mean())
    other = _fold(acts, [0, 1], 2, thr + 1)
    with pytest.raises(ScanMismatchError, match="thresholds"):
        full.merge(other)


def test_area_scores_match_definition():
    acts = _batches()
    thr = torch.linspace(-0.5, 0.5, 6)
    st = _fold(acts, list(range(40)), 40, thr)
    area = (acts > thr.view(1, -1, 1, 1)).float().mean(dim=(2, 3))
    for u in range(6):
        best = st.topk["area"].images[u, 0].item()
        assert st.topk["area"].scores[u, 0] == area[:, u].max()
        assert area[best, u] == area[:, u].max()


def test_roundtrip_dict():
    acts = _batches()
    st = _fold(acts, list(range(40)), 8, torch.zeros(6))
    again = LayerState.from_dict(st.to_dict())
    assert torch.equal(again.topk["mean"].images, st.topk["mean"].images)
    assert again.count == st.count and torch.equal(again.sum, st.sum)


@pytest.mark.parametrize("n", [1, 2, 199, 1000, 12345])
def test_quantile_matches_numpy(n):
    vals = torch.randn(3, n, generator=torch.Generator().manual_seed(n))
    got = quantile_thresholds(vals).numpy()
    assert np.allclose(got, np.quantile(vals.numpy(), 0.995, axis=1), rtol=1e-6, atol=1e-6)


def test_empty_slots():
    top = TopK.empty(2, 3)
    top.merge(torch.tensor([[1.0], [2.0]]), torch.tensor([[4], [4]]), torch.tensor([[0], [1]]))
    assert top.valid_images().tolist() == [[4, -1, -1], [4, -1, -1]]
