"""Shared fixtures of the concept tests: the tiny model, a folder of varied images, activations."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from convscope.concepts import collect_activations
from convscope.testing import tiny_subject

LAYER = "block"  # ends in a ReLU: non-negative, 8 channels on an 8 x 8 grid at 32 px


@pytest.fixture(scope="module")
def subject():
    return tiny_subject(size=32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("concept-images")
    rng = np.random.default_rng(0)
    for i in range(12):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        pixels[: 4 * (i % 8)] //= 3  # not all alike
        Image.fromarray(pixels).save(out / f"im{i:02d}.png")
    return out


@pytest.fixture(scope="module")
def acts(subject, folder):
    return collect_activations(subject, folder, LAYER, per_image=16, max_samples=150, seed=0, workers=0)
