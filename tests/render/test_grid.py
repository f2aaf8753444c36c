from __future__ import annotations

import numpy as np
import pytest
import torch

from convscope.render import filters_to_images, image_grid, to_uint8


def test_grid_layout():
    imgs = [np.full((10, 20, 3), i / 5) for i in range(5)]
    grid = image_grid(imgs, ncols=3, pad=2)
    assert grid.size == (3 * 22 + 2, 2 * 12 + 2)
    arr = np.asarray(grid)
    assert tuple(arr[2, 2]) == (0, 0, 0)  # first tile (value 0)
    assert tuple(arr[14, 2]) == (153, 153, 153)  # fourth tile, second row (3 / 5)
    assert tuple(arr[0, 0]) == (255, 255, 255)  # padding


def test_filters_are_symmetric_around_grey():
    w = torch.zeros(2, 3, 3, 3)
    w[0, 0, 1, 1] = 2.0
    w[0, 1, 0, 0] = -2.0
    imgs = filters_to_images(w)
    assert imgs[0][1, 1, 0] == pytest.approx(1.0)
    assert imgs[0][0, 0, 1] == pytest.approx(0.0)
    assert imgs[0][2, 2, 2] == pytest.approx(0.5)
    assert np.allclose(imgs[1], 0.5)  # all-zero filter is flat grey, not noise
    with pytest.raises(ValueError):
        filters_to_images(torch.zeros(2, 5, 3, 3))


def test_to_uint8_layouts():
    assert to_uint8(torch.ones(3, 4, 5)).shape == (4, 5, 3)
    assert to_uint8(np.zeros((4, 5))).shape == (4, 5, 3)
    assert to_uint8(np.array([[[2.0, -1.0, 0.5]]]))[0, 0].tolist() == [255, 0, 128]
