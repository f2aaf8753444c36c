from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convscope
from convscope import Recorder, ablate
from convscope.errors import AmbiguousLayerError, LayerNotFoundError, RecordingError

from .conftest import hook_count


def test_hooks_removed_on_exit_and_on_error(tiny):
    x = torch.randn(2, 3, 32, 32)
    with tiny.record(["conv1", "block.relu", "fc"], stop=True, edits={"conv2": ablate([0])}):
        assert hook_count(tiny.model) > 0
        tiny(x)
    assert hook_count(tiny.model) == 0
    with pytest.raises(ZeroDivisionError), tiny.record("conv1"):
        tiny(x)
        raise ZeroDivisionError
    assert hook_count(tiny.model) == 0


def test_hooks_removed_when_forward_fails(tiny):
    with pytest.raises(RuntimeError), tiny.record("conv1"):
        tiny(torch.randn(1, 5, 32, 32))  # wrong channel count
    assert hook_count(tiny.model) == 0


def test_in_place_relu_does_not_corrupt(alexnet):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    with alexnet.record(["features.0", "features.1"]) as rec:
        alexnet(x)
    expected = alexnet.model.features[0](x)
    assert torch.allclose(rec["features.0"], expected, atol=1e-5)
    assert (rec["features.0"] < 0).any()  # pre-ReLU values survived ReLU(inplace=True)
    assert torch.allclose(rec["features.1"], expected.clamp_min(0), atol=1e-5)


def test_residual_add_in_place_does_not_corrupt(resnet18):
    x = torch.randn(1, 3, 224, 224)
    m = resnet18.model
    with resnet18.record(["layer1.0.bn2", "maxpool"]) as rec:
        resnet18(x)
    expected = m.layer1[0].bn2(
        m.layer1[0].conv2(m.layer1[0].relu(m.layer1[0].bn1(m.layer1[0].conv1(rec["maxpool"]))))
    )
    assert torch.allclose(rec["layer1.0.bn2"], expected, atol=1e-4)


def test_reused_module_recorded_per_call(resnet18):
    x = torch.randn(1, 3, 224, 224)
    with resnet18.record(["layer1.0.relu", "layer1.0.bn1", "layer1.0"]) as rec:
        resnet18(x)
    with pytest.raises(AmbiguousLayerError, match="layer1.0.relu#0"):
        rec["layer1.0.relu"]
    first, second = rec.calls("layer1.0.relu")
    assert torch.equal(rec["layer1.0.relu#0"], first)
    assert torch.allclose(first, rec["layer1.0.bn1"].clamp_min(0))
    assert torch.allclose(second, rec["layer1.0"])
    with resnet18.record("layer1.0.relu#1") as rec:
        resnet18(x)
    assert torch.allclose(rec["layer1.0.relu#1"], second)
    assert rec.keys() == ["layer1.0.relu#1"]


def test_stop_skips_the_rest_of_the_forward(tiny):
    calls = []
    assert len(tiny.layers)  # the probe pass that builds the table runs the whole model
    tiny.model.fc.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        with tiny.record(["conv1", "block.conv1"], stop=True) as rec:
            out = tiny(torch.randn(1, 3, 32, 32))
        assert out is None and not calls
        assert rec["block.conv1"].shape == (1, 8, 8, 8)
        with tiny.record(["conv1"]) as rec:
            out = tiny(torch.randn(1, 3, 32, 32))
        assert out.shape == (1, 10) and calls
    finally:
        tiny.model.fc._forward_pre_hooks.clear()


def test_stop_waits_for_every_call_of_a_reused_module(resnet18):
    with resnet18.record(["layer1.0.relu"], stop=True) as rec:
        assert resnet18(torch.randn(1, 3, 224, 224)) is None
    assert len(rec.calls("layer1.0.relu")) == 2


def test_stop_on_a_bare_module_is_swallowed_by_the_with_block(tiny):
    with Recorder(tiny.model, ["conv1"], stop=True) as rec:
        tiny.model(torch.randn(1, 3, 32, 32))
        pytest.fail("forward should have stopped")  # pragma: no cover
    assert rec["conv1"].shape == (1, 8, 16, 16)


def test_ablation_changes_downstream(tiny):
    x = torch.randn(2, 3, 32, 32)
    clean = tiny(x)
    with tiny.record(["conv2"], edits={"conv2": ablate([0, 3])}) as rec:
        edited = tiny(x)
    assert torch.all(rec["conv2"][:, [0, 3]] == 0)
    assert not torch.allclose(clean, edited)
    with tiny.record(["conv2"], edits={"conv2": ablate()}):
        all_off = tiny(x)
    assert torch.allclose(all_off, tiny.model.fc.bias.expand(2, -1))


def test_edit_replaces_output(tiny):
    x = torch.randn(1, 3, 32, 32)
    with tiny.record(["conv2"], edits={"conv2": lambda t: t * 0 - 1.0}) as rec:
        out = tiny(x)
    assert torch.all(rec["conv2"] == -1)
    # relu(-1) = 0 everywhere, so the logits are the bias alone
    assert torch.allclose(out, tiny.model.fc.bias[None])


class _TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = _Pair()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        a, b = self.inner(x)
        return self.head(a + b)


class _Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.c1(x), self.c2(x)


def test_tuple_outputs_need_a_selector():
    model = _TupleNet().eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(RecordingError, match="select="), Recorder(model, ["inner"]):
        model(x)
    with Recorder(model, ["inner"], select={"inner": 1}) as rec:
        model(x)
    assert torch.allclose(rec["inner"], model.inner.c2(x))
    with Recorder(model, ["inner"], select={"inner": lambda o: o[0] + o[1]}) as rec:
        model(x)
    assert torch.allclose(rec["inner"], model.inner.c1(x) + model.inner.c2(x))


def test_dict_output_with_one_tensor_is_picked():
    class D(nn.Module):
        def forward(self, x):
            return {"feat": x * 2, "note": "not a tensor"}

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.d = D()

        def forward(self, x):
            return self.d(x)["feat"]

    x = torch.randn(1, 3, 4, 4)
    model = M()
    with Recorder(model, ["d"]) as rec:
        model(x)
    assert torch.equal(rec["d"], 2 * x)


def test_vit_tokens_become_maps():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    subject = convscope.Subject.wrap(model)
    assert subject.token_layout.prefix == 1
    assert (subject.token_layout.height, subject.token_layout.width) == (14, 14)
    assert subject.layer("blocks.3").shape == (192, 14, 14)
    x = torch.randn(1, 3, 224, 224)
    with subject.record(["blocks.3", "patch_embed"]) as rec, Recorder(model, ["blocks.3"]) as raw:
        subject(x)
    tokens = raw["blocks.3"]
    assert tokens.shape == (1, 197, 192)
    assert rec["blocks.3"].shape == (1, 192, 14, 14)
    # Token 1 + (row * 14 + col) is the patch at (row, col); token 0 (class) is dropped.
    assert torch.equal(rec["blocks.3"][0, :, 2, 5], tokens[0, 1 + 2 * 14 + 5])
    assert rec["patch_embed"].shape == (1, 192, 14, 14)


def test_unknown_layers_fail_before_running(tiny):
    with pytest.raises(LayerNotFoundError, match="conv1"):
        tiny.record(["conv11"])
    with pytest.raises(LayerNotFoundError):
        Recorder(tiny.model, ["nope"])


def test_gradients_flow_with_detach_false(tiny):
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    with tiny.record(["conv2"], detach=False) as rec:
        tiny(x)
    rec["conv2"][0, 1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_nested_recorders_and_functional_activations(tiny):
    x = torch.randn(1, 3, 32, 32)
    with tiny.record(["conv2"]) as outer:
        with tiny.record(["conv1"]) as inner:
            tiny(x)
        assert hook_count(tiny.model) > 0
    assert hook_count(tiny.model) == 0
    # conv2 is followed by a functional torch.relu (not in place): the pre-activation is kept.
    assert torch.allclose(
        outer["conv2"], tiny.model.conv2(tiny.model.block(tiny.model.pool(F.relu(inner["conv1"])))), atol=1e-5
    )


def test_repr_and_aliases(alexnet):
    with alexnet.record(["conv1", "pool5"], stop=True) as rec:
        alexnet(torch.randn(1, 3, 224, 224))
    assert rec["conv1"].shape == (1, 64, 55, 55)
    assert "features.12" in repr(rec)
