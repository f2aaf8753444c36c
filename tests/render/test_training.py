from __future__ import annotations

import numpy as np
import torch

from convscope.render.training import filter_evolution_figure


def _longest_black_run(arr: np.ndarray) -> int:
    black = (arr == 0).all(-1)
    best = 0
    for row in black:
        run = 0
        for v in row:
            run = run + 1 if v else 0
            best = max(best, run)
    return best


def test_filter_evolution_shows_each_weight_at_least_12_px_wide():
    for k in (3, 5):
        w = torch.ones(8, 3, k, k)
        w[:, :, :, 1::2] = -1.0  # columns alternate +1 / -1: white and black stripes
        snaps = [{"conv.weight": w}, {"conv.weight": w}]
        fig = np.asarray(filter_evolution_figure(snaps, [0, 1], ["conv.weight"]))
        # a black stripe is one filter pixel wide (text strokes are a few px at most)
        assert _longest_black_run(fig) >= 12, (k, _longest_black_run(fig))


def test_curves_have_whole_epoch_ticks():
    from types import SimpleNamespace

    from convscope.render.plots import pyplot
    from convscope.render.training import curves_figure

    hist = [
        SimpleNamespace(epoch=e, train_loss=1 / e, test_loss=1.1 / e, train_accuracy=0.5, test_accuracy=0.4)
        for e in range(1, 5)
    ]
    fig = curves_figure(hist)
    fig.canvas.draw()
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    pyplot().close(fig)
