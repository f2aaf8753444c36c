"""Synthesis on models that run only at their input size (a Linear after a flatten, vision
transformers): every image that reaches the model has exactly the input size; on a convnet the
augmentations still change the size, as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from convscope.preprocess import Preprocess
from convscope.subject import Subject
from convscope.synthesis import class_model, dream, invert, optimize, visualize_units
from convscope.synthesis import objectives as O
from convscope.synthesis import transforms as T
from convscope.synthesis.engine import model_transform
from convscope.testing import tiny_subject

SIZE = 32


class FlatNet(nn.Module):
    """conv -> ReLU -> conv -> ReLU -> flatten -> Linear: runs at 32 x 32 only."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(6 * (SIZE // 4) ** 2, num_classes)

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(x.flatten(1))


def fixed_subject(**kw) -> Subject:
    torch.manual_seed(0)
    pre = Preprocess(size=(SIZE, SIZE), resize=None, mode="squash")
    s = Subject(FlatNet(), pre, [f"class{i}" for i in range(5)], name="flat", **kw)
    assert s.fixed_input_size  # its probe (a forward at another size) runs now, before any SizeLog
    return s


class SizeLog:
    """Every input size the model is called with (a forward pre-hook, removed on exit)."""

    def __init__(self, model: nn.Module):
        self.model, self.sizes = model, []

    def __enter__(self):
        self.handle = self.model.register_forward_pre_hook(
            lambda m, args: self.sizes.append(tuple(args[0].shape[2:]))
        )
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def check(images: np.ndarray, n: int, size=(SIZE, SIZE)):
    assert images.shape == (n, *size, 3)
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1


def test_fixed_size_is_detected():
    assert fixed_subject().fixed_input_size is True
    assert tiny_subject().fixed_input_size is False


def test_visualize_channels_and_neurons_on_a_fixed_size_model():
    s = fixed_subject()
    with SizeLog(s.model) as log:
        syn = visualize_units(s, "conv2", [0, 1, 2], steps=12, seed=0)
        neu = visualize_units(s, "relu2", [1], neuron=True, steps=4)
    assert set(log.sizes) == {(SIZE, SIZE)} and len(log.sizes) > 12
    check(syn.images, 3)  # the canvas defaults to the input size
    check(neu.images, 1)
    assert np.isfinite(syn.scores).all() and syn.history[-1] > syn.history[0]
    pic = np.asarray(syn.to_image())
    assert pic.shape[0] >= SIZE and pic.std() > 0  # renders, not blank


def test_a_canvas_of_another_size_is_resized_to_the_input_size():
    s = fixed_subject()
    with SizeLog(s.model) as log:
        big = optimize(s, O.channel("conv2", 0), size=48, steps=4)
        small = optimize(s, O.channel("conv2", 0), size=(20, 24), param="pixel", steps=4)
    assert set(log.sizes) == {(SIZE, SIZE)}
    check(big.images, 1, (48, 48))
    check(small.images, 1, (20, 24))
    assert np.isfinite(big.scores).all() and np.isfinite(small.scores).all()


def test_class_model_on_a_fixed_size_model():
    s = fixed_subject()
    syn = class_model(s, [1, 3], steps=10)
    check(syn.images, 2)
    plain = class_model(s, [2], regularized=False, l2=1.0, steps=3, size=40)
    check(plain.images, 1, (40, 40))
    assert syn.to_image().width > 0 and plain.headline()


def test_invert_on_a_fixed_size_model():
    s = fixed_subject()
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    inv = invert(s, s.preprocess.normalize(x), ["conv1", "relu2"], steps=20, restarts=2)
    check(inv.images, 2)
    assert np.isfinite(inv.errors).all() and inv.restart_errors.shape == (2, 2)
    assert np.asarray(inv.to_image()).std() > 0


def test_dream_octaves_run_at_the_model_size():
    s = fixed_subject()
    img = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with SizeLog(s.model) as log:
        d = dream(s, img, "conv2", octaves=3, steps=3, jitter=4)
    assert set(log.sizes) == {(SIZE, SIZE)} and len(log.sizes) >= 9  # 3 octaves x 3 steps
    assert d.image.shape == (SIZE, SIZE, 3) and np.isfinite(d.image).all()
    assert not np.allclose(d.image, img[0].permute(1, 2, 0).numpy())  # it dreamed
    assert d.to_image().size == (SIZE, SIZE)


def test_a_timm_vit_at_its_size():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=SIZE, patch_size=8, depth=1, num_classes=4
    )
    pre = Preprocess(size=(SIZE, SIZE), resize=None, mode="squash")
    s = Subject(vit, pre, [f"c{i}" for i in range(4)], name="vit")
    assert s.fixed_input_size
    syn = visualize_units(s, "blocks.0", [0, 1], steps=3)
    check(syn.images, 2)
    check(class_model(s, [0], steps=3).images, 1)
    d = dream(s, torch.rand(1, 3, SIZE, SIZE), "blocks.0", octaves=2, steps=2)
    assert d.image.shape == (SIZE, SIZE, 3) and np.isfinite(d.image).all()


def test_convnet_augmentations_are_unchanged():
    s = tiny_subject()
    t = T.standard()
    assert model_transform(s, t) is t and model_transform(s, None) is None  # probed here
    with SizeLog(s.model) as log:
        syn = optimize(s, O.channel("conv2", 0), steps=8, seed=0)
    assert syn.images.shape == (1, 128, 128, 3)  # the default canvas, not the input size
    assert len(set(log.sizes[:8])) > 1  # the random scale still changes the size


def test_saying_fixed_size_keeps_a_convnet_at_its_size():
    s = tiny_subject()
    s2 = Subject(s.model, s.preprocess, s.labels, name="tiny", fixed_input_size=True)
    with SizeLog(s2.model) as log:
        syn = optimize(s2, O.channel("conv2", 0), steps=8, seed=0)
    assert set(log.sizes) == {s2.input_size} and syn.images.shape == (1, *s2.input_size, 3)


def test_at_size_keeps_the_random_scale():
    """Crop/pad back, not resize back: a half-size scale shows a grey border; a rolled jitter
    keeps its shift."""
    x = torch.rand(1, 3, SIZE, SIZE)
    gen = torch.Generator().manual_seed(0)
    out = T.at_size((SIZE, SIZE), T.random_scale([0.5]))(x, gen)
    assert out.shape == x.shape
    assert torch.all(out[:, :, :4] == 0.5) and torch.all(out[:, :, :, -4:] == 0.5)
    big = T.at_size((SIZE, SIZE), T.random_scale([2.0]))(x, gen)
    up = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    assert torch.allclose(big, up[:, :, 16:48, 16:48])
    assert T.crop_or_pad((8, 10))(torch.zeros(2, 3, 5, 13), gen).shape == (2, 3, 8, 10)
