from __future__ import annotations

import urllib.error

import pytest
import torch
from skimage import data

import convscope
from convscope.errors import ModelLoadError, UserInputError, WeightsUnavailableError
from convscope.recorder import RecordingError
from convscope.zoo import imagenet_classes


def test_offline_default_classifies_bundled_images(default_subject):
    preds = default_subject.predict([data.chelsea(), data.coffee()], k=5)
    assert preds.indices[0, 0] == 285
    assert preds.indices[1, 0] == 967
    assert preds.names(0)[0] == "Egyptian cat"
    assert preds.names(1)[0] == "espresso"
    assert default_subject.preprocess.mean == (0.5, 0.5, 0.5)
    assert default_subject.input_size == (224, 224)


def test_imagenet_classes_bundled():
    names = imagenet_classes()
    assert len(names) == 1000
    assert names[0] == "tench" and names[999] == "toilet tissue"


def test_torchvision_random_init(alexnet):
    assert not alexnet.model.training
    assert alexnet.labels is not None and len(alexnet.labels) == 1000
    out = alexnet(torch.zeros(1, 3, 224, 224))
    assert out.shape == (1, 1000)


def test_local_weights_roundtrip(tmp_path):
    torch.manual_seed(1)
    ref = convscope.load("torchvision:resnet18", weights=None)
    path = tmp_path / "r18.pth"
    # Nested and DataParallel-prefixed, as real checkpoints often are.
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in
                                           ref.model.state_dict().items()}}, path)
    again = convscope.load("torchvision:resnet18", weights=path)
    for (k, a), b in zip(ref.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), k
    via_arch = convscope.load(path, arch="torchvision:resnet18")
    assert torch.equal(via_arch.model.fc.weight, ref.model.fc.weight)


def test_safetensors_checkpoint(tmp_path):
    from safetensors.torch import save_file

    ref = convscope.load("timm:resnet18", weights=None)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in ref.model.state_dict().items()}, str(path))
    again = convscope.load(path, arch="timm:resnet18")
    assert torch.equal(again.model.fc.weight, ref.model.fc.weight)
    assert again.preprocess.size == (224, 224)


def test_checkpoint_needs_arch(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(UserInputError, match="arch"):
        convscope.load(path)


def test_checkpoint_that_does_not_fit(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(ModelLoadError, match="missing"):
        convscope.load(path, arch="torchvision:resnet18")


def test_pickled_module_is_refused_safely(tmp_path):
    path = tmp_path / "full.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole pickled module, not a state dict
    with pytest.raises(ModelLoadError, match="weights-only"):
        convscope.load(path, arch="torchvision:resnet18")


def test_torchscript_file(tmp_path):
    torch.manual_seed(0)
    model = convscope.load("torchvision:resnet18", weights=None).model
    path = tmp_path / "r18_script.pt"
    torch.jit.script(model).save(str(path))
    subject = convscope.load(path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(subject(x), model(x), atol=1e-5)
    assert subject.labels is not None
    with pytest.raises(RecordingError, match="TorchScript"):
        subject.record("layer1")


def test_offline_download_fails_in_one_clear_line(monkeypatch):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        convscope.load("torchvision:squeezenet1_0")
    msg = str(err.value)
    assert "offline" in msg and "weights=None" in msg and "\n" not in msg


def test_unknown_model_suggests_sources():
    with pytest.raises(UserInputError, match="torchvision:resnet18"):
        convscope.load("resnet18")
    with pytest.raises(UserInputError, match="resnet18"):
        convscope.load("torchvision:resnet1")


def test_wrap_any_module():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2))
    subject = convscope.Subject.wrap(model, labels=["no", "yes"], input_size=32)
    assert subject.layer("0").shape == (4, 30, 30)
    preds = subject.predict(torch.zeros(1, 3, 32, 32), k=2)
    assert set(preds.names(0)) == {"no", "yes"}
