from __future__ import annotations

import numpy as np
import pytest
import torch

from convscope.quantiles import quantile_thresholds
from convscope.scan.state import LayerState, ScanMismatchError, TopK


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
        idx = torch.tensor(order[i : i + bs])
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


def _saturating(n=48, units=5, hw=(4, 4), seed=2):
    """ReLU6-like maps: most images reach 6.0 somewhere, with different spatial means."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, units, *hw, generator=g) * 4 + 1).clamp(0, 6)


def test_ties_at_saturation_rank_by_spatial_mean_then_index():
    acts = _saturating()
    acts[9] = acts[3]  # identical maps: the smaller index first
    thr = torch.full((5,), 3.0)
    a = _fold(acts, list(range(48)), 48, thr)
    b = _fold(acts, list(np.random.default_rng(4).permutation(48)), 5, thr)
    part1 = _fold(acts, list(range(0, 20)), 3, thr)
    part1.merge(_fold(acts, list(range(20, 48)), 7, thr))
    flat = acts.flatten(2)
    peak, mean = flat.max(2).values, flat.mean(2)
    area = (flat > thr.view(1, -1, 1)).float().mean(2)
    assert ((peak == 6.0).float().mean(0) > 0.5).all()  # most images tie at the maximum
    for crit, (score, second) in {"max": (peak, mean), "area": (area, mean), "mean": (mean, peak)}.items():
        for st in (b, part1):
            assert torch.equal(st.topk[crit].images, a.topk[crit].images), crit
            assert torch.equal(st.topk[crit].secondary, a.topk[crit].secondary), crit
        for u in range(5):
            s, t = score[:, u].tolist(), second[:, u].tolist()
            expected = sorted(range(48), key=lambda i: (-s[i], -t[i], i))[:5]
            assert a.topk[crit].images[u].tolist() == expected, (crit, u)
    # the tie-break is not the image index: among the images at 6.0, the largest means come first
    u0 = a.topk["max"].images[0].tolist()
    at_max = [i for i in range(48) if peak[i, 0] == 6.0]
    assert u0 != sorted(at_max)[:5] and u0 == sorted(at_max, key=lambda i: (-mean[i, 0], i))[:5]


def test_separating_thresholds_count_the_same_values_and_survive_rounding():
    from convscope.quantiles import TopValues

    g = torch.Generator().manual_seed(5)
    acts = torch.rand(40, 3, 5, 5, generator=g)  # (N, U, H, W); 1000 values per unit
    top_u0 = acts[:, 0].flatten().topk(8).values
    tie = (acts[:, 0] >= top_u0[5]) & (acts[:, 0] <= top_u0[2])
    acts[:, 0][tie] = top_u0[5]  # unit 0: 4 values tied at the quantile (as max pooling copies)
    acts[:, 1][acts[:, 1] > 0.98] = 6.0  # unit 1: saturates, > 0.5% of its values at the max
    tops = TopValues(40, {"l": (5, 5)})
    tops.add({"l": acts})
    exact = tops.thresholds("l")  # quantile with the saturation rule
    sep = tops.thresholds("l", separate=True)
    vals = acts.transpose(0, 1).reshape(3, -1)
    assert torch.equal(vals > sep[:, None], vals > exact[:, None])  # the same values counted
    assert (vals > sep[:, None]).sum(1)[1] == (vals[1] == 6.0).sum()
    # no value lies on a separating threshold; the quantile lies on the tied ones
    assert not (vals == sep[:, None]).any() and (vals[0] == exact[0]).sum() == 4
    # a forward pass that rounds the last bit up (another thread count, another machine)
    bumped = torch.nextafter(vals, torch.full_like(vals, torch.inf))
    assert torch.equal(bumped > sep[:, None], vals > sep[:, None])
    assert not torch.equal(bumped > exact[:, None], vals > exact[:, None])  # the hazard it removes
