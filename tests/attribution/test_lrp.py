"""LRP through Zennit: equal to Zennit used directly, conserving where the theory says so."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import convscope
from convscope.attribution.lrp import box_bounds
from convscope.errors import UserInputError
from convscope.preprocess import Preprocess
from convscope.subject import Subject

zennit = pytest.importorskip("zennit")
from zennit.attribution import Gradient  # noqa: E402
from zennit.canonizers import SequentialMergeBatchNorm  # noqa: E402
from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat  # noqa: E402
from zennit.torchvision import ResNetCanonizer  # noqa: E402


def bn_cnn(bias: bool = True, bn: bool = True, classes: int = 5) -> nn.Sequential:
    """conv-BN-ReLU twice, max pool, global average pool, linear; BN statistics made non-trivial."""
    torch.manual_seed(0)
    layers = [
        nn.Conv2d(3, 8, 3, padding=1, bias=bias),
        nn.BatchNorm2d(8) if bn else nn.Identity(),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=bias),
        nn.BatchNorm2d(16) if bn else nn.Identity(),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, classes, bias=bias),
    ]
    model = nn.Sequential(*layers)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def wrap(model: nn.Module, size: int = 32, classes: int = 5) -> Subject:
    pre = Preprocess(size=(size, size), resize=None, mode="squash")
    return Subject(model, pre, [f"c{i}" for i in range(classes)], name="bn_cnn")


def reference(subject, composite, x, classes):
    """Zennit alone: its Gradient attributor with the target logit as the output relevance."""
    with torch.no_grad():
        out = subject.model(x)
    onehot = torch.zeros_like(out)
    onehot[torch.arange(len(x)), classes] = out[torch.arange(len(x)), classes]
    with Gradient(subject.model, composite) as attributor:
        _, rel = attributor(x, onehot)
    return rel


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def images(n=3, size=32, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "name,make",
    [
        ("epsilon_plus", lambda s, x, c: EpsilonPlus(canonizers=c)),
        ("epsilon_alpha2_beta1", lambda s, x, c: EpsilonAlpha2Beta1(canonizers=c)),
        ("epsilon_plus_flat", lambda s, x, c: EpsilonPlusFlat(canonizers=c)),
        ("epsilon_gamma_box", lambda s, x, c: EpsilonGammaBox(*box_bounds(s, x), canonizers=c)),
    ],
)
def test_equals_zennit_on_a_bn_cnn(name, make):
    subject = wrap(bn_cnn())
    x = images()
    amap = convscope.explain(subject, x, "lrp", target="class:2", composite=name)
    ref = reference(subject, make(subject, x, [SequentialMergeBatchNorm()]), x, [2, 2, 2])
    assert rel_err(amap.raw, ref) <= 1e-5
    assert amap.maps.shape == (3, 32, 32) and amap.signed
    # canonizers are undone: the model's batch norms compute what they did before
    assert subject.model[1].running_var.min() > 0.4 and subject.model[1].eps > 0


def test_batch_norm_merge_changes_the_map():
    """The canonizer matters (BN un-merged gets Zennit's Pass rule): a test that can fail."""
    subject = wrap(bn_cnn())
    x = images()
    merged = convscope.explain(subject, x, "lrp", target=1, composite="epsilon_plus").raw
    plain = convscope.explain(subject, x, "lrp", target=1, composite="epsilon_plus", canonizer="none").raw
    assert rel_err(merged, plain) > 1e-3


@pytest.mark.parametrize("name", ["epsilon_plus", "epsilon_gamma_box"])
def test_equals_zennit_on_torchvision_resnet18(name):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=7).eval()
    for m in model.modules():  # random-init BN is the identity: give it statistics to merge
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    subject = wrap(model, size=32, classes=7)
    x = images(2, 32)
    amap = convscope.explain(subject, x, "lrp", target="top", composite=name)
    classes = amap_classes(subject, x)
    if name == "epsilon_plus":
        composite = EpsilonPlus(canonizers=[ResNetCanonizer()])
    else:
        composite = EpsilonGammaBox(*box_bounds(subject, x), canonizers=[ResNetCanonizer()])
    ref = reference(subject, composite, x, classes)
    assert rel_err(amap.raw, ref) <= 1e-5


def amap_classes(subject, x):
    with torch.no_grad():
        return subject.model(x).argmax(-1).tolist()


@pytest.mark.parametrize("composite", ["epsilon", "zplus", "epsilon_plus"])
def test_conservation_on_a_bias_free_relu_net(composite):
    """No bias, no BN, ReLU, max and average pooling: ε → 0 (LRP-0 = gradient × input) and z⁺
    conserve relevance, so each map sums to its image's target logit."""
    subject = wrap(bn_cnn(bias=False, bn=False))
    x = images(4)
    amap = convscope.explain(subject, x, "lrp", target="class:3", composite=composite, epsilon=1e-9)
    with torch.no_grad():
        logit = subject.model(x)[:, 3].numpy()
    sums = amap.maps.reshape(4, -1).sum(1)
    np.testing.assert_allclose(sums, logit, rtol=1e-4)


def test_bias_breaks_conservation():
    subject = wrap(bn_cnn(bias=True, bn=False))
    with torch.no_grad():
        for m in subject.model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.add_(0.5)
    x = images(4)
    amap = convscope.explain(subject, x, "lrp", target="class:3", composite="epsilon", epsilon=1e-9)
    with torch.no_grad():
        logit = subject.model(x)[:, 3].numpy()
    assert np.abs(amap.maps.reshape(4, -1).sum(1) - logit).max() > 1e-2


def test_unit_target_relevance_sums_to_its_value():
    subject = wrap(bn_cnn(bias=False, bn=False))
    x = images(2)
    name = subject.layers.names()[4]  # the second convolution
    amap = convscope.explain(subject, x, "lrp", target=f"{name}:5", composite="epsilon", epsilon=1e-9)
    with torch.no_grad():
        a = subject.model[:5](x)[:, 5].mean(dim=(1, 2)).numpy()
    np.testing.assert_allclose(amap.maps.reshape(2, -1).sum(1), a, rtol=1e-4)


def test_timm_batchnormact_merge_equals_zennit_on_the_plain_equivalent():
    """timm's BatchNormAct2d (norm + activation as one module with children) is merged as Zennit
    merges a BatchNorm2d followed by a ReLU: same relevance as the nn.Sequential equivalent."""
    from timm.layers import BatchNormAct2d

    plain = bn_cnn()
    fused = nn.Sequential(*[m for m in plain])
    for i in (1, 5):
        bn = plain[i]
        bna = BatchNormAct2d(bn.num_features, act_layer=nn.ReLU)
        bna.load_state_dict(bn.state_dict())
        fused[i] = bna
        fused[i + 1] = nn.Identity()
    fused.eval()
    x = images()
    ours = convscope.explain(wrap(fused), x, "lrp", target=4, composite="epsilon_plus").raw
    ref = reference(wrap(plain), EpsilonPlus(canonizers=[SequentialMergeBatchNorm()]), x, [4, 4, 4])
    assert rel_err(ours, ref) <= 1e-5
    unmerged = convscope.explain(wrap(fused), x, "lrp", target=4, composite="epsilon_plus", canonizer="none")
    assert rel_err(unmerged.raw, ref) > 1e-3


def test_transformers_are_refused():
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, depth=1, embed_dim=32, num_heads=2
    )
    vit = Subject.wrap(model.eval(), input_size=32)
    with pytest.raises(UserInputError, match="transformer"):
        convscope.explain(vit, images(1), "lrp", target=3)


def test_default_model_renders(default_subject, tmp_path):
    """The offline default (EfficientNet-Lite0: BatchNormAct2d, ReLU6, depthwise convs, residual
    adds) runs and renders; its relevance does not sum to the logit (see docs/attribution.md)."""
    from skimage.data import chelsea

    amap = convscope.explain(default_subject, [chelsea()], "lrp", target="top")
    assert np.isfinite(amap.maps).all() and np.abs(amap.maps).max() > 0
    amap.to_png(tmp_path / "lrp.png", 0)
    assert (tmp_path / "lrp.png").stat().st_size > 0


def test_user_errors():
    subject = wrap(bn_cnn())
    x = images(1)
    with pytest.raises(UserInputError, match="epsilon_plus"):
        convscope.explain(subject, x, "lrp", composite="epsilon_pluss")
    with pytest.raises(UserInputError, match="probabilities"):
        convscope.explain(subject, x, "lrp", target="prob:1")
    with pytest.raises(UserInputError, match="canonizer"):
        convscope.explain(subject, x, "lrp", canonizer="resnt")
    with pytest.raises(UserInputError, match="no option"):
        convscope.explain(subject, x, "lrp", epsilonn=0.1)


def test_missing_zennit_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "zennit", None)
    with pytest.raises(UserInputError, match=r"convscope\[lrp\]"):
        convscope.explain(wrap(bn_cnn()), images(1), "lrp")


def test_hooks_and_weights_are_restored_when_the_forward_fails():
    """A forward that breaks inside Zennit's context leaves no hook and the batch norms unmerged."""
    from tests.conftest import hook_count

    subject = wrap(bn_cnn())
    before = {k: v.clone() for k, v in subject.model.state_dict().items()}
    calls = []

    def fail_second(module, args):
        calls.append(1)
        if len(calls) == 2:  # the first forward gives the target's value, the second runs in Zennit's context
            raise RuntimeError("boom")

    handle = subject.model[4].register_forward_pre_hook(fail_second)
    with pytest.raises(RuntimeError, match="boom"):
        convscope.explain(subject, images(1), "lrp", target=1)
    handle.remove()
    assert hook_count(subject.model) == 0
    after = subject.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_tiny_cnn_with_a_reused_inplace_relu_and_residual_add(tiny):
    """convscope.testing's TinyCNN (one in-place ReLU called twice, ``out += x``) runs with no hook
    left; its unmatched residual add copies relevance into both branches, so no conservation."""
    from tests.conftest import hook_count

    amap = convscope.explain(tiny, torch.randn(2, 3, 32, 32), "lrp", target=3, composite="epsilon_plus")
    assert np.isfinite(amap.maps).all() and amap.maps.shape == (2, 32, 32)
    assert hook_count(tiny.model) == 0
