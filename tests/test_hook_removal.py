"""Every method that touches a model leaves no hook behind, also when it fails midway
(after Captum's tests/attr/test_hook_removal.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.errors import UserInputError
from convscope.inputs.sources import open_images
from convscope.scan import scan
from convscope.scan.patches import render_topk, unit_maps
from convscope.testing import tiny_subject
from convscope.trace import trace_layers

from .conftest import hook_count


class _Boom(Exception):
    pass


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("few")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(root / f"{i}.png")
    return root


def _scan(subject, images, fail):
    def progress(done, total):
        if fail and done > 0:
            raise _Boom

    scan(
        subject,
        open_images(images),
        ["block", "fc"],
        k=2,
        batch_size=2,
        threshold_sample=2,
        progress=progress,
    )


def _record(subject, images, fail):
    with subject.record(["conv1", "block.relu"], stop=True, edits={"conv2": lambda t: t}):
        subject(torch.randn(2, 3, 32, 32))
        if fail:
            raise _Boom


def _trace(subject, images, fail):
    if fail:
        subject.model.conv2.register_forward_pre_hook(_raise)
        try:
            trace_layers(subject.model, (32, 32))
        finally:
            subject.model.conv2._forward_pre_hooks.clear()
    else:
        trace_layers(subject.model, (32, 32))


def _raise(*args):
    raise _Boom


def _predict(subject, images, fail):
    x = torch.randn(2, 3, 32, 32) if not fail else torch.randn(2, 4, 32, 32)
    subject.predict(x)


def _render(subject, images, fail):
    src = open_images(images, transform=subject.transform)
    res = scan(subject, src, ["block"], k=2, criteria=["max"])
    top = res.topk("block", 0)
    if fail:
        unit_maps(subject, torch.randn(1, 5, 32, 32), "block", 0)
    render_topk(subject, src, top)


def _explain(name):
    def run(subject, images, fail):
        import convscope

        x = torch.randn(1, 3, 32, 32)
        opts = {"samples": 2} if name == "smoothgrad" else {"steps": 3} if name == "ig" else {}
        if fail:  # a forward that breaks halfway through the method
            subject.model.conv2.register_forward_pre_hook(_raise)
        try:
            convscope.explain(subject, x, name, target=3, **opts)
        finally:
            subject.model.conv2._forward_pre_hooks.clear()

    return run


def _zf(subject, images, fail):
    import convscope

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
    s = convscope.Subject.wrap(model, input_size=16)
    try:
        convscope.explain(s, torch.randn(1, 3, 16, 16), "zeiler_fergus", target="2:9" if fail else "2:1")
    finally:
        assert hook_count(model) == 0


METHODS = {"record": _record, "trace": _trace, "predict": _predict, "scan": _scan, "render_topk": _render}
for _name in (
    "saliency",
    "input_x_gradient",
    "smoothgrad",
    "ig",
    "guided",
    "deconvnet",
    "gradcam",
    "gradcam++",
    "scorecam",
    "guided_gradcam",
    "layercam",
    "hirescam",
    "xgradcam",
    "eigencam",
    "eigengradcam",
    "ablationcam",
    "fullgrad",
    "lrp",
    "occlusion",
):
    METHODS[f"explain:{_name}"] = _explain(_name)
METHODS["explain:zeiler_fergus"] = _zf


def _synthesis(name):
    def run(subject, images, fail):
        from convscope.adversarial import fool, pgd
        from convscope.synthesis import invert, visualize_units

        if fail:  # a forward that breaks inside the optimisation
            subject.model.block.conv1.register_forward_pre_hook(_raise)
        try:
            x = torch.rand(1, 3, 32, 32)
            if name == "visualize":
                visualize_units(subject, "block", [0, 1], steps=2, size=32)
            elif name == "invert":
                invert(subject, subject.preprocess.normalize(x), ["block"], steps=2, restarts=1)
            elif name == "pgd":
                pgd(subject, x, steps=2)
            else:
                fool(subject, 3, "cppn", generations=2, population=4, elite=1, size=32)
        finally:
            subject.model.block.conv1._forward_pre_hooks.clear()

    return run


for _name in ("visualize", "invert", "pgd", "fool"):
    METHODS[f"synthesis:{_name}"] = _synthesis(_name)


@pytest.mark.parametrize("fail", [False, True], ids=["ok", "error"])
@pytest.mark.parametrize("method", list(METHODS))
def test_no_hooks_left(method, fail, images):
    subject = tiny_subject()
    assert len(subject.layers)  # the probe pass itself must leave nothing either
    assert hook_count(subject.model) == 0
    if fail:
        with pytest.raises((_Boom, RuntimeError, UserInputError)):
            METHODS[method](subject, images, fail)
    else:
        METHODS[method](subject, images, fail)
    assert hook_count(subject.model) == 0
    assert torch.is_grad_enabled()  # grad mode restored
