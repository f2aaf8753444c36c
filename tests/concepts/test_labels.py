"""label_concepts: a concept set's concepts dissected as the units of its layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import convscope
from convscope.concepts import ConceptSet
from convscope.concepts.labels import label_concepts
from convscope.dissect import BrodenDataset, dissect, make_synthetic_broden
from convscope.errors import UserInputError


@pytest.fixture(scope="module")
def broden(tmp_path_factory):
    return make_synthetic_broden(tmp_path_factory.mktemp("broden"), n=12, size=64, seg=32)


@pytest.fixture(scope="module")
def red_net():
    """Channel 0: an indicator of red pixels; channel 1: brightness."""
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, :, 0, 0] = 20 * torch.tensor([1.0, -1.0, -1.0])
        conv.bias[0] = -4.0
        conv.weight[1, :, 0, 0] = 1 / 3
        conv.bias[1] = 0.0
    model = nn.Sequential(conv, nn.Hardtanh(0, 1))
    return convscope.Subject.wrap(model, input_size=64, mean=(0, 0, 0), std=(1, 1, 1))


def _swapped(layer: str) -> ConceptSet:
    """Two 'PCA' concepts that are the channels swapped: concept 1 is the red indicator."""
    unmixing = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    return ConceptSet(layer, "pca", 2, unmixing.clone(), state={"mean": torch.zeros(2), "unmixing": unmixing})


def test_the_concept_on_the_red_channel_is_labelled_red(red_net, broden):
    cs = _swapped("1")
    got = label_concepts(red_net, BrodenDataset(broden), cs, batch_size=6, workers=0)
    lab = got.label("1", 1)
    assert (lab.name, lab.category) == ("red", "color") and lab.detector and lab.iou > 0.9
    assert got.label("1", 0).name != "red"
    plain = dissect(red_net, BrodenDataset(broden), ["1"], batch_size=6, workers=0).layers["1"]
    assert np.array_equal(got.layers["1"].iou, plain.iou[[1, 0]])
    # a Broden folder's path and a spec dict are concept data too
    by_path = label_concepts(red_net, broden, cs, batch_size=6, workers=0)
    by_spec = label_concepts(red_net, BrodenDataset(broden).spec, cs, batch_size=6, workers=0)
    assert np.array_equal(by_path.layers["1"].iou, got.layers["1"].iou)
    assert np.array_equal(by_spec.layers["1"].iou, got.layers["1"].iou)


def test_concepts_of_another_width_are_refused(red_net, broden):
    cs = ConceptSet(
        "1", "pca", 1, torch.ones(1, 3), state={"mean": torch.zeros(3), "unmixing": torch.ones(1, 3)}
    )
    with pytest.raises(UserInputError, match="3 channels"):
        label_concepts(red_net, broden, cs, workers=0)
