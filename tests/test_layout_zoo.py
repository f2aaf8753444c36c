"""Layouts and receptive fields on models the tracer was not written against (issue 19).

Hand-made hostile modules (channels-last blocks, crops, rolls, pixel shuffle, unfold, einsum and
nn.MultiheadAttention attention, channels-last memory format, dict/tuple outputs, in-place ops,
batch-folding views) and a few small random-weight timm/torchvision models. Fields claimed local
are checked against gradient support; laid-out recordings against the raw output permuted by
hand. Strict xfails are known misreadings: flip them when the tracer learns the case.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convscope
from convscope.empirical import gradient_support, gradient_supports
from convscope.recorder import Recorder, ablate


def _subject(model: nn.Module, size: int = 32) -> convscope.Subject:
    torch.manual_seed(0)
    return convscope.Subject.wrap(model.eval(), input_size=size)


def _by_hand(raw: torch.Tensor, layout) -> torch.Tensor:
    """A raw output laid out as (B, C, H, W) without the library's helpers."""
    if layout.kind == "channels_first":
        return raw
    if layout.kind == "channels_last":
        return raw.permute(0, 3, 1, 2)
    h, w = layout.grid
    return raw[:, layout.prefix :].transpose(1, 2).reshape(raw.shape[0], -1, h, w)


def _check_recordings(subject, names, size=32):
    """Recorded maps equal the raw outputs permuted by hand and have ``LayerInfo.shape``."""
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with subject.record(names) as rec:
            subject(x)
        with Recorder(subject.model, names, tokens=False) as raw:
            subject.model(x)
    for n in names:
        info = subject.layer(n)
        assert tuple(rec[n].shape[1:]) == info.shape, n
        assert torch.equal(rec[n], _by_hand(raw[n], info.layout)), n


def _assert_local_exact(subject, names):
    """Every local field contains its gradient support and the support fills the (clipped) box."""
    for c in gradient_supports(subject, names, samples=2):
        assert c.claim == "local", c.headline()
        assert c.inside, c.headline()
        assert c.coverage == 1.0, c.headline()


class _Patches(nn.Module):
    def __init__(self, c=16, p=4):
        super().__init__()
        self.embed = nn.Conv2d(3, c, p, p)

    def forward(self, x):
        return self.embed(x).flatten(2).transpose(1, 2)


# -- channels-last blocks ------------------------------------------------------------------------
class NHWCBlock(nn.Module):
    """ConvNeXt-like: depthwise conv, permute to NHWC, F.layer_norm, Linear, F.gelu, layer scale,
    drop path (identity in eval), permute back, residual."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 4, 4)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.fc1, self.fc2 = nn.Linear(c, 2 * c), nn.Linear(2 * c, c)
        self.norm, self.act, self.drop, self.out = nn.Identity(), nn.Identity(), nn.Identity(), nn.Identity()
        self.gamma = nn.Parameter(torch.ones(c))

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.norm(F.layer_norm(y, (y.shape[-1],)))
        y = self.act(F.gelu(self.fc1(y)))
        y = self.drop(self.fc2(y) * self.gamma)
        return self.out(x + y.permute(0, 3, 1, 2))


def test_nhwc_block_layouts_records_and_fields():
    s = _subject(NHWCBlock())
    for n in ("fc1", "fc2", "norm", "act", "drop"):
        assert str(s.layer(n).layout) == "NHWC", n
    assert str(s.layer("out").layout) == "NCHW"
    assert s.layer("fc2").rf.size == (28.0, 28.0) and s.layer("fc2").rf.jump == (4.0, 4.0)
    assert not s.layer("norm").rf.global_context  # a LayerNorm over channels only
    _check_recordings(s, ["dw", "fc1", "norm", "drop", "out"])
    _assert_local_exact(s, ["fc1", "drop", "out"])


def test_nhwc_edits_see_the_map_and_reach_downstream():
    s = _subject(NHWCBlock())
    seen = {}

    def edit(t):
        seen["shape"] = tuple(t.shape)
        return ablate([0])(t)

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), s.record(["fc2", "drop"], edits={"fc2": edit}) as rec:
        s(x)
    assert seen["shape"] == (2, 8, 8, 8)  # (B, C, H, W), not the raw (B, H, W, C)
    assert (rec["drop"][:, 0] == 0).all() and (rec["drop"][:, 1] != 0).any()


class InplaceNHWC(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.stem, self.fc = nn.Conv2d(3, c, 4, 4), nn.Linear(c, c)
        self.a, self.b = nn.Identity(), nn.Identity()
        self.dw = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        y = self.a(self.stem(x).permute(0, 2, 3, 1))
        z = self.fc(y)
        z.mul_(2.0)
        z.add_(y)
        F.relu_(z)
        return self.dw(self.b(z).permute(0, 3, 1, 2))


def test_inplace_ops_on_nhwc():
    s = _subject(InplaceNHWC())
    assert s.layer("fc").mutated
    assert [str(s.layer(n).layout) for n in ("a", "fc", "b", "dw")] == ["NHWC", "NHWC", "NHWC", "NCHW"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), s.record(["fc"]) as rec:
        s(x)
    m = s.model
    with torch.no_grad():
        want = m.fc(m.stem(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert torch.allclose(rec["fc"], want)  # the value before the in-place ops
    _assert_local_exact(s, ["b", "dw"])


def test_channels_last_memory_format_is_still_nchw():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, stride=2, padding=1)

        def forward(self, x):
            return self.c2(F.relu(self.c1(x.contiguous(memory_format=torch.channels_last))))

    s = _subject(Net().to(memory_format=torch.channels_last))
    assert [str(s.layer(n).layout) for n in ("c1", "c2")] == ["NCHW", "NCHW"]
    _check_recordings(s, ["c1", "c2"])
    _assert_local_exact(s, ["c1", "c2"])


# -- crops, strides, regroupings ----------------------------------------------------------------
class Crops(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.crop, self.strided = nn.Identity(), nn.Identity()
        self.head = nn.Conv2d(4, 5, 3, padding=1)  # a conv head, no Linear

    def forward(self, x):
        x = self.crop(self.c1(x)[:, :, 2:-2, 2:-2])
        return self.head(self.strided(x[..., 1::2, ::2]))


def test_crops_and_strided_slices():
    s = _subject(Crops())
    assert s.layer("crop").shape == (4, 28, 28)
    assert s.layer("strided").rf.jump == (2.0, 2.0)
    assert s.layer("head").shape == (5, 14, 14)
    _check_recordings(s, ["crop", "strided", "head"])
    _assert_local_exact(s, ["crop", "strided", "head"])


class SpaceToDepth(nn.Module):
    def __init__(self, c=4):
        super().__init__()
        self.stem, self.s2d, self.c2 = nn.Conv2d(3, c, 3, padding=1), nn.Identity(), nn.Conv2d(4 * c, c, 1)

    def forward(self, x):
        y = self.stem(x)
        b, c, h, w = y.shape
        y = y.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)
        return self.c2(self.s2d(y))


def test_space_to_depth_is_a_window():
    s = _subject(SpaceToDepth())
    rf = s.layer("s2d").rf
    assert (rf.size, rf.jump) == ((4.0, 4.0), (2.0, 2.0))
    _assert_local_exact(s, ["s2d", "c2"])


class Unfollowable(nn.Module):
    """Roll, unfold, a flatten-and-back view, windows folded into the batch: each must end up
    global (a sound upper bound), never a wrong local box; pixel shuffle (module and function)
    is followed (depth-to-space) with a box that holds its support."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.roll, self.ps, self.psf, self.unf, self.flat = (nn.Identity() for _ in range(5))
        self.shuffle = nn.PixelShuffle(2)
        self.win, self.back = nn.Identity(), nn.Identity()

    def forward(self, x):
        y = self.c1(x)
        b, c, h, w = y.shape
        r = self.roll(torch.roll(y, shifts=(2, 2), dims=(2, 3)))
        p = self.ps(self.shuffle(y)) + self.psf(F.pixel_shuffle(y, 2))
        u = self.unf(F.unfold(y, 3, padding=1).view(b, c * 9, h, w))
        f = self.flat(y.reshape(-1, c * h * w).view(-1, c, h, w))
        k = 4
        wins = self.win(y.view(b, c, h // k, k, w // k, k).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, k, k))
        back = self.back(wins.view(b, h // k, w // k, c, k, k).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w))
        return r.sum() + p.sum() + u.sum() + f.sum() + back.sum()


def test_unfollowable_ops_are_global_with_a_reason():
    s = _subject(Unfollowable())
    assert "roll" in s.layer("roll").rf.reason
    assert str(s.layer("roll").layout) == "NCHW"  # a roll keeps the grid
    for n in ("roll", "unf", "flat", "win", "back"):
        rf = s.layer(n).rf
        assert rf is not None and rf.is_global and rf.reason, n
    assert not s.layer("win").per_image  # windows folded into the batch
    for n in ("ps", "psf"):
        assert not s.layer(n).rf.is_global and s.layer(n).rf.jump == (0.5, 0.5), n
    for c in gradient_supports(s, ["unf", "back"], samples=1):
        assert c.claim == "global"
    for c in gradient_supports(s, ["ps", "psf"], samples=1):
        assert c.inside, c.headline()


class TransposeHW(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.t = nn.Conv2d(3, 4, (1, 5), padding=(0, 2)), nn.Identity()

    def forward(self, x):
        return self.t(self.c1(x).transpose(2, 3))


def test_transposed_grid_is_not_called_nchw():
    s = _subject(TransposeHW())
    assert s.layer("t").layout is None
    assert s.layer("t").rf.size == (1.0, 5.0)


def test_layout_less_output_is_not_read_as_a_map():
    s = _subject(TransposeHW())
    info = s.layer("t")
    assert not info.is_map or gradient_support(s, "t", (16, 10)).inside


# -- tokens ----------------------------------------------------------------------------------------
class EinsumAttn(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.p, self.qkv, self.mlp = _Patches(c), nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.attn_out, self.blk = nn.Identity(), nn.Identity()

    def forward(self, x):
        t = self.p(x)
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        a = torch.einsum("bnc,bmc->bnm", q, k).softmax(-1)
        o = self.attn_out(torch.einsum("bnm,bmc->bnc", a, v))
        return self.blk(t + self.mlp(o))


def test_einsum_attention():
    s = _subject(EinsumAttn())
    assert str(s.layer("qkv").layout) == "tokens 8x8" and not s.layer("qkv").rf.is_global
    for n in ("attn_out", "blk"):
        assert s.layer(n).rf.is_global and "attention" in s.layer(n).rf.reason
        assert s.layer(n).rf.jump == (4.0, 4.0)  # the tokens keep their grid
    assert s.layers.select("stages") == ["blk"]
    _check_recordings(s, ["p", "qkv", "blk"])
    _assert_local_exact(s, ["p", "qkv"])
    assert gradient_support(s, "blk", samples=1).backed


class MHA(nn.Module):
    def __init__(self, batch_first, c=16):
        super().__init__()
        self.bf, self.p, self.blk = batch_first, _Patches(c), nn.Identity()
        self.mha = nn.MultiheadAttention(c, 2, batch_first=batch_first)

    def forward(self, x):
        t = self.p(x)
        t = t if self.bf else t.transpose(0, 1)
        o = self.blk(t + self.mha(t, t, t)[0])
        return o if self.bf else o.transpose(0, 1)


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_is_global(batch_first):
    s = _subject(MHA(batch_first))
    rf = s.layer("blk").rf
    assert rf.is_global and "attention" in rf.reason
    if batch_first:
        assert str(s.layer("blk").layout) == "tokens 8x8"
        _check_recordings(s, ["blk"])


class TokensBack(nn.Module):
    """A class token prepended and stripped, tokens laid back into a map for a conv (PVT/Twins PEG)."""

    def __init__(self, c=16):
        super().__init__()
        self.p, self.cls = _Patches(c), nn.Parameter(torch.zeros(1, 1, c))
        self.withcls, self.strip, self.out = nn.Identity(), nn.Identity(), nn.Identity()
        self.peg = nn.Conv2d(c, c, 3, padding=1, groups=c)

    def forward(self, x):
        t = self.p(x)
        b, n, c = t.shape
        h = w = math.isqrt(n)
        t = self.withcls(torch.cat([self.cls.expand(b, -1, -1), t], 1))
        m = self.strip(t[:, 1:]).transpose(1, 2).reshape(b, c, h, w)
        return self.out(self.peg(m).flatten(2).transpose(1, 2))


def test_class_token_in_and_out_and_back_to_a_map():
    s = _subject(TokensBack())
    assert [str(s.layer(n).layout) for n in ("withcls", "strip", "peg", "out")] == [
        "tokens 8x8 +1",
        "tokens 8x8",
        "NCHW",
        "tokens 8x8",
    ]
    assert s.layer("out").rf.size == (12.0, 12.0)
    _check_recordings(s, ["withcls", "strip", "peg", "out"])
    _assert_local_exact(s, ["withcls", "strip", "out"])


class ComputedPrefix(nn.Module):
    """A prefix token computed from the image (CaiT's class token after class attention; eva02
    splits the class token off q/k for RoPE and concatenates it back)."""

    def __init__(self, c=16):
        super().__init__()
        self.p, self.cat = _Patches(c), nn.Identity()

    def forward(self, x):
        t = self.p(x)
        return self.cat(torch.cat([t.mean(1, keepdim=True), t], 1))


def test_computed_prefix_token_keeps_the_token_layout():
    s = _subject(ComputedPrefix())
    assert str(s.layer("cat").layout) == "tokens 8x8 +1"
    assert s.layer("cat").rf.has_grid


def test_squeeze_excitation_is_global_context():
    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.o = nn.Conv2d(3, 4, 3, padding=1), nn.Identity()

        def forward(self, x):
            y = self.c1(x)
            return self.o(y * torch.sigmoid(y.mean((2, 3), keepdim=True)))

    s = _subject(SE())
    rf = s.layer("o").rf
    assert rf.global_context and not rf.is_global and rf.size == (3.0, 3.0)
    assert gradient_support(s, "o", samples=1).backed


def test_dict_and_tuple_outputs():
    class Net(nn.Module):
        def __init__(self, as_dict):
            super().__init__()
            self.as_dict = as_dict
            self.c1, self.pool, self.fc = nn.Conv2d(3, 4, 3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Linear(4, 3)

        def forward(self, x):
            f = self.c1(x)
            logits = self.fc(self.pool(f).flatten(1))
            return {"feat": f, "logits": logits} if self.as_dict else (f, logits)

    for as_dict in (True, False):
        s = _subject(Net(as_dict))
        assert str(s.layer("c1").layout) == "NCHW" and s.layer("c1").rf.jump == (2.0, 2.0)
        assert s.layer("fc").rf.is_global and s.layer("fc").layout is None
        _assert_local_exact(s, ["c1"])


class NamedStages(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.stages = nn.Sequential(nn.Conv2d(4, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 2, 1))
        self.head = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


def test_module_named_stages_can_be_checked():
    s = _subject(NamedStages())
    assert gradient_support(s, "stages", samples=1).inside


# -- small random-weight zoo models ----------------------------------------------------------------
timm = pytest.importorskip("timm")


def test_deit_distilled_has_two_prefix_tokens():
    s = _subject(timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, depth=1), 224)
    assert str(s.layer("norm").layout) == "tokens 14x14 +2"
    assert s.layers.select("stages") == ["norm"]
    _check_recordings(s, ["patch_embed", "blocks.0", "norm"], 224)
    _assert_local_exact(s, ["patch_embed", "blocks.0.norm1"])


def test_mlp_mixer_token_mixing_is_global_linear():
    from timm.models.mlp_mixer import MlpMixer

    s = _subject(MlpMixer(img_size=64, patch_size=16, num_blocks=1, embed_dim=32), 64)
    rf = s.layer("blocks.0").rf
    assert rf.is_global and "linear" in rf.reason and rf.jump == (16.0, 16.0)
    assert str(s.layer("norm").layout) == "tokens 4x4"
    assert not s.layer("blocks.0.norm1").rf.is_global  # before the token mixing
    _check_recordings(s, ["stem", "blocks.0", "norm"], 64)


def test_vit_dynamic_img_size_nhwc_patch_embed():
    s = _subject(
        timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, dynamic_img_size=True), 96
    )
    assert str(s.layer("patch_embed").layout) == "NHWC"
    assert str(s.layer("norm").layout) == "tokens 6x6 +1"
    _check_recordings(s, ["patch_embed", "norm"], 96)
    _assert_local_exact(s, ["patch_embed"])


def test_pvt_v2_stages():
    s = _subject(timm.create_model("pvt_v2_b0", pretrained=False), 64)
    strides = [s.layer(n).rf.jump[0] for n in s.layers.select("stages")]
    assert strides == [4.0, 8.0, 16.0, 32.0]
    _check_recordings(s, ["stages.0.blocks.0.norm1", "stages.0"], 64)


def test_eva02_reason_is_attention():
    s = _subject(timm.create_model("eva02_tiny_patch14_224", pretrained=False, depth=1), 224)
    assert "attention" in s.layer("blocks.0").rf.reason


@pytest.mark.xfail(
    strict=True,
    reason="LeViT's LinearNorm runs BatchNorm1d on x.flatten(0, 1) and reshape_as(x) back: tokens folded "
    "into the batch are not followed, so the per-token qkv projection is global (REGROUPED), not 16 px",
)
def test_levit_per_token_linear_is_local():
    s = _subject(timm.create_model("levit_128s", pretrained=False), 224)
    assert not s.layer("stages.0.blocks.0.attn.qkv").rf.is_global


def test_mobilevit_stages_reach_stride_32():
    s = _subject(timm.create_model("mobilevit_xxs", pretrained=False), 64)
    assert s.layer(s.layers.select("stages")[-1]).rf.jump == (32.0, 32.0)


def test_torchvision_swin_t_stages_are_nhwc():
    torchvision = pytest.importorskip("torchvision")
    s = _subject(torchvision.models.swin_t(weights=None), 64)
    names = s.layers.select("stages")
    assert [s.layer(n).rf.jump[0] for n in names] == [4.0, 8.0, 16.0, 32.0]
    assert [str(s.layer(n).layout) for n in names[:3]] == ["NHWC"] * 3
    _check_recordings(s, names, 64)


def test_torchvision_maxvit_t_keeps_its_grid():
    torchvision = pytest.importorskip("torchvision")
    s = _subject(torchvision.models.maxvit_t(weights=None), 224)
    assert str(s.layer("blocks.3").layout) == "NCHW"
    assert len(s.layers.select("stages")) == 5
