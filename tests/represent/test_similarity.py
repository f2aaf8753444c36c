from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from convscope.errors import UserInputError
from convscope.represent import linear_cka, rsa, similarity_matrix


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("shape", [(40, 8), (12, 30)])  # both the feature-space and Gram paths
def test_cka_properties(seed, shape):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape)
    y = x @ rng.normal(size=(shape[1], 5)) + 0.5 * rng.normal(size=(shape[0], 5))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x))
    q = ortho_group.rvs(shape[1], random_state=seed)
    assert linear_cka(x @ q, y) == pytest.approx(linear_cka(x, y))
    assert linear_cka(3.7 * x, y) == pytest.approx(linear_cka(x, y))
    assert 0.0 <= linear_cka(x, y) <= 1.0
    if shape[0] > 2 * shape[1]:  # with few images even unrelated features look alike (CKA's bias)
        assert linear_cka(x, rng.normal(size=shape)) < linear_cka(x, y)


def test_cka_paths_agree():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 20)), rng.normal(size=(30, 12))
    xc, yc = x - x.mean(0), y - y.mean(0)
    kx, ky = xc @ xc.T, yc @ yc.T
    gram = (kx * ky).sum() / (np.linalg.norm(kx) * np.linalg.norm(ky))
    assert linear_cka(x, y) == pytest.approx(gram)


def test_rsa_and_matrix():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 6))
    assert rsa(x, x) == pytest.approx(1.0)
    assert rsa(x, 2 * x + 1) == pytest.approx(1.0)
    m = similarity_matrix({"a": x, "b": x[:, :3]}, {"a": x}, "cka")
    assert m.shape == (2, 1) and m[0, 0] == pytest.approx(1.0)
    with pytest.raises(UserInputError):
        linear_cka(x, x[:5])
    with pytest.raises(UserInputError, match="measure"):
        similarity_matrix({"a": x}, {"a": x}, "cca")
