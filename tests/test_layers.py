from __future__ import annotations

import pytest

from convscope.errors import AmbiguousLayerError, LayerNotFoundError, UserInputError
from convscope.layers import parse_address


def test_alexnet_table_shapes(alexnet):
    t = alexnet.layers
    assert t["features.0"].shape == (64, 55, 55)
    assert t["features.12"].shape == (256, 6, 6)
    assert t["classifier.6"].shape == (1000,)
    assert t["features.10"].units == 256
    assert t["features.0"].type == "Conv2d"


def test_unknown_layer_lists_close_names(alexnet):
    with pytest.raises(LayerNotFoundError) as err:
        alexnet.layer("features.13")
    assert "features.12" in str(err.value)
    assert "features.12" in err.value.close


def test_aliases(alexnet):
    t = alexnet.layers
    assert t.aliases["conv1"] == "features.0"
    assert t.aliases["conv5"] == "features.10"
    assert t.aliases["pool5"] == "features.12"
    assert t.aliases["fc6"] == "classifier.1"
    assert t.aliases["fc8"] == "classifier.6"
    assert alexnet.layer("conv5").name == "features.10"


def test_resolve_globs_and_lists(alexnet):
    t = alexnet.layers
    assert t.resolve("features.1?") == ["features.10", "features.11", "features.12"]
    assert t.resolve("conv1,features.3") == ["features.0", "features.3"]
    assert t.resolve(["pool5", "features.12"]) == ["features.12"]
    with pytest.raises(LayerNotFoundError):
        t.resolve("nothing.*")
    with pytest.raises(UserInputError):
        t.resolve("")


def test_reused_module_gets_one_address_per_call(resnet18):
    t = resnet18.layers
    assert "layer1.0.relu#0" in t and "layer1.0.relu#1" in t
    with pytest.raises(AmbiguousLayerError, match="layer1.0.relu#1"):
        t.get("layer1.0.relu")
    assert t.resolve("layer1.0.relu") == ["layer1.0.relu"]  # a bare path means every call


def test_in_place_overwrites_are_known(resnet18):
    t = resnet18.layers
    assert t["layer1.0.bn2"].mutated  # out += identity overwrites it
    assert t["bn1"].mutated  # ReLU(inplace=True) overwrites it
    assert not t["layer1.0.conv1"].mutated


def test_parse_address():
    assert parse_address("a.b#2") == ("a.b", 2)
    assert parse_address("a.b") == ("a.b", None)
    with pytest.raises(UserInputError):
        parse_address("a#x")


def test_table_format_has_every_layer(default_subject):
    text = default_subject.layers.format()
    lines = text.splitlines()
    assert len(lines) == len(default_subject.layers) + 1
    assert lines[0].split() == ["name", "type", "output", "units", "rf", "stride", "layout", "why"]
    row = next(r for r in lines if r.startswith("conv_stem "))
    assert row.split()[1:] == ["Conv2d", "32x112x112", "32", "3", "2", "NCHW"]


def test_a_name_like_no_layer_lists_the_top_level_layers():
    from convscope.testing import tiny_subject

    subject = tiny_subject()
    with pytest.raises(
        LayerNotFoundError,
        match=r"'layer4'; its top-level layers are conv1, relu, pool, block, conv2, gap, fc \(",
    ) as e:
        subject.layer("layer4")
    assert e.value.close == []
    with pytest.raises(LayerNotFoundError, match="did you mean block"):
        subject.layer("blok")


def test_select_is_the_one_vocabulary(alexnet, resnet18):
    t = alexnet.layers
    convs = [i.name for i in t.convolutions()]
    assert (
        t.select("all-conv")
        == convs
        == ["features.0", "features.3", "features.6", "features.8", "features.10"]
    )
    assert t.select("conv5, all-conv")[0] == "features.10"  # order follows the spec, no duplicates
    assert len(t.select("all-conv,conv5")) == 5
    assert t.select(lambda i: i.type == "Linear") == ["classifier.1", "classifier.4", "classifier.6"]
    assert t.select([t["features.3"], "pool5"]) == ["features.3", "features.12"]
    assert resnet18.layers.select("stages") == [i.name for i in resnet18.layers.stages()]
    assert resnet18.layers.select("stages")[-4:] == ["layer1", "layer2", "layer3", "layer4"]
    assert t.resolve("all-conv") == t.select("all-conv")  # the recorder's vocabulary is the same
    with pytest.raises(LayerNotFoundError, match="all-conv"):
        t.select("all-cnv")  # a misspelt word gets the word as a hint
    with pytest.raises(UserInputError, match="accepts no layer"):
        t.select(lambda i: False)


def test_a_recorder_takes_the_words_too(alexnet):
    import torch

    with alexnet.record("all-conv") as rec:
        alexnet(torch.zeros(1, 3, *alexnet.input_size))
    assert rec.addresses == [i.name for i in alexnet.layers.convolutions()]
    assert all(a in rec for a in rec.addresses)


def test_unknown_names_that_are_not_layers_are_not_layer_errors():
    import convscope
    from convscope.errors import NameNotFoundError

    with pytest.raises(NameNotFoundError, match="resnet18") as err:
        convscope.load("torchvision:resnet1")
    assert not isinstance(err.value, LayerNotFoundError)


def test_a_module_named_like_a_word_is_that_module():
    """timm's ConvNeXt and MaxViT have a module named ``stages``: a bare module's addresses (what
    the layer trace records through) name it, the word needs a layer table."""
    from torch import nn

    from convscope.layers import resolve_module_names

    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 4, 3))
    model.add_module("stages", nn.Sequential(nn.Conv2d(4, 4, 3)))
    assert resolve_module_names(model, ["stem", "stages", "stages.0"]) == ["stem", "stages", "stages.0"]
    with pytest.raises(UserInputError, match="needs a layer table"):
        resolve_module_names(nn.Sequential(nn.Conv2d(3, 4, 3)), "stages")
