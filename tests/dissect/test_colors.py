from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import convscope
from convscope.dissect import COLOR_NAMES, ColorConcepts, ColorNamer, dissect
from convscope.dissect.colors import PROTOTYPES, rgb_to_lab
from convscope.errors import DataError


def test_lab_of_known_colours():
    assert np.allclose(rgb_to_lab([255, 255, 255]), [100, 0, 0], atol=0.05)
    assert np.allclose(rgb_to_lab([0, 0, 0]), [0, 0, 0], atol=1e-6)
    assert np.allclose(rgb_to_lab([255, 0, 0]), [53.24, 80.09, 67.20], atol=0.05)


def test_prototype_names():
    namer = ColorNamer.prototypes()
    for name, rgb in PROTOTYPES.items():
        assert COLOR_NAMES[int(namer.name(np.array(rgb)))] == name
    checks = {
        (255, 0, 0): "red",
        (0, 0, 255): "blue",
        (0, 128, 0): "green",
        (255, 255, 0): "yellow",
        (255, 255, 255): "white",
        (5, 5, 5): "black",
        (140, 140, 140): "grey",
        (255, 165, 0): "orange",
        (255, 192, 203): "pink",
        (128, 0, 128): "purple",
        (139, 69, 19): "brown",
    }
    got = {rgb: COLOR_NAMES[int(namer.name(np.array(rgb)))] for rgb in checks}
    assert got == checks


def test_w2c_table_file(tmp_path):
    """A table in van de Weijer's layout (R G B and 11 probabilities per bin) is read with R
    varying fastest."""
    proto = ColorNamer.prototypes()
    v = np.arange(32) * 8
    b, g, r = np.meshgrid(v, v, v, indexing="ij")
    probs = np.eye(11)[proto.table]
    table = np.column_stack([r.ravel(), g.ravel(), b.ravel(), probs])
    np.savetxt(tmp_path / "w2c.txt", table, fmt="%g")
    namer = ColorNamer.from_file(tmp_path / "w2c.txt")
    rgb = np.random.default_rng(0).integers(0, 256, (100, 3))
    assert (namer.name(rgb) == proto.name(rgb)).all()
    np.savetxt(tmp_path / "bad.txt", np.zeros((10, 11)))
    with pytest.raises(DataError, match="32768"):
        ColorNamer.from_file(tmp_path / "bad.txt")


def test_auto_color_dissection_of_a_folder(tmp_path):
    """Red squares on white, blue elsewhere: the red indicator unit is labelled red; a broken
    file is skipped and counted."""
    rng = np.random.default_rng(0)
    for i in range(10):
        img = np.full((64, 64, 3), 245, np.uint8)
        y, x = rng.integers(0, 40, 2)
        img[y : y + 20, x : x + 20] = (210, 25, 25)
        img[(y + 30) % 44 : (y + 30) % 44 + 16, 2:20] = (30, 60, 220)
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"xx")
    data = ColorConcepts(tmp_path, seg=32)
    item = data[0]
    assert item.planes.shape == (1, 32, 32) and item.annotated == ["color"]
    names = {COLOR_NAMES[int(v) - 1] for v in item.planes.unique()}
    assert {"red", "white", "blue"} <= names
    conv = nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        conv.weight[0, :, 0, 0] = 20 * torch.tensor([1.0, -1.0, -1.0])
        conv.bias[0] = -4.0
    subject = convscope.Subject.wrap(
        nn.Sequential(conv, nn.Hardtanh(0, 1)), input_size=64, mean=(0, 0, 0), std=(1, 1, 1)
    )
    result = dissect(subject, data, ["1"])
    lab = result.label("1", 0)
    assert lab.name == "red" and lab.iou > 0.8
    assert result.images == 10 and result.skipped[0][0] == "broken.jpg"
