"""Numerical agreement with Captum and pytorch-grad-cam at equal settings."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convscope

captum_attr = pytest.importorskip("captum.attr")


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    subject = convscope.load("torchvision:vgg11", weights=None)
    subject.preprocess = convscope.Preprocess(size=(64, 64), resize=None, mode="squash")
    return subject


@pytest.fixture(scope="module")
def x64():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _captum(cls, model, x, target, **kw):
    return cls(model).attribute(x.clone().requires_grad_(True), target=target, **kw).detach().numpy()


@pytest.mark.parametrize("model_name", ["vgg", "resnet18"])
def test_gradient_methods_match_captum(model_name, vgg, resnet18, x64):
    subject = vgg if model_name == "vgg" else resnet18
    m = subject.model
    t = 7
    ours = convscope.explain(subject, x64, "saliency", target=t)
    assert rel_err(ours.raw, _captum(captum_attr.Saliency, m, x64, t, abs=True)) < 1e-4
    ours = convscope.explain(subject, x64, "input_x_gradient", target=t)
    assert rel_err(ours.raw, _captum(captum_attr.InputXGradient, m, x64, t)) < 1e-4
    ours = convscope.explain(subject, x64, "integrated_gradients", target=t, steps=16, baseline="zero")
    ref = (
        captum_attr.IntegratedGradients(m)
        .attribute(x64, target=t, n_steps=16, method="riemann_trapezoid")
        .detach()
        .numpy()
    )
    # Captum's trapezoid weights are 1/n (they sum to (n-1)/n); ours are the exact rule's
    # 1/(n-1), so Captum's attributions are (n-1)/n of ours.
    assert rel_err(ours.raw * 15 / 16, ref) < 1e-4


def test_relu_rules_match_captum_on_a_relu_model(vgg, x64):
    m = vgg.model
    for method, cls in (("guided", captum_attr.GuidedBackprop), ("deconvnet", captum_attr.Deconvolution)):
        ours = convscope.explain(vgg, x64, method, target=3)
        assert rel_err(ours.raw, _captum(cls, m, x64, 3)) < 1e-4, method


class _CaptumReLU6(nn.ReLU):
    """An nn.ReLU (so Captum hooks it) that computes ReLU6."""

    def forward(self, x):
        return F.relu6(x)


def test_relu_rules_on_relu6_efficientnet(default_subject):
    from skimage import data

    x = default_subject.load_images([data.chelsea()])
    x_req = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(default_subject.model(x_req)[0, 285], x_req)
    plain = plain.numpy()
    twin = copy.deepcopy(default_subject.model)
    n = 0
    for _, mod in list(twin.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(mod, child_name, _CaptumReLU6())
                n += 1
    assert n > 10
    for method, cls in (("guided", captum_attr.GuidedBackprop), ("deconvnet", captum_attr.Deconvolution)):
        ours = convscope.explain(default_subject, x, method, target=285)
        ref = _captum(cls, twin, x, 285)
        assert rel_err(ours.raw, ref) < 1e-4, method
        # Captum on the unmodified model silently returns the plain gradient; we must not.
        assert rel_err(ours.raw, plain) > 0.1
    captum_on_original = _captum(captum_attr.GuidedBackprop, default_subject.model, x, 285)
    assert rel_err(captum_on_original, plain) < 1e-6  # the failure the issue measured


def test_occlusion_matches_captum(resnet18, x64):
    ours = convscope.explain(
        resnet18, x64, "occlusion", target=5, window=16, stride=12, fill="zero", batch=16
    )
    ref = (
        captum_attr.Occlusion(resnet18.model)
        .attribute(
            x64,
            sliding_window_shapes=(3, 16, 16),
            strides=(3, 12, 12),
            baselines=0,
            target=5,
            perturbations_per_eval=16,
        )
        .detach()
        .numpy()
    )
    assert rel_err(ours.raw, ref) < 1e-4


def _normalise(cam):
    cam = cam - cam.min(axis=(1, 2), keepdims=True)
    return cam / (cam.max(axis=(1, 2), keepdims=True) + 1e-7)


@pytest.mark.parametrize("subject_name", ["resnet18", "default"])
def test_gradcam_matches_pytorch_grad_cam(subject_name, resnet18, default_subject):
    gc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    subject = resnet18 if subject_name == "resnet18" else default_subject
    layer = "layer4.1" if subject_name == "resnet18" else "blocks.5"
    module = dict(subject.model.named_modules())[layer]
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with gc.GradCAM(model=subject.model, target_layers=[module]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(9)] * 2)
    ours = convscope.explain(subject, x, "gradcam", target=9, layer=layer)
    assert np.abs(_normalise(ours.maps) - ref).max() < 2e-3


def test_gradcam_plus_plus_matches_the_reference_formula(default_subject):
    """pytorch-grad-cam's Grad-CAM++ weights with its eps made negligible: feeding it
    gradients * c and activations / c leaves the paper's formula unchanged and divides the
    eps term by c^2."""
    gc = pytest.importorskip("pytorch_grad_cam")
    from skimage import data

    from convscope.attribution.cam import GradCAMPlusPlus
    from convscope.attribution.targets import resolve_target

    x = default_subject.load_images([data.chelsea(), data.coffee()])
    target = resolve_target(default_subject, 285)
    for layer in ("blocks.5", "bn2"):
        impl = GradCAMPlusPlus(default_subject, layer=layer)
        acts, grads = impl.activations_and_grads(x, target)
        c = 1e4
        w = gc.GradCAMPlusPlus.get_cam_weights(
            None, None, None, None, (acts / c).numpy(), (grads * c).numpy()
        )
        ref = F.relu((torch.as_tensor(w)[:, :, None, None] * (acts / c)).sum(1))
        ours, _ = impl.attribute(x, target)
        ref_up = impl.upsample(ref, x.shape[2:]).numpy()
        assert rel_err(_normalise(ours.numpy()), _normalise(ref_up)) < 1e-4, layer


def test_gradcam_on_a_unit_and_on_efficientnet(default_subject):
    from skimage import data

    amap = convscope.explain(default_subject, [data.chelsea()], "gradcam", target="blocks.6:3")
    assert amap.maps.shape == (1, 224, 224) and amap.maps.min() >= 0
    assert amap.targets == ["unit blocks.6:3"]
