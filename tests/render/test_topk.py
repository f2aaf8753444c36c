from __future__ import annotations

import numpy as np
import pytest
import torch

from convscope.inputs.sources import open_images
from convscope.receptive import ReceptiveField
from convscope.scan.patches import choose_patch, render_topk, unit_maps
from convscope.scan.result import UnitTopK
from convscope.testing import tiny_subject
from tests.render.checks import find_colorbar

CELL = 112


def _top(subject, source, layer, unit, idx) -> UnitTopK:
    """A top-K of ``idx`` as a scan would store it: each image's maximum and its position."""
    subject.layer(layer)
    x = torch.stack([source[i][0] for i in idx])
    m = unit_maps(subject, x, layer, unit)
    flat = m.flatten(1)
    score, pos = flat.max(1)
    w = m.shape[-1] if m.dim() == 3 else 1
    return UnitTopK(
        layer,
        unit,
        "max",
        False,
        np.array(idx),
        [str(i) for i in idx],
        score.numpy(),
        (pos // w).numpy(),
        (pos % w).numpy(),
    )


def _grey_fraction(tile: np.ndarray) -> float:
    return float((np.abs(tile.astype(int) - 128).max(-1) <= 1).mean())


@pytest.mark.parametrize("layer", ["blocks.4", "conv_head"])  # RF 339 px and 851 px on 224 px
def test_deep_layer_patch_of_a_photo_is_not_mostly_grey(default_subject, layer):
    source = open_images("convscope:samples", transform=default_subject.transform)
    chelsea = 0  # the bundled photos come first, each before its crops
    assert source.records[chelsea].name == "chelsea"
    default_subject.layer(layer)
    with torch.inference_mode(), default_subject.record([layer], stop=True) as rec:
        default_subject(source[chelsea][0][None])
    unit = int(rec[layer][0].flatten(1).amax(1).argmax())  # the unit chelsea drives most
    top = _top(default_subject, source, layer, unit, [chelsea])
    grid = np.asarray(render_topk(default_subject, source, top))
    # the patch tile; rows 31..129 lie inside it with and without the line under the title.
    # The theoretical field cut from the image, grey outside it, was 14% (blocks.4) and 71%
    # (conv_head) grey here.
    assert _grey_fraction(grid[31:130, 4 : 4 + CELL]) < 0.05


def _rf(size: float) -> ReceptiveField:
    return ReceptiveField((size, size), (32.0, 32.0), (16.0, 16.0))


def test_the_mode_follows_the_rule():
    hot = np.zeros((7, 7), np.float32)
    hot[2, 4] = 5.0
    small = choose_patch(_rf(35), (224, 224), hot, 2, 4)
    assert (small.mode, small.label) == ("theoretical", "theoretical RF 35 px")
    assert small.box == _rf(35).box(2, 4)
    half = choose_patch(_rf(851), (224, 224), hot, 2, 4)
    assert (half.mode, half.label) == ("half-max", "effective field (half-max of map)")
    b = half.box  # inside the image, around the hot cell (centre 2 * 32 + 16, 4 * 32 + 16)
    assert 0 <= b.y0 <= 80 <= b.y1 < 224 and 0 <= b.x0 <= 144 <= b.x1 < 224
    assert b.height < 0.8 * 224 and b.width < 0.8 * 224
    emp = choose_patch(_rf(851), (224, 224), hot, 2, 4, empirical=60)
    assert emp.mode == "empirical" and (emp.box.height, emp.box.width) == (60, 60)
    assert emp.label == "effective field (empirical RF 60 px)"
    flat = choose_patch(_rf(851), (224, 224), np.ones((7, 7), np.float32), 2, 4)
    assert (flat.mode, flat.label) == ("whole", "whole image: RF 851 px > image")
    assert (flat.box.height, flat.box.width) == (224, 224)
    negative = choose_patch(_rf(851), (224, 224), hot - 10, 2, 4)
    assert negative.mode == "whole"
    one = choose_patch(_rf(59), (32, 32), np.ones((1, 1), np.float32), 0, 0)
    assert (one.mode, one.label) == ("whole", "whole image: 1x1 map")
    glob = choose_patch(ReceptiveField.whole(), (32, 32), None, 0, 0)
    assert (glob.mode, glob.label) == ("whole", "whole image: global layer")


@pytest.fixture(scope="module")
def tiny_source():
    subject = tiny_subject()
    return subject, open_images("convscope:samples", transform=subject.transform)


def test_1x1_layer_has_no_heat_row(tiny_source):
    subject, source = tiny_source
    spatial = render_topk(subject, source, _top(subject, source, "conv2", 0, [0, 1, 2]))
    single = render_topk(subject, source, _top(subject, source, "gap", 0, [0, 1, 2]))
    assert single.height < spatial.height - CELL + 10  # one row of tiles fewer
    assert find_colorbar(np.asarray(single), "inferno") is None


def test_topk_grid_has_a_colour_bar_under_the_heat_row(tiny_source):
    subject, source = tiny_source
    grid = np.asarray(render_topk(subject, source, _top(subject, source, "conv2", 1, [0, 1, 2])))
    found = find_colorbar(grid, "inferno")
    assert found is not None and found[0] > 18 + 2 * CELL
