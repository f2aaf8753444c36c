"""Faithfulness, robustness, randomisation and localisation metrics: equal to Quantus (or to
pytorch-grad-cam where Quantus has no such metric or cannot run it) at equal settings, and
properties a wrong implementation would fail."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import convscope
from convscope.attribution import metrics as M
from convscope.attribution.targets import Target
from convscope.testing import tiny_subject

quantus = pytest.importorskip("quantus")


def close(a, b, tol=1e-4) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return bool(np.all(np.abs(a - b) <= tol * np.maximum(1.0, np.abs(b))))


@pytest.fixture(scope="module")
def tiny():
    s = tiny_subject(size=16)
    s.model.eval()
    return s


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 16, 16, generator=g)
    maps = torch.rand(3, 16, 16, generator=g)
    return x, maps, np.array([1, 4, 7])


def _q(metric, subject, x, maps, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = np.asarray(maps, dtype=np.float32)[:, None]
        return metric(model=subject.model, x_batch=x.numpy(), y_batch=y, a_batch=a, device="cpu", **kw)


def test_pixel_flipping_matches_quantus(tiny, batch):
    # Quantus steps over channel-pixels (a pixel map counts in all 3) and wants its step to
    # divide H * W: 12 px, 4 pixels (12 features) a step
    x, maps, y = batch
    x, maps = x[..., 2:14, 2:14].contiguous(), maps[..., 2:14, 2:14].contiguous()
    ours = M.pixel_flipping(tiny, x, maps, y, step=4, curve=True)
    ref = _q(quantus.PixelFlipping(features_in_step=12, disable_warnings=True), tiny, x, maps, y)
    assert ours.shape == (3, 36)
    assert close(ours, ref)


@pytest.mark.parametrize("patch", [4, 5])  # 5: Quantus pads the 16-px grid to 20
def test_region_perturbation_matches_quantus(tiny, batch, patch):
    x, maps, y = batch
    for order in ("morf", "lerf"):
        ours = M.region_perturbation(tiny, x, maps, y, patch=patch, order=order, regions=10, curve=True)
        q = quantus.RegionPerturbation(
            patch_size=patch, order=order, regions_evaluation=10, disable_warnings=True
        )
        assert close(ours, _q(q, tiny, x, maps, y)), (patch, order)


def test_faithfulness_correlation_matches_quantus_on_its_draws(tiny, batch, monkeypatch):
    x, maps, y = batch
    drawn = []
    choice = np.random.choice

    def record(*a, **k):
        drawn.append(choice(*a, **k))
        return drawn[-1]

    monkeypatch.setattr(np.random, "choice", record)
    q = quantus.FaithfulnessCorrelation(
        nr_runs=20, subset_size=40, return_aggregate=False, disable_warnings=True
    )
    ref = _q(q, tiny, x, maps, y)
    monkeypatch.undo()
    subsets = torch.as_tensor(np.stack(drawn).reshape(20, 3, 40)).transpose(0, 1)
    ours = M.faithfulness_correlation(tiny, x, maps, y, subsets=subsets)
    assert close(ours, ref)
    again = M.faithfulness_correlation(tiny, x, maps, y, runs=20, subset=40, seed=3)
    assert torch.equal(again, M.faithfulness_correlation(tiny, x, maps, y, runs=20, subset=40, seed=3))


def test_infidelity_matches_quantus(tiny, batch):
    x, maps, y = batch
    q = quantus.Infidelity(perturb_patch_sizes=[4, 8], n_perturb_samples=1, disable_warnings=True)
    assert close(M.infidelity(tiny, x, maps, y, patch_sizes=(4, 8)), _q(q, tiny, x, maps, y))


def _quantus_explain(subject, method):
    def run(model, inputs, targets, **kw):
        s = convscope.Subject(model, subject.preprocess, subject.labels, "q")
        t = Target("class", tuple(int(c) for c in np.asarray(targets).ravel()))
        return convscope.explain(s, torch.as_tensor(inputs), method, target=t).maps[:, None]

    return run


def test_max_sensitivity_matches_quantus_on_its_draws(tiny, batch, monkeypatch):
    x, _, y = batch
    maps = convscope.explain(tiny, x, "saliency", target=Target("class", tuple(y.tolist())))
    drawn = []
    uniform = np.random.uniform

    def record(*a, **k):
        out = uniform(*a, **k)
        if np.shape(out) == (3, 3 * 16 * 16):
            drawn.append(out)
        return out

    monkeypatch.setattr(np.random, "uniform", record)
    q = quantus.MaxSensitivity(nr_samples=5, lower_bound=0.2, disable_warnings=True)
    ref = _q(q, tiny, x, maps.maps, y, explain_func=_quantus_explain(tiny, "saliency"))
    monkeypatch.undo()
    noise = torch.as_tensor(np.stack(drawn)).view(5, 3, 3, 16, 16)
    ours = M.max_sensitivity(tiny, x, maps, y, noise=noise)
    assert close(ours, ref)
    assert (ours > 0).all()


def test_model_randomisation_matches_quantus_mprt(tiny, batch):
    x, _, y = batch
    maps = convscope.explain(tiny, x, "saliency", target=Target("class", tuple(y.tolist())))
    ours = M.model_randomisation(tiny, x, maps, y, reduce="none")
    q = quantus.MPRT(disable_warnings=True)
    ref = _q(q, tiny, x, maps.maps, y, explain_func=_quantus_explain(tiny, "saliency"))
    names = M.randomisation_layers(tiny)
    assert names == ["fc", "conv2", "block.conv2", "block.conv1", "conv1"]
    assert close(ours, np.stack([ref[n] for n in names], 1))
    assert np.allclose(ref["original"], 1)


def test_spearman_and_ssim_match_scipy_and_skimage():
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(2)
    a = torch.rand(2, 20, 20, generator=g).clamp_min(0.5)  # ties at 0.5, as in ReLU'd maps
    b = torch.rand(2, 20, 20, generator=g) + 0.3 * a
    for i in range(2):
        assert close(M.spearman(a, b)[i], spearmanr(a[i].ravel(), b[i].ravel())[0])
        ai, bi = a[i].double().numpy(), b[i].double().numpy()
        rng = max(ai.max(), bi.max()) - min(ai.min(), bi.min())
        assert close(M.ssim(a, b)[i], structural_similarity(ai, bi, data_range=rng))


def test_noisy_linear_imputation_matches_quantus_and_pytorch_grad_cam():
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from quantus.functions.perturb_func import noisy_linear_imputation as q_impute

    g = torch.Generator().manual_seed(4)
    img = torch.rand(3, 12, 14, generator=g)
    removed = torch.rand(12, 14, generator=g) > 0.4
    removed[0, :5] = True  # a border run
    gc = NoisyLinearImputer(noise=0)(img, (~removed).float())
    q = q_impute(img.numpy(), np.flatnonzero(removed.numpy()), noise=0)
    for solver in ("cg", "direct"):
        ours = M.noisy_linear_imputation(img[None], removed[None], noise=0, solver=solver)[0]
        assert close(ours, gc, 1e-5) and close(ours, q, 1e-5), solver
        assert torch.equal(ours[:, ~removed], img[:, ~removed])
        noisy = M.noisy_linear_imputation(
            img[None], removed[None], noise=0.05, generator=torch.Generator(), solver=solver
        )[0]
        spread = (noisy - ours)[:, removed].std()
        assert 0.04 < spread < 0.06 and torch.equal(noisy[:, ~removed], img[:, ~removed])


def test_road_matches_pytorch_grad_cam(tiny, batch):
    from pytorch_grad_cam.metrics.perturbation_confidence import (
        PerturbationConfidenceMetric,
        RemoveLeastRelevantFirst,
        RemoveMostRelevantFirst,
    )
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    x, maps, y = batch
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in y]
    for order, cls in (("morf", RemoveMostRelevantFirst), ("lerf", RemoveLeastRelevantFirst)):
        ours = M.road(tiny, x, maps, y, percentiles=(20, 50, 80), order=order, noise=0, curve=True)
        ref = [
            PerturbationConfidenceMetric(cls(p, NoisyLinearImputer(noise=0)))(
                x, maps.numpy(), targets, tiny.model
            )
            for p in (20, 50, 80)
        ]
        assert close(ours, np.stack(ref, 1), 1e-5), order


def test_average_drop_and_increase_match_pytorch_grad_cam(tiny, batch):
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    x, maps, y = batch
    maps = maps.clone()
    maps[0] = 1.0  # the whole image kept: no drop, no increase
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in y]
    cams = scale_cam_image(maps.numpy())
    prob = torch.softmax(tiny.model(x), -1)[torch.arange(3), torch.as_tensor(y)].detach().double()
    drop = M.average_drop(tiny, x, maps, y)
    assert close(drop * prob, DropInConfidence()(x, cams, targets, tiny.model))
    inc = M.increase_in_confidence(tiny, x, maps, y)
    assert close(inc, IncreaseInConfidence()(x, cams, targets, tiny.model))


def test_localisation_matches_quantus(tiny, batch):
    x, maps, y = batch
    boxes = [(0, 0, 8, 8), (4, 2, 16, 10), (10, 10, 16, 16)]
    masks = np.zeros((3, 16, 16), dtype=bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = True
    signed = maps - 0.4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for metric, q in (
            (M.pointing_game, quantus.PointingGame(disable_warnings=True)),
            (M.attribution_localisation, quantus.AttributionLocalisation(disable_warnings=True)),
        ):
            ref = q(
                model=tiny.model,
                x_batch=x.numpy(),
                y_batch=y,
                a_batch=signed.numpy()[:, None],
                s_batch=masks[:, None].astype(np.float32),
                device="cpu",
            )
            assert close(metric(tiny, x, signed, y, boxes=boxes), ref), metric.__name__
            assert close(metric(tiny, x, signed, y, masks=masks), ref)
    inside = torch.zeros(3, 16, 16)
    inside[:, 1:3, 1:3] = 1
    assert M.pointing_game(tiny, x, inside, masks=masks).tolist() == [1.0, 0.0, 0.0]


# --- properties -------------------------------------------------------------------------------


class GreyLinear(nn.Module):
    """A linear model of the channel mean: on grey images the logit drop of a set of
    channel-pixels is exactly a third of the sum of gradient x input over them."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16 * 16, 4)

    def forward(self, x):
        return self.fc(x.mean(1).flatten(1))


@pytest.fixture(scope="module")
def linear():
    torch.manual_seed(0)
    pre = convscope.Preprocess(size=(16, 16), resize=None, mode="squash")
    return convscope.Subject(GreyLinear().eval(), pre, [f"c{i}" for i in range(4)], "linear")


def test_gradient_x_input_is_more_faithful_than_a_random_map_on_a_linear_model(linear):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 16, 16, generator=g).expand(4, 3, 16, 16).contiguous()
    y = torch.tensor([0, 1, 2, 3])
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(linear.model(x_req)[torch.arange(4), y].sum(), x_req)
    gxi = (grad * x).sum(1)
    rand = torch.rand(4, 16, 16, generator=g)
    kw = dict(runs=50, subset=60, baseline=0.0)
    good = M.faithfulness_correlation(linear, x, gxi, y, **kw)
    bad = M.faithfulness_correlation(linear, x, rand, y, **kw)
    assert (good > 0.9999).all() and (bad.abs() < 0.5).all()
    # infidelity compares sum(map * (x - x_k)) with the drop: the (per channel) gradient is exact
    assert (M.infidelity(linear, x, grad[:, 0], y, baseline=0.0) < 1e-9).all()
    assert (M.infidelity(linear, x, rand, y, baseline=0.0) > 1e-3).all()
    aopc = dict(patch=4, softmax=False, baseline=0.0)  # most positive first is the best order
    assert (
        M.region_perturbation(linear, x, gxi, y, **aopc) > M.region_perturbation(linear, x, rand, y, **aopc)
    ).all()
    # pixel flipping: deleting the most positive evidence first lowers the probability fastest
    flip = dict(step=8, softmax=False, baseline=0.0)
    assert (M.pixel_flipping(linear, x, gxi, y, **flip) < M.pixel_flipping(linear, x, rand, y, **flip)).all()


def test_randomisation_check_fails_an_edge_detector_and_passes_saliency():
    """The issue's Done-when test: a map that ignores the model (an image-gradient filter)
    keeps its rank correlation under model randomisation; saliency loses it."""
    subject = tiny_subject(size=32)
    subject.model.eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([0, 1, 2, 3])
    sal = convscope.explain(subject, x, "saliency", target=Target("class", (0, 1, 2, 3)))

    def edge_filter(_subject, images, _classes):
        gx = images[..., :, 1:] - images[..., :, :-1]
        gy = images[..., 1:, :] - images[..., :-1, :]
        e = (gx[..., :-1, :] ** 2 + gy[..., :, :-1] ** 2).sum(1).sqrt()
        return torch.nn.functional.pad(e, (0, 1, 0, 1))

    edges = edge_filter(subject, x, y)
    edge_scores = M.model_randomisation(subject, x, edges, y, method=edge_filter, reduce="none")
    sal_scores = M.model_randomisation(subject, x, sal, y, reduce="none")
    assert torch.allclose(edge_scores, torch.ones_like(edge_scores))  # fails the check
    assert (sal_scores[:, -1] < 0.5).all() and (sal_scores.mean(1) < 0.8).all()  # passes it
    for similarity in ("ssim",):
        e = M.model_randomisation(
            subject, x, edges, y, method=edge_filter, similarity=similarity, reduce="last"
        )
        s = M.model_randomisation(subject, x, sal, y, similarity=similarity, reduce="last")
        assert torch.allclose(e, torch.ones_like(e)) and (s < 0.5).all(), similarity


def test_trust_sanity_check_takes_ssim_and_averages_tied_ranks():
    from scipy.stats import spearmanr

    from convscope.attribution import sanity_check

    subject = tiny_subject(size=32)
    subject.model.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))

    def saliency(s):
        return convscope.explain(s, x, "saliency", target=Target("class", (0, 1))).maps

    def flat_edges(s):  # ignores the model; mostly tied values
        return np.clip(np.abs(np.diff(x.mean(1).numpy(), axis=-1, append=0)) - 0.8, 0, None)

    for similarity in ("spearman", "ssim"):
        real = sanity_check(saliency, subject, ["fc", "conv2"], similarity=similarity)
        fake = sanity_check(flat_edges, subject, ["fc", "conv2"], similarity=similarity)
        assert np.allclose(fake.correlations, 1.0) and real.correlations[-1] < 0.5, similarity
        assert real.similarity == similarity
    tied, other = flat_edges(subject), saliency(subject)
    swap = sanity_check(lambda s: tied if s is subject else other, subject, ["fc"])
    ref = np.mean([spearmanr(a.ravel(), b.ravel())[0] for a, b in zip(tied, other)])
    assert close(swap.correlations[0], ref)


def test_auto_batch_sizes_chunks_by_the_largest_activation(monkeypatch):
    from convscope.errors import UserInputError

    subject = tiny_subject(size=32)
    x = torch.zeros(2, 3, 32, 32)
    peak = max(np.prod(i.shape) for i in subject.layers if i.shape is not None and i.per_image) * 4
    from convscope.attribution import batching

    monkeypatch.setattr(batching, "_CPU_BYTES", int(peak * 5.5))
    assert M.auto_batch(subject, x) == 5
    assert M.auto_batch(subject, torch.zeros(2, 3, 64, 64)) == 1  # 4x the pixels, 4x the bytes
    assert M.auto_batch(subject, x, 7) == 7
    with pytest.raises(UserInputError):
        M.auto_batch(subject, x, 0)
