from __future__ import annotations

import numpy as np
import pytest

from convscope.dissect import BrodenDataset, dissect, make_synthetic_broden
from convscope.dissect.regions import unit_figure
from convscope.render.dissect import concepts_figure, detectors_figure, region_overlay
from convscope.render.plots import figure_to_image
from convscope.testing import tiny_subject


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    subject = tiny_subject(size=48)
    data = BrodenDataset(make_synthetic_broden(tmp_path_factory.mktemp("b"), n=8, size=48, seg=24))
    return subject, data, dissect(subject, data, ["block", "conv2"], batch_size=4, iou_threshold=0.01)


def test_region_overlay_keeps_the_region_and_dims_the_rest():
    img = np.full((10, 10, 3), 200, np.uint8)
    mask = np.zeros((10, 10), bool)
    mask[3:7, 3:7] = True
    out = np.asarray(region_overlay(img, mask))
    assert (out[4, 4] == 200).all() and out[0, 0, 0] < 150 and tuple(out[3, 3]) == (255, 230, 0)


def test_figures(result):
    subject, data, d = result
    fig = unit_figure(subject, data, d, "conv2", 0, n=3)
    assert fig.height > 100 and fig.width >= 3 * 112
    img = figure_to_image(detectors_figure([d.summary("block"), d.summary("conv2")]))
    assert img.width > 200
    assert figure_to_image(concepts_figure(d, "conv2")).height > 100


def _bars_and_legend(fig):
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    return [p.get_window_extent() for p in ax.patches if p.get_height() > 0], legend


def test_detector_chart_legend_does_not_cover_the_bars():
    from convscope.dissect.result import LayerSummary
    from convscope.render.plots import pyplot

    # the auto-colour chart: one layer, one category with all the detectors
    one = LayerSummary("blocks.1", 24, {"color": 11}, {"color": 9})
    two = [
        LayerSummary("a", 24, {"color": 9, "texture": 7}, {"color": 9, "texture": 7}),
        LayerSummary("b", 24, {"color": 2, "texture": 9}, {"color": 2, "texture": 9}),
    ]
    for summaries in ([one], two):
        fig = detectors_figure(summaries)
        bars, legend = _bars_and_legend(fig)
        assert bars and not any(legend.overlaps(b) for b in bars)
        pyplot().close(fig)
