from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convscope
from convscope.receptive import ReceptiveField
from convscope.trace import trace_layers


def _rf(subject, name):
    rf = subject.layer(name).rf
    assert rf is not None
    return rf


def test_alexnet_known_values(alexnet):
    conv1 = _rf(alexnet, "features.0")
    assert conv1.size == (11, 11) and conv1.jump == (4, 4)
    pool5 = _rf(alexnet, "features.12")
    assert pool5.size == (195, 195) and pool5.jump == (32, 32)
    assert _rf(alexnet, "classifier.6").is_global


def test_vgg16_pool5():
    vgg = convscope.load("torchvision:vgg16", weights=None)
    pool5 = _rf(vgg, "features.30")
    assert pool5.size == (212, 212) and pool5.jump == (32, 32)


def test_resnet18_through_skip_connections(resnet18):
    # 435 px is the published theoretical receptive field of ResNet-18's last stage.
    rf = _rf(resnet18, "layer4")
    assert rf.size == (435, 435) and rf.jump == (32, 32)
    assert _rf(resnet18, "layer1.0.relu#1").size == (27, 27)


def test_box_of_a_unit(alexnet):
    rf = _rf(alexnet, "features.0")  # k=11, stride 4, padding 2
    box = rf.box(0, 0)
    assert (box.y0, box.x0, box.y1, box.x1) == (-2, -2, 8, 8)
    assert rf.box(1, 2).x0 == 6 and rf.box(1, 2).y0 == 2
    assert box.clip(224, 224).y0 == 0


class _Mixed(nn.Module):
    """Strides, dilation, asymmetric padding, 'same' padding, skip add, concat, avg pool."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=2, dilation=2)
        self.c = nn.Conv2d(4, 4, 1)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.d = nn.Conv2d(8, 4, 2, padding="same")
        self.e = nn.Conv2d(4, 4, 5, stride=1)

    def forward(self, x):
        x = torch.tanh(self.a(x))
        y = torch.tanh(self.b(x)) + self.c(x)
        x = self.pool(torch.cat([x, y], 1))
        x = torch.tanh(self.d(x))
        return self.e(F.pad(x, (2, 1, 0, 3)))


@pytest.mark.parametrize("layer", ["a", "b", "pool", "d", "e"])
def test_box_equals_gradient_support(layer):
    # With smooth activations and generic weights, the input pixels that a unit's value depends
    # on are exactly its theoretical receptive field (clipped to the image).
    torch.manual_seed(0)
    model = _Mixed().double().eval()
    size = 48
    table = trace_layers(model, (size, size))
    info = table[layer]
    x = torch.randn(1, 3, size, size, dtype=torch.double, requires_grad=True)
    with convscope.Recorder(model, [layer], detach=False) as rec:
        model(x)
    out = rec[layer]
    _, h, w = info.shape
    for y, xx in [(0, 0), (h // 2, w // 2), (h - 1, w - 1)]:
        (grad,) = torch.autograd.grad(out[0, :, y, xx].sum(), x, retain_graph=True)
        support = grad.abs().sum(dim=(0, 1)) > 0
        ys, xs = torch.nonzero(support, as_tuple=True)
        box = info.rf.box(y, xx).clip(size, size)
        assert (ys.min().item(), xs.min().item(), ys.max().item(), xs.max().item()) == (
            box.y0,
            box.x0,
            box.y1,
            box.x1,
        ), (layer, y, xx)


def test_squeeze_excitation_sets_global_context():
    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.gate = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            x = self.conv(x)
            return x * torch.sigmoid(self.gate(x.mean((2, 3), keepdim=True)))

    table = trace_layers(SE().eval(), (16, 16))
    assert not table["conv"].rf.global_context
    assert table["gate"].rf.size == (18, 18)  # the whole padded map behind the global mean


def test_efficientnet_lite0_stages(default_subject):
    assert _rf(default_subject, "conv_stem").size == (3, 3)
    assert _rf(default_subject, "blocks.6").jump == (32, 32)
    assert _rf(default_subject, "classifier").is_global


def test_vit_patch_embedding():
    import timm

    vit = convscope.Subject.wrap(timm.create_model("vit_tiny_patch16_224", pretrained=False))
    proj = vit.layer("patch_embed.proj").rf
    assert proj.size == (16, 16) and proj.jump == (16, 16)


def test_str():
    assert str(ReceptiveField((11, 11), (4, 4), (3, 3))) == "11 px / stride 4"
    assert str(ReceptiveField.whole()) == "global"
