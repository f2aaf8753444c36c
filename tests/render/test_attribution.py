from __future__ import annotations

import numpy as np

from convscope.attribution.result import AttributionMap
from tests.render.checks import find_colorbar, lightness

S = 64  # tile side; panel layout: 4 px padding, 16 px title line
PAD, HEAD = 4, 16


def _tile(panel, k: int) -> np.ndarray:
    """Tile ``k`` (0 image, 1 map, 2 overlay) of an attribution panel."""
    arr = np.asarray(panel)
    x = PAD + k * (S + PAD)
    return arr[HEAD : HEAD + S, x : x + S]


def _amap(method, maps, signed, raw=None):
    images = np.full((1, S, S, 3), 0.7, np.float32)
    return AttributionMap(
        method,
        maps[None].astype(np.float32),
        images,
        ["t"],
        raw=None if raw is None else raw[None].astype(np.float32),
        signed=signed,
    )


def test_heavy_tailed_signed_map_is_visible():
    """Integrated Gradients maps are heavy-tailed: most pixels are small next to a few large
    ones. At least a third of the map's pixels must differ visibly (>= 10 CIELAB L*) from the
    colour of zero; white-centred blue-white-red scaled at the 99.5th percentile gave ~15%."""
    rng = np.random.default_rng(0)
    m = rng.standard_t(2, size=(S, S))
    m[0, 0] = 0.0
    tile = _tile(_amap("integrated_gradients", m, True).to_image(0), 1)
    zero = lightness(tile[0, 0])
    visible = np.abs(lightness(tile) - zero) >= 10
    assert visible.mean() >= 1 / 3, visible.mean()


def test_guided_backprop_is_an_rgb_image_around_grey():
    raw = np.zeros((3, S, S))
    raw[0, 10:20, 10:20] = 1.0  # red only
    raw[2, 30:40, 30:40] = -1.0  # minus blue
    tile = _tile(_amap("guided", np.abs(raw).max(0), False, raw).to_image(0), 1).astype(int)
    assert np.abs(tile[50, 50] - 128).max() <= 1  # zero gradient: grey
    assert tile[15, 15, 0] > 200 and abs(tile[15, 15, 1] - 128) <= 1  # + red: reddish
    assert tile[35, 35, 2] < 60 and abs(tile[35, 35, 0] - 128) <= 1  # - blue: yellowish grey


def test_panels_have_a_colour_bar():
    rng = np.random.default_rng(1)
    panel = _amap("gradcam", rng.random((S, S)), False).to_image(0)
    found = find_colorbar(np.asarray(panel), "inferno")
    assert found is not None and found[0] >= HEAD + S  # under the tiles
