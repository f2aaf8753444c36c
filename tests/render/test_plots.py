from __future__ import annotations

import itertools

import numpy as np

from convscope.empirical.stimuli import Stimuli
from convscope.render.plots import pyplot, stimuli_figure


def _visible_labels(ax):
    """The tick labels matplotlib draws (those inside the view limits), titles and axis labels."""
    (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    out = [t for t in ax.get_xticklabels() if x0 <= t.get_position()[0] <= x1]
    out += [t for t in ax.get_yticklabels() if y0 <= t.get_position()[1] <= y1]
    out += [ax.title, ax.xaxis.label, ax.yaxis.label, ax.xaxis.get_offset_text(), ax.yaxis.get_offset_text()]
    return [t for t in out if t.get_text()]


def test_stimuli_chart_labels_do_not_overlap():
    rng = np.random.default_rng(0)
    # responses as a real unit gives them: long tick labels on the colour bars
    st = Stimuli(
        "blocks.2",
        0,
        rng.random((12, 12)) * 17.9 - 3.2,
        12.0031 + rng.random((12, 12)) * 0.002,
        14.73,
        3.281,
        9.402,
        16,
    )
    fig = stimuli_figure(st)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(r)) for ax in fig.axes for t in _visible_labels(ax)]
    clashes = [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]
    assert not clashes
    pyplot().close(fig)
