"""The baselines that ignore the model: edge (equal to scikit-image's Sobel filter) and random."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import convscope
from convscope.attribution.baselines import sobel
from convscope.testing import tiny_subject


def test_sobel_equals_scikit_image():
    from skimage.filters import sobel as sk_sobel

    img = np.random.default_rng(0).random((2, 3, 17, 23))
    ours = sobel(torch.from_numpy(img)).numpy()
    want = np.stack([[sk_sobel(img[i, c]) for c in range(3)] for i in range(2)])
    np.testing.assert_allclose(ours, want, rtol=1e-12, atol=1e-14)


def test_edge_is_the_sobel_magnitude_of_the_image_the_model_saw():
    from skimage.filters import sobel as sk_sobel

    subject = tiny_subject(size=32)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = convscope.explain(subject, x, "edge")
    pixels = subject.preprocess.denormalize(x).clamp(0, 1).double().numpy()
    want = np.stack([np.max([sk_sobel(p[c]) for c in range(3)], 0) for p in pixels])
    np.testing.assert_allclose(a.maps, want, rtol=1e-5, atol=1e-6)
    # the model plays no part: the same maps for any target and any weights
    other = tiny_subject(size=32, seed=7)
    np.testing.assert_array_equal(convscope.explain(other, x, "edge", target="class:3").maps, a.maps)
    # so its maps are not titled by a score (logit(tiger cat)) they do not explain
    assert a.targets == ["ignores the model"] * 3
    assert convscope.explain(subject, x, "random").targets[0] == "ignores the model"
    assert convscope.explain(subject, x, "saliency").targets[0] != "ignores the model"


def test_random_is_seeded_uniform_noise():
    subject = tiny_subject(size=32)
    x = torch.zeros(2, 3, 32, 32)
    a = convscope.explain(subject, x, "random", seed=3).maps
    assert a.shape == (2, 32, 32) and (a >= 0).all() and (a < 1).all()
    np.testing.assert_array_equal(convscope.explain(subject, x, "random", seed=3).maps, a)
    assert not np.array_equal(convscope.explain(subject, x, "random", seed=4).maps, a)
    assert abs(a.mean() - 0.5) < 0.05
    with pytest.raises(convscope.errors.UserInputError, match="seed"):
        convscope.explain(subject, x, "random", sed=3)
