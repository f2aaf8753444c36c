"""The CAM family (LayerCAM, HiResCAM, XGrad-CAM, EigenCAM, EigenGrad-CAM, Ablation-CAM,
FullGrad) against pytorch-grad-cam at equal settings, on CNNs and a vision transformer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
from torch import nn

import convscope
from convscope.attribution.cam_family import EigenGradCAM, first_component
from convscope.attribution.targets import resolve_target
from convscope.errors import UserInputError
from convscope.subject import Subject
from convscope.testing import tiny_subject

gc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.ablation_layer import AblationLayerVit  # noqa: E402
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection  # noqa: E402

NEW = ("layercam", "hirescam", "xgradcam", "eigencam", "eigengradcam", "ablationcam", "fullgrad")
GRADIENT = {"layercam": gc.LayerCAM, "hirescam": gc.HiResCAM, "xgradcam": gc.XGradCAM}


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def _normalise(cam):
    """Per-image min-max to [0, 1] without an eps (pytorch-grad-cam's own eps of 1e-7 then only
    matters at 1e-7 of its already-rescaled maps)."""
    cam = np.asarray(cam, dtype=np.float64)
    cam = cam - cam.min(axis=(1, 2), keepdims=True)
    return cam / cam.max(axis=(1, 2), keepdims=True)


def _tokens_to_map(grid):
    def reshape(t):  # timm ViT tokens (B, 1 + h*w, C) -> (B, C, h, w), as the recorder lays them out
        return t[:, 1:].reshape(t.shape[0], *grid, t.shape[2]).permute(0, 3, 1, 2)

    return reshape


@pytest.fixture(scope="module")
def timm_vit():
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, depth=2, embed_dim=32, num_heads=2
    )
    return Subject.wrap(model.eval(), input_size=32)


@pytest.fixture(scope="module")
def tiny_cnn():
    return tiny_subject()


def _case(name, tiny_cnn, resnet18, timm_vit, default_subject):
    """(subject, layer, input batch, pytorch-grad-cam reshape_transform) of a named case."""
    gen = torch.Generator().manual_seed(2)
    if name == "tiny":
        return tiny_cnn, "conv2", torch.randn(2, 3, 32, 32, generator=gen), None
    if name == "resnet18":
        return resnet18, "layer4.1", torch.randn(2, 3, 64, 64, generator=gen), None
    if name == "default":
        return default_subject, "blocks.5", torch.randn(2, 3, 224, 224, generator=gen), None
    return timm_vit, "blocks.1.norm1", torch.rand(2, 3, 32, 32, generator=gen), _tokens_to_map((4, 4))


def _reference(cls, subject, layer, x, target, reshape=None, **kw):
    module = dict(subject.model.named_modules())[layer]
    with cls(model=subject.model, target_layers=[module], reshape_transform=reshape, **kw) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(target)] * x.shape[0])


@pytest.mark.parametrize("case", ["tiny", "resnet18", "default", "vit"])
@pytest.mark.parametrize("method", sorted(GRADIENT))
def test_gradient_cams_match_pytorch_grad_cam(method, case, tiny_cnn, resnet18, timm_vit, default_subject):
    subject, layer, x, reshape = _case(case, tiny_cnn, resnet18, timm_vit, default_subject)
    ref = _reference(GRADIENT[method], subject, layer, x, 3, reshape)
    ours = convscope.explain(subject, x, method, target=3, layer=layer).maps
    assert ours.shape == ref.shape and ours.min() >= 0
    assert rel_err(_normalise(ours), ref) < 1e-4


def test_vit_cams_use_the_default_token_layer(timm_vit):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ref = _reference(gc.LayerCAM, timm_vit, "blocks.1.norm1", x, 3, _tokens_to_map((4, 4)))
    ours = convscope.explain(timm_vit, x, "layercam", target=3).maps  # default layer: blocks.1.norm1
    assert rel_err(_normalise(ours), ref) < 1e-4


@pytest.mark.parametrize("case", ["tiny", "resnet18", "default", "vit"])
@pytest.mark.parametrize("method", ["eigencam", "eigengradcam"])
def test_eigen_cams_match_pytorch_grad_cam_up_to_the_sign(
    method, case, tiny_cnn, resnet18, timm_vit, default_subject
):
    """Equal to pytorch-grad-cam's first-component projection up to its sign, which an SVD leaves
    arbitrary: ours is the sign that correlates with the centred channel sum, theirs whatever
    numpy returns. With the sign aligned, pytorch-grad-cam's ReLU-and-rescale gives our map."""
    subject, layer, x, _ = _case(case, tiny_cnn, resnet18, timm_vit, default_subject)
    acts, grads = EigenGradCAM(subject, layer=layer).activations_and_grads(x, resolve_target(subject, 3))
    m = acts if method == "eigencam" else grads * acts
    ours_proj = first_component(m).numpy()
    ref_proj = get_2d_projection(m.numpy())
    sign = np.sign((ours_proj * ref_proj).sum(axis=(1, 2)))[:, None, None]
    assert rel_err(ours_proj, sign * ref_proj) < 1e-4
    centred = m.flatten(2) - m.flatten(2).mean(-1, keepdim=True)
    assert ((torch.as_tensor(ours_proj).flatten(1) * centred.sum(1)).sum(1) >= 0).all()  # our convention
    # pytorch-grad-cam's pipeline: ReLU, rescale and resize per layer, rescale the layers' mean
    ref = scale_cam_image(scale_cam_image(np.maximum(sign * ref_proj, 0), tuple(x.shape[2:][::-1])))
    ours = convscope.explain(subject, x, method, target=3, layer=layer).maps
    assert rel_err(_normalise(ours), ref) < 1e-4


def test_eigencam_equals_pytorch_grad_cam_where_the_signs_agree(resnet18):
    subject, layer, x, _ = _case("resnet18", None, resnet18, None, None)
    ref = _reference(gc.EigenCAM, subject, layer, x, 3)
    ours = convscope.explain(subject, x, "eigencam", target=3, layer=layer).maps
    assert rel_err(_normalise(ours), ref) < 1e-4


class _ZeroPatchTokens(AblationLayerVit):
    """pytorch-grad-cam's ViT ablation layer with the paper's ablation (zero), on the patch
    tokens only (the map's positions; ours leaves the class token as it is)."""

    def __call__(self, x):
        out = self.activations
        for i in range(out.size(0)):
            out[i, 1:, self.indices[i]] = 0
        return out


@pytest.mark.parametrize("case", ["tiny", "resnet18", "vit"])
def test_ablationcam_matches_pytorch_grad_cam(case, tiny_cnn, resnet18, timm_vit):
    """On rectified layers (the minimum activation is 0) pytorch-grad-cam ablates to 0 as the
    paper; on the ViT its ablation layer writes min - 1e7 (cascading from channel to channel),
    so it is given the paper's zero ablation of the map's positions."""
    subject, layer, x, reshape = _case(case, tiny_cnn, resnet18, timm_vit, None)
    batch = 7
    if case == "tiny":
        layer = "block"  # a rectified output
    if case == "resnet18":  # pytorch-grad-cam runs the whole network per ablation: keep it small
        layer, x, batch = "layer3.1", x[:1], 64
    kw = {"ablation_layer": _ZeroPatchTokens()} if case == "vit" else {}
    ref = _reference(gc.AblationCAM, subject, layer, x, 3, reshape, batch_size=batch, **kw)
    ours = convscope.explain(subject, x, "ablationcam", target=3, layer=layer, batch=batch).maps
    assert rel_err(_normalise(ours), ref) < 1e-4


class _Concat(nn.Module):
    """A map from before the CAM layer is concatenated after it: the batch-1 prefix cannot be
    broadcast there, so Ablation-CAM falls back to repeating the image."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(10, 5)

    def forward(self, x):
        a = self.conv1(x)
        b = self.act(self.conv2(a))
        return self.fc(torch.cat([a, b], dim=1).mean(dim=(2, 3)))


def test_ablationcam_falls_back_where_the_prefix_cannot_broadcast():
    torch.manual_seed(0)
    subject = Subject.wrap(_Concat().eval(), input_size=16)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    ref = _reference(gc.AblationCAM, subject, "act", x, 2, batch_size=4)
    ours = convscope.explain(subject, x, "ablationcam", target=2, layer="act", batch=4).maps
    assert rel_err(_normalise(ours), ref) < 1e-4


def test_ablationcam_batches_give_the_same_map(timm_vit, tiny_cnn):
    for subject in (timm_vit, tiny_cnn):
        x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
        one = convscope.explain(subject, x, "ablationcam", target="top", batch=1).maps
        many = convscope.explain(subject, x, "ablationcam", target="top", batch=64).maps
        assert float(np.abs(one).max()) > 0
        np.testing.assert_allclose(one, many, rtol=1e-4, atol=1e-6 * float(np.abs(one).max()))


class _Scaled(nn.Module):
    """The model's output times ``c``: FullGrad's gradient terms scale by ``c``, which makes
    pytorch-grad-cam's eps of 1e-7 in each per-channel rescale negligible."""

    def __init__(self, model, c):
        super().__init__()
        self.model, self.c = model, c

    def forward(self, x):
        return self.model(x) * self.c


def _random_bn(model):
    """A copy whose batch norms have random statistics and affine terms (freshly initialised
    ones add a bias of exactly 0, which FullGrad's bias terms would not see)."""
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(6)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.5)
    return model


@pytest.fixture(scope="module")
def resnet18_bn(resnet18):
    return Subject.wrap(_random_bn(resnet18.model).eval(), input_size=64)


def _fullgrad_reference(subject, x, target):
    with gc.FullGrad(model=_Scaled(subject.model, 1e6), target_layers=[]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)] * x.shape[0])
        return ref, list(cam.bias_data), list(cam.activations_and_grads.gradients)


@pytest.mark.parametrize("case", ["tiny", "resnet18_bn", "vit"])
def test_fullgrad_per_channel_matches_pytorch_grad_cam(case, tiny_cnn, resnet18_bn, timm_vit):
    subject = {"tiny": tiny_cnn, "resnet18_bn": resnet18_bn, "vit": timm_vit}[case]
    h, w = subject.input_size
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(7))
    ref, _, _ = _fullgrad_reference(subject, x, 3)
    ours = convscope.explain(subject, x, "fullgrad", target=3, normalize="channel").maps
    assert rel_err(_normalise(ours), ref) < 1e-4


def test_fullgrad_per_layer_is_the_authors_rescale(resnet18_bn):
    """The default rescales each layer's |bias x gradient| per image as a whole (the authors'
    code), here rebuilt from pytorch-grad-cam's own gradients and biases."""
    import torch.nn.functional as F

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    _, biases, grads = _fullgrad_reference(resnet18_bn, x, 3)
    xr = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(resnet18_bn.model(xr)[:, 3].sum(), xr)

    def rescale(t):
        t = t - t.amin(dim=(1, 2, 3), keepdim=True)
        return t / t.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-30)

    ref = rescale((x * gx).abs()).sum(1)
    assert len(grads) == len(biases) == 20  # every BatchNorm2d of ResNet-18
    for bias, g in zip(biases, grads):
        term = rescale((torch.as_tensor(bias)[None, :, None, None] * g).abs()).sum(1, keepdim=True)
        ref = ref + F.interpolate(term, size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    ours = convscope.explain(resnet18_bn, x, "fullgrad", target=3).maps
    assert rel_err(_normalise(ours), _normalise(ref.numpy())) < 1e-4


def test_fullgrad_sees_fused_batch_norms(default_subject):
    """timm's BatchNormAct2d is a BatchNorm2d subclass that applies its activation inside:
    pytorch-grad-cam (exact-type match on module outputs) uses none of EfficientNet-Lite's batch
    norms; ours intercepts the batch-norm operation and takes its pre-activation output."""
    from convscope.attribution.cam_family import BiasOutputs

    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(9), requires_grad=True)
    mode = BiasOutputs()
    with mode:
        default_subject.model(x)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in default_subject.model.modules())
    assert n_bn > 40 and len(mode.found) == n_bn
    with gc.FullGrad(model=default_subject.model, target_layers=[]) as cam:
        assert len(cam.bias_data) == 0  # no exact nn.Conv2d with a bias or nn.BatchNorm2d


@pytest.mark.parametrize("method", NEW)
def test_every_new_method_is_registered_and_gives_a_map(method, tiny_cnn, timm_vit):
    assert method in convscope.attribution.method_names()
    for subject in (tiny_cnn, timm_vit):
        x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(10))
        maps = convscope.explain(subject, x, method, target="top").maps
        assert maps.shape == (2, 32, 32) and np.isfinite(maps).all() and maps.min() >= 0
        assert maps.std() > 0


@pytest.mark.parametrize("method", NEW)
def test_unit_targets(method, tiny_cnn):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    amap = convscope.explain(tiny_cnn, x, method, target="conv2:3")
    assert amap.targets == ["unit conv2:3"] and np.isfinite(amap.maps).all() and amap.maps.std() > 0


@pytest.mark.parametrize("method", ["layercam", "hirescam", "xgradcam", "eigengradcam"])
def test_post_attention_layer_is_refused(timm_vit, method):
    with pytest.raises(UserInputError, match=r"blocks\.1\.mlp: its positions do not reach.*blocks\.1\.norm1"):
        convscope.explain(timm_vit, torch.rand(1, 3, 32, 32), method, layer="blocks.1.mlp")


def test_bad_options_are_refused(tiny_cnn):
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(UserInputError, match="normalize"):
        convscope.explain(tiny_cnn, x, "fullgrad", normalize="pixel")
    with pytest.raises(UserInputError, match="no option 'layer'"):
        convscope.explain(tiny_cnn, x, "fullgrad", layer="conv2")
    with pytest.raises(UserInputError, match="batch"):
        convscope.explain(tiny_cnn, x, "ablationcam", batch=0)


class _NoGrad(nn.Module):
    """An ordinary module whose forward runs under no_grad: hooks work, gradients do not."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        with torch.no_grad():
            return self.model(x)


def test_the_gradient_free_cams_run_on_a_model_without_gradients():
    plain = tiny_subject(size=32)
    wrapped = Subject.wrap(_NoGrad(plain.model).eval(), input_size=32)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    layer = convscope.attribution.cam.default_cam_layer(plain)
    for method in ("scorecam", "eigencam", "ablationcam"):
        want = convscope.attribution.explain(plain, x, method, target=1)
        got = convscope.attribution.explain(wrapped, x, method, target=1)  # default layer, no gradient
        torch.testing.assert_close(got.maps, want.maps, rtol=1e-5, atol=1e-6)
        named = convscope.attribution.explain(wrapped, x, method, target=1, layer="model." + layer)
        torch.testing.assert_close(named.maps, want.maps, rtol=1e-5, atol=1e-6)
    with pytest.raises(UserInputError, match="no gradient.*scorecam, eigencam, ablationcam"):
        convscope.attribution.explain(wrapped, x, "gradcam", target=1)  # a gradient CAM still refuses
