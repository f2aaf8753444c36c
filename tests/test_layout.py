"""Layouts detected from the probe pass: channels-last blocks, tokens, attention, windows."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convscope
from convscope.errors import RecordingError, UserInputError
from convscope.layers import layer_row
from convscope.layout import Layout, parse_layout
from convscope.receptive import ATTENTION, WINDOWED
from convscope.recorder import ablate
from convscope.trace import trace_layers


class ChannelsLast(nn.Module):
    """A ConvNeXt-like block: conv, then LayerNorm, Linear, GELU in (B, H, W, C), then back."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)

    def forward(self, x):
        x = self.conv(x).permute(0, 2, 3, 1)
        x = F.gelu(self.fc(self.norm(x)))
        return self.dw(x.permute(0, 3, 1, 2))


class Windows(nn.Module):
    """Swin-like: (B, H, W, C) split into 4x4 windows folded into the batch, attention in each."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Identity()

    def forward(self, x):
        x = self.embed(x).permute(0, 2, 3, 1)  # B, 8, 8, C
        b, h, w, c = x.shape
        win = x.view(b, h // 4, 4, w // 4, 4, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, 16, c)
        y, _ = self.attn(win, win, win, need_weights=False)
        y = y.view(b, h // 4, w // 4, 4, 4, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        return self.out(x + y)


def _support(model, layer, size, y, x):
    """Bounding box of the input pixels the unit (y, x) of ``layer`` depends on."""
    model = model.double()
    inp = torch.randn(1, 3, size, size, dtype=torch.double, requires_grad=True)
    subject = convscope.Subject.wrap(model, input_size=size)
    with subject.record([layer], detach=False) as rec:
        model(inp)
    (g,) = torch.autograd.grad(rec[layer][0, :, y, x].sum(), inp)
    ys, xs = torch.nonzero(g.abs().sum(dim=(0, 1)) > 0, as_tuple=True)
    return ys.min().item(), xs.min().item(), ys.max().item(), xs.max().item()


def test_layout_round_trips():
    t = torch.randn(2, 5, 6, 7)
    nhwc = Layout("channels_last", (5, 6))
    assert nhwc.fits(t) and torch.equal(nhwc.to_map(t), t.permute(0, 3, 1, 2))
    assert torch.equal(nhwc.from_map(nhwc.to_map(t), t), t)
    tokens = torch.randn(2, 3 + 12, 4)
    lay = Layout("tokens", (3, 4), prefix=3)
    m = lay.to_map(tokens)
    assert m.shape == (2, 4, 3, 4) and torch.equal(m[0, :, 0, 1], tokens[0, 4])
    assert torch.equal(lay.from_map(m, tokens), tokens)
    assert str(lay) == "tokens 3x4 +3" and str(nhwc) == "NHWC"


def test_parse_layout():
    assert parse_layout("NHWC", (4, 4)) == Layout("channels_last", (4, 4))
    assert parse_layout("tokens+2", (4, 4)) == Layout("tokens", (4, 4), 2)
    assert parse_layout("none") is None
    with pytest.raises(UserInputError, match="unknown layout"):
        parse_layout("HWCN", (4, 4))


def test_channels_last_block_is_a_map_with_its_field():
    torch.manual_seed(0)
    model = ChannelsLast().eval()
    table = trace_layers(model, (16, 16))
    for name in ("norm", "fc"):
        info = table[name]
        assert str(info.layout) == "NHWC" and info.shape[1:] == (8, 8)
        assert str(info.rf) == "3 px / stride 2"
    assert table["dw"].rf.size == (7, 7) and not table["dw"].rf.is_global
    box = table["fc"].rf.box(4, 4).clip(16, 16)
    assert _support(ChannelsLast().eval(), "fc", 16, 4, 4) == (box.y0, box.x0, box.y1, box.x1)


def test_channels_last_recorded_and_edited_as_maps():
    torch.manual_seed(0)
    model = ChannelsLast().eval()
    subject = convscope.Subject.wrap(model, input_size=16)
    x = torch.randn(2, 3, 16, 16)
    raw = {}
    handle = model.fc.register_forward_hook(lambda m, i, o: raw.setdefault("fc", o))
    with subject.record(["fc"]) as rec:
        model(x)
    handle.remove()
    assert rec["fc"].shape == (2, 16, 8, 8)
    assert torch.equal(rec["fc"], raw["fc"].permute(0, 3, 1, 2))
    # ablate() zeroes channel 3 on dim 1 of the map: the last axis of the (B, H, W, C) output
    onward = {}
    handle = model.dw.register_forward_pre_hook(lambda m, args: onward.setdefault("x", args[0]))
    with subject.record(["fc"], edits={"fc": ablate(3)}) as rec:
        model(x)
    handle.remove()
    assert rec["fc"][:, 3].abs().sum() == 0 and rec["fc"][:, 2].abs().sum() > 0
    assert onward["x"][:, 3].abs().sum() == 0 and onward["x"][:, 2].abs().sum() > 0


def test_user_layout_overrides_and_is_checked():
    model = ChannelsLast().eval()
    raw = convscope.Subject(
        model, convscope.Subject.wrap(model, input_size=16).preprocess, layouts={"fc": None}
    )
    assert raw.layer("fc").layout is None and raw.layer("fc").shape == (8, 8, 16)
    with raw.record(["fc"]) as rec:
        raw(torch.randn(1, 3, 16, 16))
    assert rec["fc"].shape == (1, 8, 8, 16)
    bad = convscope.Subject(model, raw.preprocess, layouts={"fc": Layout("tokens", (8, 8), 1)})
    with pytest.raises(RecordingError, match="does not fit"):
        bad.layers  # noqa: B018


def test_vit_tokens_prefix_attention_and_stages():
    timm = pytest.importorskip("timm")
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=2,
        reg_tokens=4,
        num_classes=10,
    )
    subject = convscope.Subject.wrap(vit.eval(), input_size=32)
    table = subject.layers
    assert str(table["patch_embed"].layout) == "tokens 4x4"
    assert str(table["blocks.0.norm1"].layout) == "tokens 4x4 +5"  # class + 4 registers
    assert str(table["patch_embed"].rf) == "8 px / stride 8"
    assert not table["blocks.0.norm1"].rf.is_global  # before the first attention
    block = table["blocks.0"].rf
    assert block.is_global and block.reason == ATTENTION and block.jump == (8, 8)
    assert layer_row(table["blocks.0"])[4:6] == ("global", "8")
    assert table.select("stages") == ["norm"]
    with subject.record(["blocks.1"]) as rec:
        subject(torch.randn(2, 3, 32, 32))
    assert rec["blocks.1"].shape == (2, 192, 4, 4)


def test_windows_folded_into_the_batch():
    table = trace_layers(Windows().eval(), (32, 32))
    assert not table["attn"].per_image and table["attn"].layout is None
    out = table["out"]
    assert out.per_image and str(out.layout) == "NHWC"
    assert out.rf.is_global and out.rf.reason == WINDOWED and out.rf.jump == (4, 4)
    assert not table["embed"].rf.is_global
    subject = convscope.Subject.wrap(Windows().eval(), input_size=32)
    with pytest.raises(UserInputError, match="attention windows folded into the batch"):
        convscope.scan(subject, [], "attn")


def test_roll_and_mixing_over_positions_are_global():
    class Mix(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.rolled = nn.Identity()
            self.mixed = nn.Identity()

        def forward(self, x):
            x = self.conv(x)
            r = self.rolled(torch.roll(x, (2, 2), dims=(2, 3)))
            return self.mixed(x.flatten(2).softmax(-1).view_as(x)), r

    table = trace_layers(Mix().eval(), (8, 8))
    assert "roll" in table["rolled"].rf.reason
    assert table["mixed"].rf.is_global and "softmax" in table["mixed"].rf.reason


def test_adaptive_pool_that_enlarges_contains_its_support():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.AdaptiveAvgPool2d(5)).eval()
    table = trace_layers(model, (16, 16))  # a 4x4 map pooled up to 5x5
    rf = table["1"].rf
    for y, x in [(0, 0), (2, 3), (4, 4)]:
        box = rf.box(y, x).clip(16, 16)
        y0, x0, y1, x1 = _support(nn.Sequential(*model).eval(), "1", 16, y, x)
        assert box.y0 <= y0 and box.x0 <= x0 and y1 <= box.y1 and x1 <= box.x1, (y, x)


def test_channels_last_memory_format_is_still_nchw():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval().to(memory_format=torch.channels_last)
    table = trace_layers(model, (8, 8))
    assert str(table["1"].layout) == "NCHW" and table["1"].shape == (4, 6, 6)


def test_depth_to_space_by_views_keeps_a_sound_field():
    class Shuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, stride=2, padding=1)
            self.up = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            x = self.conv(x)
            b, c, h, w = x.shape
            x = x.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)
            return self.up(x)

    torch.manual_seed(0)
    table = trace_layers(Shuffle().eval(), (16, 16))
    rf = table["up"].rf
    assert not rf.is_global and rf.jump == (1, 1) and str(table["up"].layout) == "NCHW"
    for y, x in [(0, 0), (5, 6), (15, 15)]:
        box = rf.box(y, x).clip(16, 16)
        y0, x0, y1, x1 = _support(Shuffle().eval(), "up", 16, y, x)
        assert box.y0 <= y0 and box.x0 <= x0 and y1 <= box.y1 and x1 <= box.x1, (y, x)


def _inside(model, layer, size, points):
    table = trace_layers(model, (size, size))
    rf = table[layer].rf
    assert not rf.is_global, rf
    for y, x in points:
        box = rf.box(y, x).clip(size, size)
        y0, x0, y1, x1 = _support(model, layer, size, y, x)
        assert box.y0 <= y0 and box.x0 <= x0 and y1 <= box.y1 and x1 <= box.x1, (layer, y, x)


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic", "nearest-exact"])
def test_upsampling_boxes_hold_their_support(mode):
    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 4, stride=4)
            self.up = nn.Identity()

        def forward(self, x):
            return self.up(F.interpolate(self.conv(x), scale_factor=2, mode=mode))

    torch.manual_seed(0)
    _inside(Up().eval(), "up", 32, [(0, 0), (3, 5), (8, 8), (15, 15)])


def test_ops_not_known_to_be_pointwise_are_global():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 4, stride=4)
            self.mix = nn.Conv1d(8, 8, 5, padding=2)
            self.out = nn.Identity()
            self.small, self.big, self.most = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 9, padding=4), nn.Identity()
            self.wrap = nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")

        def forward(self, x):
            t = self.embed(x).flatten(2)  # (B, C, N): a conv1d over the tokens mixes positions
            y = self.out(self.mix(t).transpose(1, 2))
            m = self.most(torch.max(self.small(x), other=self.big(x)))
            return y.sum() + m.sum() + self.wrap(x).sum()

    table = trace_layers(Odd().eval(), (16, 16))
    assert table["out"].rf.is_global and "conv1d" in table["out"].rf.reason
    assert table["most"].rf.size == (9, 9)  # max(a, other=b) is elementwise: b's 9 px count
    assert table["wrap"].rf.is_global and "circular" in table["wrap"].rf.reason


def test_recorded_maps_at_another_input_size():
    torch.manual_seed(0)
    model = ChannelsLast().eval()
    subject = convscope.Subject.wrap(model, input_size=16)
    with subject.record(["fc"]) as rec:
        model(torch.randn(1, 3, 24, 24))
    assert rec["fc"].shape == (1, 16, 12, 12)  # channels first although the probe saw 8 x 8
    timm = pytest.importorskip("timm")
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1, dynamic_img_size=True
    )
    subject = convscope.Subject.wrap(vit.eval(), input_size=32)
    with subject.record(["blocks.0"]) as rec:
        vit(torch.randn(1, 3, 48, 32))
    assert rec["blocks.0"].shape == (1, 192, 6, 4)


def test_string_override_where_nothing_was_detected():
    class Opaque(nn.Module):
        def forward(self, x):
            return self.out(
                x.reshape(x.shape[0], 3, -1)[:, :, torch.arange(64)].view(-1, 3, 8, 8).permute(0, 2, 3, 1)
            )

    model = Opaque()
    model.out = nn.Identity()
    assert trace_layers(model.eval(), (8, 8))["out"].layout is None
    subject = convscope.Subject.wrap(model.eval(), input_size=8, layouts={"out": "NHWC"})
    assert str(subject.layer("out").layout) == "NHWC" and subject.layer("out").shape == (3, 8, 8)


def test_fixed_input_size_probe_under_a_recording():
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, padding=1)
            self.fc = nn.Linear(2 * 8 * 8, 3)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    subject = convscope.Subject.wrap(Flat().eval(), input_size=8)
    x = torch.randn(1, 3, 8, 8)
    with subject.record(["conv"], stop=True) as rec:
        subject(x)
        kept = rec["conv"].clone()
        assert subject.fixed_input_size  # the probe ran without the recording's hooks
        assert torch.equal(rec["conv"], kept)


def test_load_keeps_overrides_in_its_spec():
    from convscope.zoo import load_spec

    subject = convscope.load(
        "torchvision:resnet18", weights=None, layouts={"fc": None}, fixed_input_size=False
    )
    assert subject.spec["layouts"] == {"fc": None} and subject.spec["fixed_input_size"] is False
    again = load_spec(subject.spec)
    assert again.layouts == {"fc": None} and again.fixed_input_size is False


def test_a_conv_head_gives_the_class_scores():
    class ConvHead(nn.Module):  # SqueezeNet-style: no Linear, the classes are a 1x1 conv's channels
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
            self.classifier = nn.Sequential(nn.Conv2d(8, 5, 1), nn.AdaptiveAvgPool2d(1))

        def forward(self, x):
            return torch.flatten(self.classifier(self.features(x)), 1)

    subject = convscope.Subject.wrap(ConvHead().eval(), labels=list("abcde"), input_size=16)
    assert subject.num_outputs == 5
    assert subject.unit_name("classifier", 2) == "c"  # (5, 1, 1) scores, nothing else after
    assert subject.unit_name("features", 2) is None
    assert subject.predict(torch.randn(1, 3, 16, 16), k=2).indices.shape == (1, 2)


def test_a_module_with_no_child_modules_gives_its_output_count():
    class Bare(nn.Module):  # one parameter, no child modules: the layer table has no layers
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 5))

        def forward(self, x):
            return x.mean((2, 3)) @ self.w

    subject = convscope.Subject.wrap(Bare().eval(), input_size=16)
    assert subject.num_outputs == 5  # one forward pass, as for TorchScript
    assert subject.class_index(4) == 4
