"""Theoretical receptive fields against gradient support (issue 19, item 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convscope
from convscope.empirical import SupportCheck, gradient_support, gradient_supports
from convscope.errors import UserInputError
from convscope.receptive import ReceptiveField


def _claim(subject, layer: str, rf: ReceptiveField) -> None:
    """Make the layer table claim ``rf`` for ``layer`` (a deliberately wrong RF; own subjects only)."""
    object.__setattr__(subject.layer(layer), "rf", rf)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture()
def plain():
    """conv 3x3 -> ReLU -> conv 3x3 stride 2 -> ReLU -> conv 5x5 (dilation 2): RF 3 + 2 + 16 = 21 px."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 4, 5, padding=4, dilation=2),
    )
    return convscope.Subject.wrap(model, input_size=40)


def test_plain_convnet_support_is_exactly_the_box(plain):
    info = plain.layer("4")
    assert info.rf.size == (21.0, 21.0)
    check = gradient_support(plain, "4")
    assert check.position == (10, 10) and check.claim == "local" and check.dtype == "float64"
    b = info.rf.box(10, 10).clip(40, 40)
    assert check.box == (b.y0, b.x0, b.y1, b.x1) and check.box[2] - check.box[0] == 20
    want = np.zeros((40, 40), dtype=bool)
    want[b.y0 : b.y1 + 1, b.x0 : b.x1 + 1] = True
    assert np.array_equal(check.support, want)  # every pixel of the box, and none outside
    assert check.inside and check.ok and check.outside == 0
    assert check.coverage == 1.0 and check.filled == 1.0 and check.support_box == check.box
    assert "inside the theoretical box" in check.headline()


def test_a_clipped_box_at_the_corner_and_one_channel(plain):
    check = gradient_support(plain, "4", (0, 0), channel=2)
    assert check.box == (0, 0, 10, 10)  # the centre of unit (0, 0) is pixel (0, 0), half-size 10
    assert check.support_box == check.box and check.coverage == 1.0 and check.channel == 2


def test_the_users_model_is_untouched(plain):
    before = {k: v.clone() for k, v in plain.model.state_dict().items()}
    gradient_support(plain, "2")
    assert all(p.dtype == torch.float32 for p in plain.model.parameters())
    assert all(torch.equal(before[k], v) for k, v in plain.model.state_dict().items())
    assert _hooks(plain.model) == 0


def test_max_pooling_support_is_inside_the_box_but_not_all_of_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, padding=1))
    subject = convscope.Subject.wrap(model, input_size=32)
    check = gradient_support(subject, "1", samples=1)
    assert check.claim == "local" and check.inside and check.ok
    assert subject.layer("1").rf.size == (6.0, 6.0)
    # each 2 x 2 window passes the gradient to its argmax only: at most 3 of 4 pixels (one per colour)
    assert check.filled <= 0.75
    many = gradient_support(subject, "1", samples=8)
    assert many.inside and many.filled > check.filled


def test_a_too_small_claim_is_caught(plain):
    rf = plain.layer("4").rf
    _claim(plain, "4", ReceptiveField((9.0, 9.0), rf.jump, rf.start))
    check = gradient_support(plain, "4")
    assert not check.inside and not check.ok
    assert check.box == (16, 16, 24, 24) and check.support_box == (10, 10, 30, 30)
    assert check.outside == 21 * 21 - 9 * 9
    assert "LEAVES" in check.headline()
    img = np.asarray(check.to_image().convert("RGB"))
    assert ((img[..., 0] == 255) & (img[..., 1] == 0) & (img[..., 2] == 0)).any()  # the red pixels


def test_a_shifted_claim_is_caught(plain):
    rf = plain.layer("4").rf
    _claim(plain, "4", ReceptiveField(rf.size, rf.jump, (rf.start[0] + 2, rf.start[1])))
    assert not gradient_support(plain, "4").inside


class _Gated(nn.Module):
    """A squeeze-excitation gate: every unit depends on the whole image."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y * torch.sigmoid(y.mean(dim=(2, 3), keepdim=True))


def test_global_context_and_global_layers_report_coverage():
    torch.manual_seed(0)
    model = nn.Sequential(_Gated(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    subject = convscope.Subject.wrap(model, input_size=24)
    gated, head = gradient_supports(subject, ["0", "3"])
    assert gated.claim == "global_context" and gated.coverage == 1.0 and gated.backed and gated.ok
    assert gated.box is not None and gated.outside == 0
    assert head.claim == "global" and head.box is None and head.position is None
    assert head.coverage == 1.0 and head.backed and "claim" in head.headline()


def test_a_global_claim_without_support_is_not_backed(plain):
    _claim(plain, "0", ReceptiveField.whole())
    check = gradient_support(plain, "0")
    assert check.claim == "global" and check.coverage < 0.01 and check.backed is False and not check.ok
    assert "NOT backed" in check.headline()


class _Centred(nn.Module):
    """A convolution whose channels are centred per pixel (as a LayerNorm does): they sum to zero."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y - y.mean(dim=1, keepdim=True)


def test_all_channels_do_not_cancel_after_a_channel_norm():
    torch.manual_seed(0)
    subject = convscope.Subject.wrap(nn.Sequential(_Centred()), input_size=16)
    check = gradient_support(subject, "0")
    assert check.box == (7, 7, 9, 9) and check.support_box == check.box and check.filled == 1.0


class _Float32Only(nn.Module):
    """Makes a float32 weight in forward: fails in float64, so the check runs in float32."""

    def forward(self, x):
        return F.conv2d(x, torch.ones(2, 3, 3, 3), padding=1)


def test_a_model_that_cannot_run_in_float64_runs_in_float32():
    subject = convscope.Subject.wrap(nn.Sequential(_Float32Only()), input_size=16)
    check = gradient_support(subject, "0")
    assert check.dtype == "float32" and check.threshold > 0
    assert check.inside and check.coverage == 1.0


def test_user_errors_before_any_work(plain):
    with pytest.raises(convscope.errors.LayerNotFoundError):
        gradient_support(plain, "5")
    with pytest.raises(UserInputError, match="outside its 20 x 20 map"):
        gradient_support(plain, "4", (20, 0))
    with pytest.raises(UserInputError, match="no unit 4"):
        gradient_support(plain, "4", channel=4)
    with pytest.raises(UserInputError, match="samples"):
        gradient_support(plain, "4", samples=0)


def test_renders_saves_and_loads(plain, tmp_path):
    check = gradient_support(plain, "2")
    img = np.asarray(check.to_image(cell=120).convert("RGB"))
    assert img.shape[1] == 120 and img.std() > 0
    back = SupportCheck.load(check.save(tmp_path / "s.npz"))
    assert back.box == check.box and np.array_equal(back.support, check.support)
