from __future__ import annotations

import urllib.error

import pytest
import torch
from skimage import data
from torchvision.transforms import functional as TF

import convscope
from convscope.errors import ModelLoadError, UserInputError, WeightsUnavailableError
from convscope.recorder import RecordingError
from convscope.zoo import imagenet_classes


def test_offline_default_classifies_bundled_images(default_subject):
    preds = default_subject.predict([data.chelsea(), data.coffee()], k=5)
    # Chelsea is a tabby: tiger cat, Egyptian cat and tabby share 0.9 of the probability
    assert set(preds.names(0)[:3]) == {"tiger cat", "Egyptian cat", "tabby"}
    assert preds.probs[0, :3].sum() > 0.8
    assert preds.indices[1, 0] == 967
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
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in ref.model.state_dict().items()}}, path
    )
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
    assert "offline" in msg and "--weights none" in msg and "\n" not in msg


def test_unknown_model_suggests_sources():
    with pytest.raises(UserInputError, match="torchvision:resnet18"):
        convscope.load("resnet18")
    with pytest.raises(UserInputError, match="resnet18"):
        convscope.load("torchvision:resnet1")


def test_wrap_any_module():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
    )
    subject = convscope.Subject.wrap(model, labels=["no", "yes"], input_size=32)
    assert subject.layer("0").shape == (4, 30, 30)
    preds = subject.predict(torch.zeros(1, 3, 32, 32), k=2)
    assert set(preds.names(0)) == {"no", "yes"}


# --- preprocessing: each source's own evaluation transform, pixel for pixel ------------------


def _photos():
    """Real photos, odd aspect ratios (tall, wide, smaller than the crop) and grayscale."""
    from PIL import Image

    cat = Image.fromarray(data.chelsea())
    return {
        "chelsea": cat,  # 451 x 300
        "coffee": Image.fromarray(data.coffee()),  # 600 x 400
        "tall": cat.crop((100, 0, 197, 300)),  # 97 x 300
        "wide": Image.fromarray(data.rocket()).crop((0, 200, 640, 311)),  # 640 x 111
        "small": cat.resize((131, 87)),  # below every crop size
        "camera_gray": Image.fromarray(data.camera()),  # mode L
        "moon_gray": Image.fromarray(data.moon()).crop((0, 0, 512, 301)),
    }


def _torchvision_reference(name):
    import torchvision.models as tvm

    return tvm.get_model_weights(name).DEFAULT.transforms()


def _timm_reference(subject):
    import timm

    return timm.data.create_transform(**timm.data.resolve_data_config({}, model=subject.model))


def _lite0_reference(_subject):
    # EfficientNet-Lite's reference evaluation: short side to 256, central 224 crop (0.875).
    from torchvision import transforms as T

    return T.Compose(
        [T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
    )


@pytest.mark.parametrize(
    "spec",
    [
        "efficientnet_lite0",
        "torchvision:alexnet",  # 256 / 224 bilinear
        "torchvision:efficientnet_b0",  # 256 / 224 bicubic
        "torchvision:efficientnet_b1",  # 255 / 240
        "torchvision:mobilenet_v3_small",  # 256 / 224
        "torchvision:regnet_y_400mf",  # 232 / 224
        "timm:resnet18",  # crop_pct 0.95, bicubic
        "timm:mobilenetv3_small_100",  # crop_pct 0.875
        "timm:convnextv2_nano.fcmae_ft_in22k_in1k_384",  # crop_mode squash, 384
    ],
)
def test_preprocessing_is_the_library_eval_transform(spec, default_subject):
    if spec == "efficientnet_lite0":
        subject, reference = default_subject, _lite0_reference(default_subject)
    else:
        subject = convscope.load(spec, weights=None)
        source, name = spec.split(":", 1)
        reference = _torchvision_reference(name) if source == "torchvision" else _timm_reference(subject)
    for key, img in _photos().items():
        ours = subject.load_images(img)[0].cpu()
        theirs = reference(img.convert("RGB"))
        assert ours.shape == theirs.shape, (spec, key)
        assert torch.equal(ours, theirs), (spec, key, (ours - theirs).abs().max().item())
        # the geometry alone, as patches and the device decoder use it, is the same picture
        seen = TF.pil_to_tensor(subject.preprocess.resize_only(img.convert("RGB"))).float() / 255
        assert torch.allclose(subject.preprocess.normalize(seen), theirs, atol=1e-6), (spec, key)


@pytest.mark.parametrize(
    "config",
    [
        {"input_size": (3, 224, 224), "crop_pct": 0.95, "crop_mode": "center", "interpolation": "bicubic"},
        {"input_size": (3, 224, 224), "crop_pct": 0.9, "crop_mode": "squash", "interpolation": "bilinear"},
        {"input_size": (3, 288, 288), "crop_pct": 1.0, "crop_mode": "squash", "interpolation": "bicubic"},
        {"input_size": (3, 160, 224), "crop_pct": 0.875, "crop_mode": "center", "interpolation": "bilinear"},
        {"input_size": (3, 256, 256), "crop_pct": None, "crop_mode": "center", "interpolation": "bilinear"},
    ],
)
def test_timm_configs_match_create_transform(config):
    import timm

    full = {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3), **config}
    ours, theirs = convscope.Preprocess.from_timm(full), timm.data.create_transform(**full)
    for key, img in _photos().items():
        img = img.convert("RGB")
        a, b = ours(img), theirs(img)
        assert a.shape == b.shape and torch.equal(a, b), (config, key)


@pytest.mark.parametrize(
    "pre",
    [
        "default",
        convscope.Preprocess(size=(240, 240), resize=255, interpolation="bicubic"),
        convscope.Preprocess(size=(224, 224), resize=(248, 248), mode="squash"),
        convscope.Preprocess(size=(160, 224), resize=(182, 256)),
        convscope.Preprocess(size=(96, 128), resize=None, mode="squash"),
    ],
)
@pytest.mark.parametrize("original", [(451, 300), (97, 300), (640, 111), (131, 87)])
def test_input_to_original_finds_a_marked_pixel(pre, original):
    """A bright square drawn in the original lands, in the model input, where
    input_to_original says it came from (to within a pixel of the resize)."""
    import numpy as np
    from PIL import Image

    from convscope.zoo import default_preprocess

    pre = default_preprocess() if pre == "default" else pre
    ow, oh = original
    h, w = pre.size
    for fy, fx in ((0.5, 0.5), (0.4, 0.45), (0.55, 0.6)):
        # a mark at fractional position (fy, fx) of the model input, found in the original
        y0, x0, y1, x1 = pre.input_to_original((fy * h - 2, fx * w - 2, fy * h + 2, fx * w + 2), (ow, oh))
        img = np.zeros((oh, ow, 3), np.uint8)
        img[max(0, int(y0)) : int(np.ceil(y1)), max(0, int(x0)) : int(np.ceil(x1))] = 255
        seen = np.asarray(pre.resize_only(Image.fromarray(img))).mean(2)
        assert seen.max() > 0
        ys, xs = np.nonzero(seen > 0.25 * seen.max())
        cy, cx = (
            (seen[ys, xs] * ys).sum() / seen[ys, xs].sum(),
            (seen[ys, xs] * xs).sum() / seen[ys, xs].sum(),
        )
        tol = 1.0 + max(h / oh, w / ow)  # a marked original pixel spans this many input pixels
        assert abs(cy + 0.5 - fy * h) < tol and abs(cx + 0.5 - fx * w) < tol, (cy, cx, fy * h, fx * w)


# --- class names ------------------------------------------------------------------------------


def test_unit_names_are_the_classes_of_the_classifier(default_subject, alexnet):
    assert default_subject.unit_name("classifier", 285) == "Egyptian cat"
    assert default_subject.unit_name("classifier", 1000) is None
    assert default_subject.unit_name("conv_head", 285) is None  # 1280 unnamed channels
    assert default_subject.unit_name("no.such.layer", 0) is None
    # the Linear and the Sequential that returns its output; an alias too; not the 4096 fc7
    assert alexnet.unit_name("classifier.6", 340) == "zebra"
    assert alexnet.unit_name("classifier", 340) == "zebra"
    assert alexnet.unit_name("fc8", 340) == "zebra"
    assert alexnet.unit_name("classifier.4", 340) is None


def test_unit_names_need_labels_and_the_last_layer():
    from convscope.testing import tiny_subject

    tiny = tiny_subject(num_classes=16)  # conv2 also has 16 channels, but runs before fc
    assert tiny.unit_name("fc", 3) == "class3"
    assert tiny.unit_name("conv2", 3) is None
    tiny.labels = None
    tiny.__dict__.pop("_class_layers", None)
    assert tiny.unit_name("fc", 3) is None


def test_class_index_takes_names(default_subject):
    c = default_subject.class_index
    assert c(285) == c("285") == c("Egyptian cat") == c("egyptian CAT") == c("Egyptian_cat") == 285
    assert c("zebra") == 340 and c(" Zebra ") == 340
    assert c("crane") == 517 and c("crane bird") == 134
    with pytest.raises(UserInputError, match="'zebra'"):
        c("zebar")
    with pytest.raises(UserInputError, match="'tiger cat'.*'Egyptian cat'"):
        c("cat")
    with pytest.raises(UserInputError, match="out of range.*0..999"):
        c(1000)
    with pytest.raises(UserInputError, match="out of range"):
        c("-1")


def test_class_index_of_folder_style_and_repeated_names():
    from convscope.testing import tiny_subject

    tiny = tiny_subject(num_classes=4)
    tiny.labels = ["golden_retriever", "Tabby  Cat", "crane", "crane"]
    c = tiny.class_index
    assert c("golden_retriever") == c("Golden Retriever") == c("golden  RETRIEVER") == 0
    assert c("tabby_cat") == c("Tabby  Cat") == 1
    with pytest.raises(UserInputError, match="'golden_retriever'"):
        c("golden retreiver")
    with pytest.raises(UserInputError, match=r"names 2 classes \(2, 3\).*class:2"):
        c("crane")
    assert c("3") == 3


def test_class_index_without_names():
    from convscope.testing import tiny_subject

    tiny = tiny_subject(num_classes=4)
    tiny.labels = None
    assert tiny.class_index("2") == 2
    with pytest.raises(UserInputError, match="no class names"):
        tiny.class_index("zebra")
