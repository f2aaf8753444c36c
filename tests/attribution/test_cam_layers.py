"""The default CAM layer: the last map whose positions reach the output (class-token ViTs)."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

import convscope
from convscope.attribution.cam import default_cam_layer
from convscope.errors import UserInputError
from convscope.subject import Subject

GRAD_CAMS = ("gradcam", "gradcam++", "guided_gradcam")


@pytest.fixture(scope="module")
def timm_vit():
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, depth=2, embed_dim=32, num_heads=2
    )
    return Subject.wrap(model.eval(), input_size=32)


@pytest.fixture(scope="module")
def torchvision_vit():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )
    return Subject.wrap(model.eval(), input_size=32)


def test_vit_default_cam_layer_is_the_input_of_the_last_attention(timm_vit, torchvision_vit):
    # after the last attention only the class token goes on: its patch tokens reach nothing
    assert default_cam_layer(timm_vit) == "blocks.1.norm1"
    # torchvision initialises the head to zero: the head's input still decides
    assert default_cam_layer(torchvision_vit) == "encoder.layers.encoder_layer_1.ln_1"


@pytest.mark.parametrize("method", GRAD_CAMS)
def test_vit_default_cam_gives_a_map(timm_vit, method):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    maps = convscope.explain(timm_vit, x, method, target=3).maps
    assert maps.shape == (2, 32, 32)
    assert torch.isfinite(torch.as_tensor(maps)).all()
    assert float(torch.as_tensor(maps).std()) > 0


@pytest.mark.parametrize("method", GRAD_CAMS)
def test_post_attention_layer_is_refused_naming_the_default(timm_vit, method):
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(UserInputError, match=r"blocks\.1\.mlp: its positions do not reach.*blocks\.1\.norm1"):
        convscope.explain(timm_vit, x, method, layer="blocks.1.mlp")


def test_scorecam_takes_a_post_attention_layer(timm_vit):
    # Score-CAM weighs channels by the score of the masked input, not by a gradient
    maps = convscope.explain(timm_vit, torch.rand(1, 3, 32, 32), "scorecam", layer="norm").maps
    assert torch.isfinite(torch.as_tensor(maps)).all()


def test_vit_unit_target_cam_layer_runs_before_the_unit(timm_vit):
    layer = default_cam_layer(timm_vit, "blocks.1.mlp.fc1")
    assert timm_vit.layer(layer).order < timm_vit.layer("blocks.1.mlp.fc1").order
    maps = convscope.explain(timm_vit, torch.rand(1, 3, 32, 32), "gradcam", target="blocks.1.mlp.fc1:3").maps
    assert torch.isfinite(torch.as_tensor(maps)).all()


def test_cnn_default_cam_layer_is_still_the_last_stage(resnet18, alexnet, tiny):
    for subject, last in ((resnet18, "layer4"), (alexnet, "avgpool"), (tiny, "conv2")):
        assert default_cam_layer(subject) == subject.layers.stages()[-1].name == last
