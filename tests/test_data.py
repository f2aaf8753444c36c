from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.data import Batches, open_images, read_image
from convscope.errors import DataError
from convscope.preprocess import Preprocess

PRE = Preprocess(size=(16, 16), resize=None, mode="squash")


def _jpeg(color, size=(20, 12), exif_orientation=None) -> bytes:
    img = Image.new("RGB", size, color)
    buf = io.BytesIO()
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        img.save(buf, "JPEG", exif=exif.tobytes())
    else:
        img.save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture()
def messy_folder(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs" / "deep").mkdir(parents=True)
    (tmp_path / "cats" / "a.jpg").write_bytes(_jpeg((255, 0, 0)))
    (tmp_path / "cats" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    good = _jpeg((0, 0, 255))
    (tmp_path / "dogs" / "c.jpg").write_bytes(good[: len(good) // 2])  # truncated
    (tmp_path / "dogs" / "deep" / "d.jpg").write_bytes(_jpeg((0, 255, 0)))
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    (tmp_path / "dogs" / ".hidden.jpg").write_bytes(_jpeg((0, 0, 0)))
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "cats" / "e.png")
    Image.new("L", (8, 8), 100).save(tmp_path / "cats" / "f.png")
    return tmp_path


def test_folder_labels_order_and_skips(messy_folder):
    src = open_images(messy_folder, transform=PRE)
    names = [r.name for r in src.records]
    assert names == sorted(names) and "dogs/.hidden.jpg" not in names
    assert src.classes == ["cats", "dogs"]
    assert [src.classes[r.label] for r in src.records] == [
        "cats", "cats", "cats", "cats", "dogs", "dogs", "dogs"]
    batches = Batches(src, batch_size=3)
    got = torch.cat([b.indices for b in batches]).tolist()
    assert [names[i] for i in got] == ["cats/a.jpg", "cats/e.png", "cats/f.png",
                                       "dogs/deep/d.jpg"]
    reasons = dict(batches.report.items)
    assert set(reasons) == {"cats/b.png", "dogs/c.jpg", "dogs/notes.txt"}
    assert reasons["dogs/notes.txt"] == "not an image"
    assert "skipped 3 files" in batches.report.summary()


def test_workers_give_the_same_batches(messy_folder):
    src = open_images(messy_folder, transform=PRE)
    one = list(Batches(src, batch_size=2, workers=0))
    two_b = Batches(src, batch_size=2, workers=2)
    two = list(two_b)
    assert [b.indices.tolist() for b in one] == [b.indices.tolist() for b in two]
    assert all(torch.equal(a.images, b.images) for a, b in zip(one, two))
    assert two_b.report.count == 3


def test_image_modes_become_rgb(messy_folder):
    rgba = read_image(messy_folder / "cats" / "e.png")
    assert rgba.mode == "RGB" and rgba.getpixel((0, 0)) == (255, 255, 255)  # alpha on white
    gray = read_image(messy_folder / "cats" / "f.png")
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (100, 100, 100)


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rot.jpg"
    path.write_bytes(_jpeg((10, 200, 10), size=(20, 12), exif_orientation=6))  # rotate 90
    assert read_image(path).size == (12, 20)


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_tar_archives(tmp_path, mode):
    path = tmp_path / ("imgs.tar" + (".gz" if mode.endswith("gz") else ""))
    with tarfile.open(path, mode) as tf:
        for name, data in [("split/b/x.jpg", _jpeg((0, 0, 255))), ("split/a/y.jpg", _jpeg((255, 0, 0))),
                           ("split/a/bad.jpg", b"garbage")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    src = open_images(path, transform=PRE)
    assert [r.name for r in src.records] == ["split/a/bad.jpg", "split/a/y.jpg", "split/b/x.jpg"]
    assert src.classes == ["a", "b"]
    batches = Batches(src, batch_size=8, workers=2)
    (batch,) = list(batches)
    assert batch.indices.tolist() == [1, 2]
    red = PRE.denormalize(batch.images[0])
    assert red[0].mean() > 0.9 and red[2].mean() < 0.1
    assert batches.report.count == 1
    only_b = open_images(path, pattern="split/b/*")
    assert len(only_b) == 1


def test_cifar_folder(cifar_dir):
    src = open_images(cifar_dir, transform=PRE)
    assert len(src) == 100
    assert src.classes[:3] == ["airplane", "automobile", "bird"]
    labels = np.array([r.label for r in src.records])
    assert np.bincount(labels).tolist() == [10] * 10


def test_file_list_and_missing_source(tmp_path, messy_folder):
    lst = tmp_path / "list.txt"
    lst.write_text(f"{messy_folder}/cats/a.jpg\n# comment\n{messy_folder}/dogs/deep/d.jpg\n")
    src = open_images(lst, transform=PRE)
    assert len(src) == 2
    assert src.read(0).size == (20, 12)
    with pytest.raises(DataError, match="does not exist"):
        open_images(tmp_path / "nope")


def test_subset_and_resume_indices(messy_folder):
    src = open_images(messy_folder, transform=PRE)
    batches = Batches(src, batch_size=10, indices=[4, 5, 0])
    got = [b.indices.tolist() for b in batches]
    assert got == [[5, 0]]  # in the order asked; 4 (dogs/c.jpg, truncated) is skipped
    assert batches.report.items[0][0] == "dogs/c.jpg"
