"""The report of ``convscope rf`` (and the demo's receptive fields): each unit's empirical
receptive field from its top images in an atlas, stored in it and drawn as a panel, and the
per-layer empirical-vs-theoretical size summary.

``atlas`` is duck-typed (an :class:`convscope.atlas.Atlas`): ``topk``, ``write_empirical_rf``,
``empirical_rfs`` and the path helpers ``empirical_rf_render`` / ``rf_sizes``, so the atlas's
SQL and layout stay in atlas/.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from convscope.inputs.fileio import save_image, write_text


def write_rf_report(
    atlas,
    subject,
    source,
    layer: str,
    units: Sequence[int],
    *,
    top: int = 4,
    criterion: str = "max",
    patch: int = 11,
    stride: int = 3,
    fill: str = "noise",
) -> list[tuple]:
    """For each unit of ``layer`` with a top-K list (``criterion``) in ``atlas``: the empirical
    RF from its ``top`` images of ``source`` (occluder ``patch`` px moved by ``stride`` px,
    ``fill``), stored in the atlas and drawn at ``atlas.empirical_rf_render(layer, unit)``.
    Returns ``(unit, EmpiricalRF, png path)`` per unit done (units without images are skipped)."""
    from convscope.empirical.discrepancy import empirical_rf
    from convscope.render.receptive import empirical_rf_panel

    done = []
    for unit in units:
        tk = atlas.topk(layer, unit, criterion)
        if not len(tk):
            continue
        x = torch.stack([source[int(i)][0] for i in tk.images[:top]])
        result = empirical_rf(subject, x, layer, unit, patch=patch, stride=stride, fill=fill)
        atlas.write_empirical_rf(result, patch, stride)
        png = save_image(empirical_rf_panel(subject, x, result), atlas.empirical_rf_render(layer, unit))
        done.append((unit, result, png))
    return done


def rf_size_rows(atlas) -> list[dict]:
    """Per layer with stored empirical RFs: units, mean and std of the empirical size (px) and
    the theoretical size."""
    rows = []
    for lay in dict.fromkeys(r["layer"] for r in atlas.empirical_rfs()):
        stored = atlas.empirical_rfs(lay)
        sizes = [r["size"] for r in stored]
        rows.append(
            {
                "layer": lay,
                "units": len(stored),
                "empirical_mean": float(sum(sizes) / len(sizes)),
                "empirical_std": float(torch.tensor(sizes).std(unbiased=False)),
                "theoretical": stored[0]["theoretical"],
            }
        )
    return rows


def write_rf_sizes(atlas) -> tuple[list[dict], Path]:
    """:func:`rf_size_rows` of every layer the atlas holds as ``rf_sizes.json`` and its plot;
    returns the rows and the plot's path."""
    from convscope.render.plots import figure_to_image, rf_sizes_figure

    rows = rf_size_rows(atlas)
    write_text(atlas.rf_sizes(".json"), json.dumps(rows, indent=1))
    return rows, save_image(figure_to_image(rf_sizes_figure(rows)), atlas.rf_sizes(".png"))
