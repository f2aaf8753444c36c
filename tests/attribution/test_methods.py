from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import convscope
from convscope.attribution import deletion_insertion, resolve_target, sanity_check
from convscope.attribution.relu_rules import ReluRule
from convscope.errors import LayerNotFoundError, NameNotFoundError, UserInputError
from convscope.testing import tiny_subject


@pytest.fixture(scope="module")
def chelsea_x(default_subject):
    from skimage import data

    return default_subject.load_images([data.chelsea()])


def test_targets_fail_before_work(default_subject):
    with pytest.raises(UserInputError, match="out of range"):
        resolve_target(default_subject, "class:1000")
    with pytest.raises(UserInputError, match="no unit 40"):
        resolve_target(default_subject, "blocks.2:40")
    with pytest.raises(LayerNotFoundError, match="blocks.2"):
        resolve_target(default_subject, "blocks.22:1")
    with pytest.raises(UserInputError, match="outside"):
        resolve_target(default_subject, "blocks.2:1@30,0")
    with pytest.raises(NameNotFoundError, match="gradcam"):
        convscope.explain(default_subject, torch.zeros(1, 3, 224, 224), "gradcan")
    t = resolve_target(default_subject, "prob:285")
    assert t.kind == "prob" and t.classes == (285,)


def test_any_image_size_and_mode(default_subject):
    gray = Image.fromarray((np.random.default_rng(0).random((50, 90)) * 255).astype(np.uint8))
    amap = convscope.explain(default_subject, [gray], "saliency")
    assert amap.maps.shape == (1, 224, 224) and amap.images.shape == (1, 224, 224, 3)


def test_top_target_is_the_prediction(default_subject, chelsea_x):
    amap = convscope.explain(default_subject, chelsea_x, "saliency", target="top")
    assert amap.targets == ["logit(tiger cat)"]  # the offline default's top class for Chelsea


def test_probability_and_unit_targets_use_their_score(default_subject, chelsea_x):
    x = chelsea_x.clone().requires_grad_(True)
    p = default_subject.model(x).softmax(-1)[0, 285]
    (g,) = torch.autograd.grad(p, x)
    amap = convscope.explain(default_subject, chelsea_x, "saliency", target="prob:285")
    assert np.allclose(amap.raw, g.abs().numpy(), atol=1e-7)
    x = chelsea_x.clone().requires_grad_(True)
    with default_subject.record(["blocks.3"], detach=False) as rec:
        default_subject(x)
    (g,) = torch.autograd.grad(rec["blocks.3"][0, 5, 4, 6], x)
    amap = convscope.explain(default_subject, chelsea_x, "saliency", target="blocks.3:5@4,6")
    assert np.allclose(amap.raw, g.abs().numpy(), atol=1e-7)
    # the gradient of one neuron is zero outside its receptive field
    box = default_subject.layer("blocks.3").rf.box(4, 6).clip(224, 224)
    outside = amap.maps.copy()
    outside[0, box.y0 : box.y1 + 1, box.x0 : box.x1 + 1] = 0
    assert outside.max() == 0 and amap.maps.max() > 0


def test_direction_target(default_subject, chelsea_x):
    d = convscope.Direction.random("blocks.4", 112, 1, seed=0)[0]
    amap = convscope.explain(default_subject, chelsea_x, "gradcam", target=d, layer="blocks.3")
    assert amap.targets[0].startswith("direction") and amap.maps.max() > 0


def test_integrated_gradients_completeness():
    # Attributions add up to score(x) - score(baseline) (Sundararajan et al., axiom 1).
    subject = tiny_subject()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    amap = convscope.explain(subject, x, "ig", target=4, steps=128)
    t = resolve_target(subject, 4)
    black = subject.preprocess.normalize(torch.zeros_like(x))
    with torch.no_grad():
        gap = (t.score(subject, x) - t.score(subject, black)).numpy()
    assert np.allclose(amap.raw.sum(axis=(1, 2, 3)), gap, rtol=0.02, atol=1e-4)


def test_smoothgrad_is_reproducible(default_subject, chelsea_x):
    a = convscope.explain(default_subject, chelsea_x, "smoothgrad", samples=4, seed=3)
    b = convscope.explain(default_subject, chelsea_x, "smoothgrad", samples=4, seed=3)
    c = convscope.explain(default_subject, chelsea_x, "smoothgrad", samples=4, seed=4)
    assert np.array_equal(a.raw, b.raw) and not np.array_equal(a.raw, c.raw)


def test_relu_rule_covers_functional_and_inplace_relus():
    subject = tiny_subject()  # conv1 -> ReLU(inplace) module; conv2 -> torch.relu
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    mode = ReluRule("guided")
    with mode:
        subject.model(x)
    assert mode.count == 4  # relu module (x1 in stem, x2 in the block) + functional relu


def test_rule_warns_without_rectifiers():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.SiLU(), torch.nn.Flatten(), torch.nn.LazyLinear(2)
    )
    model(torch.zeros(1, 3, 8, 8))
    subject = convscope.Subject.wrap(model, input_size=8)
    with pytest.warns(UserWarning, match="no rectifier"):
        convscope.explain(subject, torch.randn(1, 3, 8, 8), "guided", target=0)


def test_occlusion_options_and_unit_speedup(default_subject, chelsea_x):
    for fill in ("gray", "zero", "mean", "blur", "noise"):
        amap = convscope.explain(
            default_subject, chelsea_x, "occlusion", target=285, window=56, stride=56, fill=fill
        )
        assert amap.maps.shape == (1, 224, 224) and np.isfinite(amap.maps).all()
    with pytest.raises(UserInputError, match="fill"):
        convscope.explain(default_subject, chelsea_x, "occlusion", fill="pink")
    # a single neuron: only windows over its receptive field count, and others are exactly 0
    t = "blocks.2:3@14,14"
    fast = convscope.explain(default_subject, chelsea_x, "occlusion", target=t, window=16, stride=16)
    box = default_subject.layer("blocks.2").rf.box(14, 14)
    outside = fast.maps.copy()
    outside[0, max(box.y0 - 15, 0) : box.y1 + 16, max(box.x0 - 15, 0) : box.x1 + 16] = 0
    assert np.all(outside == 0)
    from convscope.attribution.occlusion import relevant_boxes

    full = [(y, x) for y in range(0, 209, 16) for x in range(0, 209, 16)]
    kept = relevant_boxes(default_subject, full, (16, 16), resolve_target(default_subject, t))
    assert len(kept) < len(full) / 4


def test_zeiler_fergus_equals_deconvnet_rule_gradient(alexnet):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    amap = convscope.explain(alexnet, x, "zeiler_fergus", target="features.10:7")
    # The projection is J^T s under the deconvnet rule, s = the unit's own map.
    xr = x.clone().requires_grad_(True)
    with ReluRule("deconvnet"):
        h = alexnet.model.features[:11](xr)
    s = torch.zeros_like(h)
    s[:, 7] = h[:, 7].detach()
    (g,) = torch.autograd.grad((h * s).sum(), xr)
    assert np.allclose(amap.raw, g.numpy(), rtol=1e-4, atol=1e-6 * np.abs(g.numpy()).max())


def test_zeiler_fergus_checkerboard_option():
    # A stride-4, 11x11 convolution of ones: transposed, each pixel is painted by 2 or 3
    # overlapping kernels, a checkerboard of 2s and 3s; even_overlap removes it.
    conv = torch.nn.Conv2d(3, 1, 11, stride=4, bias=False)
    torch.nn.init.constant_(conv.weight, 1.0)
    subject = convscope.Subject.wrap(torch.nn.Sequential(conv, torch.nn.ReLU()), input_size=99)
    x = torch.ones(1, 3, 99, 99)
    plain = convscope.explain(subject, x, "zeiler_fergus", target="1:0").maps[0][12:-12, 12:-12]
    even = convscope.explain(subject, x, "zeiler_fergus", target="1:0", even_overlap=True)
    even = even.maps[0][12:-12, 12:-12]
    assert plain.std() / plain.mean() > 0.15
    assert even.std() / even.mean() < 1e-5


def test_zeiler_fergus_refuses_other_architectures(resnet18, alexnet):
    with pytest.raises(UserInputError, match="sequential"):
        convscope.explain(resnet18, torch.zeros(1, 3, 224, 224), "zeiler_fergus", target="layer4:0")
    with pytest.raises(UserInputError, match="unit"):
        convscope.explain(alexnet, torch.zeros(1, 3, 224, 224), "zeiler_fergus", target=3)


def test_sanity_check_separates_model_from_image(default_subject, chelsea_x):
    layers = ["classifier", "conv_head", "blocks.6.0.conv_pwl"]

    def saliency(s):
        return convscope.explain(s, chelsea_x, "saliency", target=285).maps

    def edges(s):  # a "method" that ignores the model: image gradients
        img = chelsea_x[0].mean(0).numpy()
        return np.abs(np.gradient(img)[0])[None]

    real = sanity_check(saliency, default_subject, layers)
    fake = sanity_check(edges, default_subject, layers)
    assert real.correlations[-1] < 0.5
    assert np.allclose(fake.correlations, 1.0)
    assert real.to_image().width > 100
    assert default_subject.model.classifier.weight.abs().sum() > 0  # original untouched
    assert convscope.explain(default_subject, chelsea_x, "saliency").targets == ["logit(tiger cat)"]


def test_deletion_and_insertion_rank_a_good_map_above_its_reverse(default_subject, chelsea_x):
    target = resolve_target(default_subject, 285)
    maps = convscope.explain(default_subject, chelsea_x, "gradcam", target=285).maps
    dele, ins = deletion_insertion(default_subject, chelsea_x, maps, target, steps=8)
    rdele, rins = deletion_insertion(default_subject, chelsea_x, -maps, target, steps=8)
    assert dele.auc[0] < rdele.auc[0] and ins.auc[0] > rins.auc[0]
    assert dele.scores.shape == (1, 9) and dele.scores[0, 0] == pytest.approx(ins.scores[0, -1], rel=1e-4)


def test_result_save_and_render(default_subject, chelsea_x, tmp_path):
    amap = convscope.explain(default_subject, chelsea_x, "input_x_gradient", target=285)
    path = amap.save(tmp_path / "a.npz")
    data = np.load(path)
    assert np.array_equal(data["maps"], amap.maps) and data["raw"].shape == (1, 3, 224, 224)
    img = Image.open(amap.to_png(tmp_path / "a.png"))
    assert img.size == (3 * 224 + 16, 16 + 224 + 4 + 20 + 4)  # title, tiles, colour bar
    n = amap.normalized(0)
    assert n.min() >= -1 and n.max() <= 1 and n.min() < 0  # signed map keeps its sign
