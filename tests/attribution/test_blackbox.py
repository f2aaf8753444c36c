"""Black-box methods (RISE, KernelSHAP, LIME): references at equal settings, known answers on
models whose attributions are known, and models that give no gradient or take no hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import convscope
from convscope.attribution import blackbox  # noqa: F401  (registers the methods)
from convscope.attribution.blackbox import rise_masks, rise_upsample, superpixels
from convscope.errors import UserInputError
from convscope.preprocess import Preprocess
from convscope.subject import Subject
from convscope.testing import TinyCNN, tiny_subject


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module")
def tiny64():
    return tiny_subject(size=64)


@pytest.fixture(scope="module")
def photos(tiny64):
    from skimage import data

    return tiny64.load_images([data.chelsea(), data.astronaut()])


def test_rise_masks_are_the_papers_upsampled_shifted_grids():
    from skimage.transform import resize

    H, W, s = 40, 52, 7
    grids, dy, dx = rise_masks(6, (H, W), s, 0.5, seed=3)
    masks = rise_upsample(grids, dy, dx, (H, W)).numpy()
    ch, cw = -(-H // s), -(-W // s)
    for i in range(6):  # the authors' code: skimage resize, order 1, reflect, no anti-aliasing
        up = resize(
            grids[i].numpy(), ((s + 1) * ch, (s + 1) * cw), order=1, mode="reflect", anti_aliasing=False
        )
        ref = up[int(dy[i]) : int(dy[i]) + H, int(dx[i]) : int(dx[i]) + W]
        assert np.abs(masks[i] - ref).max() < 1e-6
    assert 0 <= int(dy.max()) < ch and 0 <= int(dx.max()) < cw
    assert abs(float(grids.mean()) - 0.5) < 0.1


def _our_masks(n, size, cells, p, seed):
    return rise_upsample(*rise_masks(n, size, cells, p, seed), size)


def test_rise_equals_torchray_at_equal_masks(tiny64, photos):
    rise_ref = pytest.importorskip("torchray.attribution.rise")
    n, cells, p = 96, 5, 0.5
    ours = convscope.explain(
        tiny64, photos, "rise", target="prob:3", masks=n, cells=cells, p=p, batch=32, normalize="paper"
    )
    masks = _our_masks(n, (64, 64), cells, p, 0)[:, None]

    def probs_as_logits(x):  # TorchRay applies a sigmoid to the model's output
        return torch.logit(tiny64.model(x).softmax(-1).double()).float()

    ref = rise_ref.rise(probs_as_logits, photos, filter_masks=masks, num_masks=n, batch_size=32)[:, 3]
    # TorchRay divides by N, the paper (eq. 6) by N * p = N * E[M]
    assert rel_err(ours.maps * p, ref.numpy()) < 1e-4


@pytest.mark.parametrize("fill", ["zero", "gray"])
def test_rise_equals_a_brute_force_sum_one_mask_at_a_time(tiny64, photos, fill):
    n, cells, p = 40, 4, 0.4
    ours = convscope.explain(
        tiny64,
        photos,
        "rise",
        target="class:2",
        masks=n,
        cells=cells,
        p=p,
        batch=16,
        fill=fill,
        normalize="paper",
    )
    coverage = convscope.explain(
        tiny64, photos, "rise", target="class:2", masks=n, cells=cells, p=p, batch=16, fill=fill
    )
    masks = _our_masks(n, (64, 64), cells, p, 0).numpy()
    for i in range(len(photos)):
        xi = photos[i].numpy()
        f = (
            np.zeros_like(xi)
            if fill == "zero"
            else tiny64.preprocess.normalize(torch.full((3, 64, 64), 0.5)).numpy()
        )
        total = np.zeros((64, 64))
        for m in masks:
            with torch.no_grad():
                score = float(tiny64.model(torch.as_tensor(f + (xi - f) * m)[None].float())[0, 2])
            total += score * m
        assert rel_err(ours.maps[i], total / (n * p)) < 1e-4
        assert rel_err(coverage.maps[i], total / masks.sum(0)) < 1e-4


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([2.5, 0.0]), requires_grad=False)

    def forward(self, x):
        return self.bias.expand(len(x), 2)


def test_rise_divides_by_the_coverage_the_masks_give_so_a_constant_score_gives_a_constant_map():
    # eq. 6 (N p) leaves the chance coverage of the drawn masks in the map: with a score that
    # ignores the image it is all there is to see
    subject = _subject(Constant(), 32)
    x = torch.rand(1, 3, 32, 32)
    cov = convscope.explain(subject, x, "rise", target="class:0", masks=64, cells=4).maps[0]
    paper = convscope.explain(
        subject, x, "rise", target="class:0", masks=64, cells=4, normalize="paper"
    ).maps[0]
    assert np.abs(cov - 2.5).max() < 1e-5
    assert paper.std() > 0.05  # the coverage pattern


class Linear(nn.Module):
    """logit 0 = bias + <weight, x>; logit 1 = 0."""

    def __init__(self, weight: torch.Tensor, bias: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(weight[None], requires_grad=False)
        self.bias = bias

    def forward(self, x):
        s = (x * self.weight).flatten(1).sum(1) + self.bias
        return torch.stack([s, torch.zeros_like(s)], 1)


def _subject(model, size):
    return Subject(model, Preprocess(size=(size, size), resize=None, mode="squash"), ["a", "b"])


def test_rise_on_a_linear_score_has_the_known_expectation():
    # score = b + <w, x (.) M> with w on a 4x4 patch, <w, x> = 1 there: far (beyond two cells)
    # from the patch M_k is independent of the patch's masks, so E[score M_k] / p = b + p
    size, cells, p, b = 32, 4, 0.5, 1.0
    w = torch.zeros(3, size, size)
    w[0, 2:6, 2:6] = 1 / 16
    subject = _subject(Linear(w, b), size)
    x = torch.ones(1, 3, size, size)
    amap = convscope.explain(subject, x, "rise", target="class:0", masks=4000, cells=cells, p=p, batch=500)
    far = amap.maps[0, 22:, 22:]
    assert abs(far.mean() - (b + p)) < 0.05
    assert amap.maps[0, 2:6, 2:6].mean() > far.mean() + 0.1  # kept patch pixels raise the score


def test_rise_is_seeded_batch_independent_and_reports_progress(tiny64, photos):
    calls = []
    a = convscope.explain(tiny64, photos, "rise", masks=64, batch=16, progress=lambda d, t: calls.append(d))
    b = convscope.explain(tiny64, photos, "rise", masks=64, batch=64)
    c = convscope.explain(tiny64, photos, "rise", masks=64, batch=64, seed=1)
    assert np.abs(a.maps - b.maps).max() < 1e-5
    assert np.abs(a.maps - c.maps).max() > 1e-4
    assert len(calls) >= 5 and calls == sorted(calls) and calls[-1] == 2
    assert a.maps.shape == (2, 64, 64) and not a.signed
    with pytest.raises(UserInputError, match="fill"):
        convscope.explain(tiny64, photos, "rise", masks=4, fill="purple")


def _captum_direct(cls, subject, x, cls_index, seg, base, samples, batch, seed=0):
    out = []
    for i in range(len(x)):
        torch.manual_seed(seed)
        a = cls(lambda inp: subject.model(inp)[:, cls_index]).attribute(
            x[i : i + 1],
            baselines=base[i : i + 1],
            feature_mask=seg[i][None, None],
            n_samples=samples,
            perturbations_per_eval=batch,
        )
        out.append(a[0, 0].detach().numpy())
    return np.stack(out)


@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
@pytest.mark.parametrize("fill", ["zero", "gray"])
def test_superpixel_methods_equal_captum_called_directly(tiny64, photos, method, fill):
    captum_attr = pytest.importorskip("captum.attr")
    cls = captum_attr.KernelShap if method == "kernel_shap" else captum_attr.Lime
    kw = dict(segments=16, samples=80, batch=16, fill=fill, seed=5)
    subject, c = tiny64, 4
    if method == "lime":  # scores that vary enough for Lasso (alpha 0.01) to keep weights
        subject, c = (
            _subject(Linear(torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(1)) / 50), 64),
            0,
        )
    ours = convscope.explain(subject, photos, method, target=f"class:{c}", **kw)
    seg = superpixels(subject, photos, 16)
    base = (
        torch.zeros_like(photos)
        if fill == "zero"
        else subject.preprocess.normalize(torch.full_like(photos, 0.5))
    )
    ref = _captum_direct(cls, subject, photos, c, seg, base, 80, 16, seed=5)
    assert (np.abs(ref).max(axis=(1, 2)) > 0).all()  # a test that compares zeros cannot fail
    assert np.abs(ours.maps - ref).max() <= 1e-6 * np.abs(ref).max()
    assert ours.signed and ours.raw.shape == (2, 3, 64, 64)
    for i in range(2):  # one value per superpixel
        for k in seg[i].unique():
            assert np.ptp(ours.maps[i][seg[i].numpy() == int(k)]) == 0


@pytest.mark.parametrize("fill", ["zero", "mean"])
def test_kernel_shap_recovers_exact_shapley_values_of_an_additive_model(photos, fill):
    # score = <w, x> with w constant on each superpixel: superpixel k's Shapley value is exactly
    # <w, x - baseline> over its pixels, so a wrong mask or baseline shows
    x = photos[:1]
    probe = tiny_subject(size=64)
    seg = superpixels(probe, x, 20)[0]
    k = int(seg.max()) + 1
    coef = torch.randn(k, generator=torch.Generator().manual_seed(0))
    w = (coef[seg] / 100)[None].expand(3, -1, -1).clone()
    subject = _subject(Linear(w, 0.3), 64)
    base = torch.zeros_like(x) if fill == "zero" else x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    contrib = ((x - base)[0] * w).sum(0)
    shapley = torch.stack([contrib[seg == j].sum() for j in range(k)])
    expect = shapley[seg].numpy()
    amap = convscope.explain(subject, x, "kernel_shap", target="class:0", segments=20, samples=300, fill=fill)
    assert rel_err(amap.maps[0], expect) < 1e-3
    lime = convscope.explain(subject, x, "lime", target="class:0", segments=20, samples=300, fill=fill)
    assert np.corrcoef(lime.maps[0].ravel(), expect.ravel())[0, 1] > 0.95  # Lasso shrinks it a little


class Opaque(nn.Module):
    """A "wrapped API": the scores come from an opaque call, detached, with no gradient."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        with torch.no_grad():
            return self.inner(x).detach()


@pytest.fixture(scope="module")
def black_boxes():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    traced = torch.jit.trace(model, torch.zeros(1, 3, 64, 64))
    plain = Subject.wrap(model, input_size=64)
    return plain, [Subject.wrap(traced, input_size=64), Subject.wrap(Opaque(model), input_size=64)]


METHOD_OPTIONS = {
    "rise": dict(masks=48, batch=16),
    "kernel_shap": dict(segments=12, samples=40),
    "lime": dict(segments=12, samples=40),
    "occlusion": dict(window=16, stride=16),
}


@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_black_box_methods_run_on_torchscript_and_wrapped_apis(black_boxes, photos, method):
    plain, boxes = black_boxes
    want = convscope.explain(plain, photos, method, target="class:1", **METHOD_OPTIONS[method]).maps
    for subject in boxes:
        got = convscope.explain(subject, photos, method, target="class:1", **METHOD_OPTIONS[method]).maps
        assert got.shape == (2, 64, 64)
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_class_targets_on_an_unlabelled_torchscript_model(black_boxes, photos):
    traced = black_boxes[1][0]
    assert traced.num_outputs == 10  # no layer table: one forward pass says it
    amap = convscope.explain(traced, photos, "rise", target="class:9", masks=8)
    assert amap.targets == ["logit(9)", "logit(9)"]


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "gradcam", "fullgrad", "lrp"])
def test_gradient_methods_refuse_a_model_without_gradients_in_one_line(black_boxes, photos, method):
    opaque = black_boxes[1][1]
    with pytest.raises(UserInputError, match="no gradient.*black-box method") as e:
        convscope.explain(opaque, photos, method)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("method", ["guided", "deconvnet", "lrp", "fullgrad"])
def test_methods_that_intercept_operations_refuse_torchscript_in_one_line(black_boxes, photos, method):
    # their rules act on Python-level operations, which a traced graph never shows them: they
    # would return a plain gradient (guided, deconvnet) or a partial map (fullgrad, lrp)
    traced = black_boxes[1][0]
    with pytest.raises(UserInputError, match="TorchScript") as e:
        convscope.explain(traced, photos, method, target="class:1")
    assert "\n" not in str(e.value)


def test_missing_captum_is_a_one_line_error_naming_the_extra(tiny64, photos, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(UserInputError, match=r"convscope\[blackbox\]"):
        convscope.explain(tiny64, photos, "kernel_shap", samples=4)


@pytest.mark.parametrize(
    "method, options, said",
    [("rise", {"fill": "noise"}, "fill"), ("kernel_shap", {"fill": "noise"}, "fill")]
    + [("occlusion", {"fill": "white"}, "fill"), ("rise", {"p": 0}, "probability")]
    + [("lime", {"samples": 0}, "samples"), ("lrp", {"composite": "nope"}, "composite")],
)
def test_bad_option_values_are_refused_before_any_work(tiny64, photos, method, options, said):
    from convscope.attribution.api import get_method

    calls = []
    with pytest.raises(UserInputError, match=said):
        convscope.explain(tiny64, photos, method, progress=lambda d, t: calls.append(d), **options)
    assert calls == []  # refused before the first progress report
    with pytest.raises(UserInputError, match=said):
        get_method(method).validate(options)  # the cheap hook evaluate calls too


class RaisesOnBigBatches(nn.Module):
    """A model whose own bug reads like a missing gradient (on batches of more than 2)."""

    def __init__(self):
        super().__init__()
        self.inner = TinyCNN().eval()

    def forward(self, x):
        if len(x) > 2:
            raise RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn")
        return self.inner(x)


def test_a_models_own_error_is_not_taken_for_a_missing_gradient(photos):
    # the missing gradient is found where the score is taken, not by the text of an error: a
    # model's own error comes through as it is, not as advice to use a black-box method
    subject = Subject.wrap(RaisesOnBigBatches(), input_size=64)
    with pytest.raises(RuntimeError, match="element 0"):
        convscope.explain(subject, photos, "rise", target="class:1", masks=8, batch=8)


def test_rise_draws_the_same_masks_on_every_device():
    # drawn by the CPU generator and moved: a device's own generator would draw another stream
    # (and the meta device, standing in for an accelerator here, has none at all)
    cpu = rise_masks(16, (32, 32), cells=4, seed=3)
    moved = rise_masks(16, (32, 32), cells=4, seed=3, device="meta")
    assert all(m.device.type == "meta" and m.shape == c.shape for m, c in zip(moved, cpu))
    if torch.cuda.is_available():
        for c, g in zip(cpu, rise_masks(16, (32, 32), cells=4, seed=3, device="cuda")):
            assert torch.equal(c, g.cpu())


def test_lime_says_when_its_surrogate_is_zero_everywhere():
    subject = _subject(Constant(), 32)
    x = torch.zeros(1, 3, 32, 32)
    x[:, :, :, 16:] = 1  # two flat halves: SLIC finds superpixels
    with pytest.warns(UserWarning, match="surrogate is 0"):
        amap = convscope.explain(subject, x, "lime", target="class:0", segments=8, samples=16)
    assert not amap.maps.any()


def test_a_noise_image_gets_a_regular_grid_of_cells_with_a_warning(tiny64):
    # SLIC leaves pixel noise as one superpixel, which leaves nothing to attribute
    x = tiny64.preprocess.normalize(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    with pytest.warns(UserWarning, match="regular grid"):
        seg = superpixels(tiny64, x, 16)
    assert seg.max() + 1 == 16 and (seg[0].flatten().bincount() == 256).all()
    with pytest.warns(UserWarning, match="regular grid"):
        amap = convscope.explain(tiny64, x, "kernel_shap", segments=16, samples=40)
    assert len(np.unique(amap.maps[0])) > 1  # one value per cell, not one for the whole image
