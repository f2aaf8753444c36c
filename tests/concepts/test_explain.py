"""Explaining one image with concepts: heat maps, contributions, the figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.concepts import fit_dictionary
from convscope.concepts.explain import ConceptExplanation, explain_concepts
from convscope.concepts.importance import ablation_importance, concept_importance
from convscope.errors import UserInputError
from tests.concepts.conftest import LAYER


@pytest.fixture(scope="module")
def nmf(acts):
    return fit_dictionary(acts.x, "nmf", 6, layer=LAYER, seed=0)


def test_contributions_are_the_importance_of_that_image(subject, folder, nmf, tmp_path):
    path = sorted(folder.glob("*.png"))[4]
    (tmp_path / "one").mkdir()
    Image.open(path).save(tmp_path / "one" / "a.png")
    e = explain_concepts(subject, path, nmf)
    imp = concept_importance(subject, tmp_path / "one", nmf, workers=0)
    assert imp.class_indices == [e.target] and e.target_name == subject.label(e.target)
    assert torch.allclose(e.contributions, imp.matrix[0], atol=1e-6)
    x = subject.load_images(path)
    assert torch.allclose(e.heatmaps, nmf.heatmaps(subject, x)[0], atol=1e-5)
    assert e.target == int(subject(x).argmax())
    # the same from a preprocessed tensor, (3, H, W) or (1, 3, H, W)
    for t in (x[0], x):
        assert torch.allclose(explain_concepts(subject, t, nmf).contributions, e.contributions, atol=1e-6)
    # another target, by name; its ranking agrees with brute force at the top
    other = explain_concepts(subject, x, nmf, "class7")
    assert other.target == 7 and not torch.allclose(other.contributions, e.contributions)
    drop = ablation_importance(subject, x, nmf, 7)[0]
    assert int(other.contributions.argmax()) == int(drop.argmax())


def test_the_figure_shows_the_top_concepts_named(subject, folder, nmf, tmp_path):
    path = sorted(folder.glob("*.png"))[0]
    e = explain_concepts(subject, path, nmf, top=3, names={1: "stripes", "2": "blobs"})
    assert e.names == ["", "stripes", "blobs", "", "", ""] and e.label(1) == "concept 1 · stripes"
    assert e.ranked()[:3] == torch.argsort(e.contributions, descending=True)[:3].tolist()
    assert e.pixels.shape == (32, 32, 3) and e.pixels.dtype == np.uint8
    img = e.to_image()
    assert img.width > 600 and img.height > 300
    # the combined map colours each pixel by its strongest concept among those shown
    comb = e.combined(e.ranked()[:3])
    assert comb.shape == (32, 32, 3) and comb.std() > 0
    back = ConceptExplanation.load(e.save(tmp_path / "e.npz"))
    assert torch.equal(back.contributions, e.contributions) and np.array_equal(back.pixels, e.pixels)
    assert explain_concepts(subject, path, nmf, names=["a", "b"]).names[:3] == ["a", "b", ""]


def test_bad_images_are_one_line_errors(subject, nmf):
    with pytest.raises(UserInputError, match="one image"):
        explain_concepts(subject, torch.zeros(2, 3, 32, 32), nmf)
    with pytest.raises(UserInputError, match="takes a path"):
        explain_concepts(subject, 3.5, nmf)
    with pytest.raises(UserInputError, match="the image first"):
        explain_concepts(subject, nmf, torch.zeros(3, 32, 32))
    with pytest.raises(UserInputError, match="unknown class"):
        explain_concepts(subject, torch.zeros(3, 32, 32), nmf, "zebra")
