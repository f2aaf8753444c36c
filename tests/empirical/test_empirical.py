from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import convscope
from convscope.empirical import discrepancy_map, empirical_rf, stimuli
from convscope.errors import UserInputError


@pytest.fixture(scope="module")
def window_net():
    """Unit 0 reads only kernel rows 1..5 and columns 4..6 of a 9 x 9 convolution."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 2, 9, padding=4)
    with torch.no_grad():
        mask = torch.zeros(9, 9)
        mask[1:6, 4:7] = 1
        conv.weight[0] = torch.rand(3, 9, 9) * mask + 0.1 * mask
        conv.bias.zero_()
    return convscope.Subject.wrap(nn.Sequential(conv), input_size=40)


def test_empirical_rf_recovers_the_known_window(window_net):
    x = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    dm = discrepancy_map(window_net, x, "0", 0, patch=1, stride=1, fill="zero")
    py, px = dm.peak
    ys, xs = np.nonzero(dm.values)
    # the window of the kernel, placed at the peak (padding 4): rows py-3..py+1, cols px..px+2
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (py - 3, py + 1, px, px + 2)
    rf = empirical_rf(window_net, x, "0", 0, patch=1, stride=1, fill="zero", threshold=1e-6)
    assert (rf.height, rf.width) == (5, 3) and rf.theoretical == 9


def _plain_loop(subject, x, layer, channel, patch, stride, filler, peak):
    """One occluded image per forward pass, full image, every position."""
    H, W = x.shape[2:]
    with torch.no_grad(), subject.record([layer]) as rec:
        subject(x)
    clean = rec[layer][0, channel, peak[0], peak[1]]
    out = np.zeros(((H - patch) // stride + 1, (W - patch) // stride + 1))
    for i, y0 in enumerate(range(0, H - patch + 1, stride)):
        for j, x0 in enumerate(range(0, W - patch + 1, stride)):
            occ = x.clone()
            occ[:, :, y0 : y0 + patch, x0 : x0 + patch] = filler[:, :, y0 : y0 + patch, x0 : x0 + patch]
            with torch.no_grad(), subject.record([layer]) as rec:
                subject(occ)
            out[i, j] = abs(float(clean - rec[layer][0, channel, peak[0], peak[1]]))
    return out


def test_equals_the_plain_loop(default_subject):
    from skimage import data

    from convscope.empirical.discrepancy import _filler

    x = default_subject.load_images([data.chelsea()])
    x = torch.nn.functional.interpolate(x, size=(96, 96), mode="bilinear", align_corners=False)
    fast = discrepancy_map(default_subject, x, "blocks.2", 5, patch=11, stride=6, fill="noise")
    ref = _plain_loop(
        default_subject, x, "blocks.2", 5, 11, 6, _filler(default_subject, x, "noise", 11, 0), fast.peak
    )
    assert np.allclose(fast.values, ref, atol=1e-4, rtol=1e-4)
    assert fast.evaluated < ref.size  # positions outside the receptive field were skipped


def test_whole_map_measure_and_bad_input(default_subject):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    dm = discrepancy_map(default_subject, x, "blocks.1", 2, patch=8, stride=8, measure="map")
    assert dm.evaluated == 64 and dm.values.min() > 0  # every position changes some of the map
    with pytest.raises(UserInputError):
        discrepancy_map(default_subject, x, "blocks.1", 99)
    with pytest.raises(UserInputError):
        discrepancy_map(default_subject, x, "blocks.1", 0, fill="pink")


def test_empirical_smaller_than_theoretical_in_a_trained_net(default_subject):
    from skimage import data

    x = default_subject.load_images([data.chelsea(), data.coffee()])
    rf = empirical_rf(default_subject, x, "blocks.2", 3, stride=6)
    assert 0 < rf.size < rf.theoretical


def test_stimuli(window_net):
    patch = np.random.default_rng(0).random((9, 9, 3)).astype(np.float32)
    st = stimuli(window_net, patch, "0", 0, stride=2, n=4)
    # the centre unit responds only while the patch overlaps its window; the max anywhere does not
    assert st.centre.max() > st.centre.min() and np.ptp(st.anywhere) < np.ptp(st.centre)
    flat = stimuli(window_net, np.full((9, 9, 3), 0.3, np.float32), "0", 0, stride=4, n=2)
    assert flat.intact == pytest.approx(flat.shuffled) == pytest.approx(flat.scrambled)
    assert st.to_image().width > 300


def test_rf_panel_has_a_colour_bar(window_net):
    from convscope.render.receptive import empirical_rf_panel
    from tests.render.checks import find_colorbar

    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(2))
    rf = empirical_rf(window_net, x, "0", 0, patch=3, stride=2, fill="zero")
    panel = np.asarray(empirical_rf_panel(window_net, x, rf))
    found = find_colorbar(panel, "inferno")
    assert found is not None and found[0] > 40  # under the tiles
