"""Issue 17: fine-tuning trains and tests on the model's own preprocessing, and --limit leaves
the test split whole (--test-limit caps it)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from convscope.cli.main import main
from convscope.train import load_split
from convscope.train.loop import normalize


@pytest.fixture(scope="module")
def photo_split(tmp_path_factory):
    """train/ and test/ of two classes of odd-sized photo crops (so that the resize matters)."""
    root = tmp_path_factory.mktemp("photos")
    cat, coffee = Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())
    crops = {
        "cat": [cat.crop((i * 40, 0, 250 + i * 40, 300 - i * 30)) for i in range(5)],
        "coffee": [coffee.crop((0, i * 30, 500 - i * 50, 400)) for i in range(5)],
    }
    for cls, imgs in crops.items():
        for i, img in enumerate(imgs):
            part = "train" if i < 3 else "test"
            (root / part / cls).mkdir(parents=True, exist_ok=True)
            img.save(root / part / cls / f"{i}.png")
    return root


def test_fine_tuning_images_are_what_the_model_sees(default_subject, photo_split):
    pre = default_subject.preprocess
    tr, te = load_split(photo_split, preprocess=pre)
    assert tr.images.shape == (6, 3, 224, 224) and te.images.shape == (4, 3, 224, 224)
    files = sorted((photo_split / "train").glob("*/*.png"))
    expected = default_subject.load_images(files)
    assert torch.equal(normalize(tr.images, pre.mean, pre.std), expected)


def test_limits_per_class(photo_split):
    tr, te = load_split(photo_split, limit=1)
    assert len(tr) == 2 and len(te) == 4  # the test split stays whole
    tr, te = load_split(photo_split, limit=2, test_limit=1)
    assert len(tr) == 4 and len(te) == 2
    with pytest.raises(Exception, match="--test-limit"):
        load_split(photo_split, test_limit=0)


@pytest.fixture(scope="module")
def cifar_split(cifar_dir, tmp_path_factory):
    """train/ (7 per class) and test/ (3 per class) from the CIFAR-10 subset."""
    root = tmp_path_factory.mktemp("split")
    for cls in sorted(p.name for p in cifar_dir.iterdir()):
        files = sorted((cifar_dir / cls).iterdir())
        for part, chunk in (("train", files[:7]), ("test", files[7:])):
            (root / part / cls).mkdir(parents=True)
            for f in chunk:
                shutil.copy(f, root / part / cls / f.name)
    return root


def _tested(out):
    rows = (out / "confusion.csv").read_text().splitlines()
    return sum(int(v) for r in rows[1:] for v in r.split(",")[1:])


def test_train_limit_keeps_the_test_split(cifar_split, tmp_path):
    args = ["train", "--data", str(cifar_split), "--epochs", "1", "--limit", "5", "--batch-size", "50"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert _tested(tmp_path / "a") == 30  # all 3 test images of each class, not limit / 5


def test_finetune_uses_the_model_preprocessing(default_subject, cifar_split, tmp_path):
    out = tmp_path / "ft"
    assert (
        main(
            [
                "finetune",
                "--data",
                str(cifar_split),
                "--limit",
                "2",
                "--test-limit",
                "1",
                "--freeze",
                "9",
                "--epochs",
                "1",
                "--batch-size",
                "20",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert _tested(out / "freeze_9") == 10
    cached = {len(z["images"]): z["images"] for z in map(np.load, (out / "cache").glob("*.npz"))}
    assert cached[10].shape == (10, 3, 224, 224)  # the test images, one per class
    train = cached[20][::2]  # the first of the two of each class
    first = [sorted(d.iterdir())[0] for d in sorted((cifar_split / "train").iterdir())]
    seen = [np.asarray(default_subject.preprocess.resize_only(Image.open(f).convert("RGB"))) for f in first]
    assert np.array_equal(train, np.stack(seen).transpose(0, 3, 1, 2))
