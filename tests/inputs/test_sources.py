from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.errors import DataError
from convscope.imageops import read_image
from convscope.inputs.batches import Batches
from convscope.inputs.sources import open_images
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
        "cats",
        "cats",
        "cats",
        "cats",
        "dogs",
        "dogs",
        "dogs",
    ]
    batches = Batches(src, batch_size=3)
    got = torch.cat([b.indices for b in batches]).tolist()
    assert [names[i] for i in got] == ["cats/a.jpg", "cats/e.png", "cats/f.png", "dogs/deep/d.jpg"]
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
        for name, data in [
            ("split/b/x.jpg", _jpeg((0, 0, 255))),
            ("split/a/y.jpg", _jpeg((255, 0, 0))),
            ("split/a/bad.jpg", b"garbage"),
        ]:
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


# --- every Pillow mode to RGB, against reference conversions in numpy ----------------------

GREY16 = np.linspace(0, 65535, 96).round().astype(np.uint16).reshape(8, 12)  # mostly > 255


def _saved(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _tiff(arr: np.ndarray, **kw) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


def _grey(v) -> np.ndarray:
    return np.repeat(np.asarray(v, np.float64)[..., None], 3, axis=-1)


def _on_white(rgb, alpha) -> np.ndarray:
    a = np.asarray(alpha, np.float64)[..., None] / 255.0
    return np.asarray(rgb, np.float64) * a + 255.0 * (1.0 - a)


def _mode_cases():
    """(id, what read_image gets, the mode Pillow opens it in, reference RGB, tolerance)."""
    rng = np.random.default_rng(16)
    hi = _grey(GREY16 >> 8)  # the documented 16-bit rule: the high byte
    cases = [
        ("I;16 png", _saved(Image.fromarray(GREY16), "PNG"), "I;16", hi, 0),
        ("I;16B tiff", _tiff(GREY16.astype(">u2"), byteorder=">"), "I;16B", hi, 0),
        ("I;16L", Image.frombytes("I;16L", (12, 8), GREY16.astype("<u2").tobytes()), "I;16L", hi, 0),
        ("I;16N", Image.frombytes("I;16N", (12, 8), GREY16.astype("=u2").tobytes()), "I;16N", hi, 0),
        ("I pgm 16-bit", b"P5 12 8 65535\n" + GREY16.astype(">u2").tobytes(), "I", hi, 0),
        ("RGB 16-bit tiff", _tiff(np.stack([GREY16] * 3, -1), photometric="rgb"), "RGB", hi, 0),
    ]
    wide = rng.integers(-5000, 100_000, (8, 12)).astype(np.int32)
    cases.append(("I int32 tiff", _tiff(wide), "I", _grey(wide.clip(0, 65535) >> 8), 0))
    flt = rng.uniform(-0.2, 1.2, (8, 12)).astype(np.float32)
    flt[0, :3] = [np.nan, 0.5, 1.0]
    ref = np.round(np.nan_to_num(flt.astype(np.float64), nan=0.0).clip(0, 1) * 255)
    cases.append(("F tiff", _tiff(flt), "F", _grey(ref), 0))
    bits = rng.random((8, 12)) > 0.5
    cases.append(("1 png", _saved(Image.fromarray(bits), "PNG"), "1", _grey(bits * 255.0), 0))
    lum = rng.integers(0, 256, (8, 12), dtype=np.uint8)
    alpha = rng.integers(0, 256, (8, 12), dtype=np.uint8)
    cases.append(("L png", _saved(Image.fromarray(lum), "PNG"), "L", _grey(lum), 0))
    la = Image.merge("LA", (Image.fromarray(lum), Image.fromarray(alpha)))
    cases.append(("LA png", _saved(la, "PNG"), "LA", _on_white(_grey(lum), alpha), 1))
    pre = (lum.astype(np.uint16) * alpha // 255).astype(np.uint8)  # premultiplied by alpha
    cases.append(
        (
            "La tiff",
            _tiff(
                np.stack([pre, alpha], -1), photometric="minisblack", extrasamples=[1], planarconfig="contig"
            ),
            "La",
            _grey(pre + 255.0 - alpha),
            2,
        )
    )
    rgb = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
    cases.append(("RGB png", _saved(Image.fromarray(rgb), "PNG"), "RGB", rgb, 0))
    rgba = Image.fromarray(np.concatenate([rgb, alpha[..., None]], -1))
    cases.append(("RGBA png", _saved(rgba, "PNG"), "RGBA", _on_white(rgb, alpha), 1))
    prem = (rgb.astype(np.uint16) * alpha[..., None] // 255).astype(np.uint8)
    rgba_p = Image.frombytes("RGBa", (12, 8), np.concatenate([prem, alpha[..., None]], -1).tobytes())
    cases.append(("RGBa", rgba_p, "RGBa", prem + 255.0 - alpha[..., None], 2))
    # palette with per-entry alpha (PNG tRNS), and the same as PA
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    pal_alpha = rng.integers(0, 256, 16, dtype=np.uint8)
    idx = rng.integers(0, 16, (8, 12), dtype=np.uint8)
    pimg = Image.frombytes("P", (12, 8), idx.tobytes())
    pimg.putpalette(palette.ravel().tolist())
    want = _on_white(palette[idx], pal_alpha[idx])
    cases.append(("P png transparency", _saved(pimg, "PNG", transparency=pal_alpha.tobytes()), "P", want, 1))
    pa = pimg.convert("PA")
    pa.putalpha(Image.fromarray(pal_alpha[idx]))
    cases.append(("PA", pa, "PA", want, 1))
    # a transparency colour key: those pixels become white
    keyed = lum.copy()
    keyed[2:4, 2:6] = 77
    mask = (keyed == 77)[..., None]
    cases.append(
        (
            "L png colour key",
            _saved(Image.fromarray(keyed), "PNG", transparency=77),
            "L",
            np.where(mask, 255.0, _grey(keyed)),
            0,
        )
    )
    krgb = rgb.copy()
    krgb[1:3, 1:5] = (10, 20, 30)
    kmask = (krgb == (10, 20, 30)).all(-1, keepdims=True)
    cases.append(
        (
            "RGB png colour key",
            _saved(Image.fromarray(krgb), "PNG", transparency=(10, 20, 30)),
            "RGB",
            np.where(kmask, 255.0, krgb),
            0,
        )
    )
    k16 = GREY16.copy()
    k16[0, :4] = 1000
    cases.append(
        (
            "I;16 png colour key",
            _saved(Image.fromarray(k16), "PNG", transparency=1000),
            "I;16",
            np.where((k16 == 1000)[..., None], 255.0, _grey(k16 >> 8)),
            0,
        )
    )
    cmyk = rng.integers(0, 256, (8, 12, 4), dtype=np.uint8).astype(np.float64)
    ref = np.round((255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255)
    cmyk_img = Image.frombytes("CMYK", (12, 8), cmyk.astype(np.uint8).tobytes())
    cases.append(("CMYK tiff", _saved(cmyk_img, "TIFF"), "CMYK", ref, 1))
    ycc = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
    y, cb, cr = (ycc[..., i].astype(np.float64) for i in range(3))
    ref = (
        np.stack(
            [
                y + 1.402 * (cr - 128),
                y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                y + 1.772 * (cb - 128),
            ],
            -1,
        )
        .round()
        .clip(0, 255)
    )  # JFIF
    ycc_img = Image.frombytes("YCbCr", (12, 8), ycc.tobytes())
    cases.append(("YCbCr tiff", _saved(ycc_img, "TIFF"), "YCbCr", ref, 1))
    cases.append(_lab_case(rng))
    hsv = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
    import colorsys

    ref = np.array([[colorsys.hsv_to_rgb(*(p / 255.0)) for p in row] for row in hsv]) * 255
    cases.append(("HSV", Image.frombytes("HSV", (12, 8), hsv.tobytes()), "HSV", ref, 1))
    return cases


def _lab_case(rng):
    """In-gamut CIE L*a*b* colours in a TIFF (a*, b* as signed bytes), against scikit-image."""
    import skimage.color

    srgb = rng.uniform(0.15, 0.85, (8, 12, 3))
    lab = skimage.color.rgb2lab(srgb)
    raw = np.stack([np.round(lab[..., 0] * 255 / 100), np.round(lab[..., 1]), np.round(lab[..., 2])], -1)
    ref = skimage.color.lab2rgb(np.stack([raw[..., 0] * 100 / 255, raw[..., 1], raw[..., 2]], -1)) * 255
    data = np.stack(
        [
            raw[..., 0].astype(np.uint8),
            raw[..., 1].astype(np.int8).view(np.uint8),
            raw[..., 2].astype(np.int8).view(np.uint8),
        ],
        -1,
    )
    return ("LAB tiff", _tiff(data, photometric="cielab"), "LAB", np.round(ref), 1)


MODE_CASES = _mode_cases()


@pytest.mark.parametrize(
    "payload, mode, want, tol", [c[1:] for c in MODE_CASES], ids=[c[0] for c in MODE_CASES]
)
def test_every_mode_converts_like_the_reference(payload, mode, want, tol):
    opened = payload if isinstance(payload, Image.Image) else Image.open(io.BytesIO(payload))
    assert opened.mode == mode  # the case tests the mode it names
    got = read_image(payload)
    assert got.mode == "RGB" and got.size == (12, 8)
    diff = np.abs(np.asarray(got, np.float64) - want)
    assert diff.max() <= tol, f"off by {diff.max()} levels"


# --- links that lead nowhere, empty sources, names that are not UTF-8 ----------------------


def test_looping_and_dangling_links_are_skipped_and_counted(tmp_path):
    (tmp_path / "a.jpg").write_bytes(_jpeg((255, 0, 0)))
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")  # a link to itself
    (tmp_path / "dangling.jpg").symlink_to("missing.jpg")
    (tmp_path / "good_link.jpg").symlink_to("a.jpg")
    src = open_images(tmp_path, transform=PRE)
    assert [r.name for r in src.records] == ["a.jpg", "dangling.jpg", "good_link.jpg", "loop.jpg"]
    batches = Batches(src, batch_size=8)
    (batch,) = list(batches)
    assert batch.indices.tolist() == [0, 2]
    reasons = dict(batches.report.items)
    assert set(reasons) == {"loop.jpg", "dangling.jpg"}
    assert "symbolic links" in reasons["loop.jpg"] and str(tmp_path) not in reasons["loop.jpg"]


def test_looping_links_in_a_tar_are_skipped_and_counted(tmp_path):
    path = tmp_path / "links.tar"
    with tarfile.open(path, "w") as tf:
        data = _jpeg((0, 255, 0))
        info = tarfile.TarInfo("imgs/a.jpg")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        for name, target in [
            ("imgs/loop.jpg", "loop.jpg"),
            ("imgs/b.jpg", "a.jpg"),
            ("imgs/gone.jpg", "nothing.jpg"),
        ]:
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, target
            tf.addfile(link)
    src = open_images(path, transform=PRE)
    batches = Batches(src, batch_size=8)
    (batch,) = list(batches)
    assert [src.records[i].name for i in batch.indices.tolist()] == ["imgs/a.jpg", "imgs/b.jpg"]
    reasons = dict(batches.report.items)
    assert set(reasons) == {"imgs/loop.jpg", "imgs/gone.jpg"} and "loop" in reasons["imgs/loop.jpg"]


def test_sources_without_any_file_are_a_one_line_error(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / ".DS_Store").write_bytes(b"hidden")
    with pytest.raises(DataError, match=r"no images in folder .*empty.*: it holds no file") as e:
        open_images(empty)
    assert "\n" not in str(e.value) and "hidden files are ignored" in str(e.value)
    (empty / "sub" / "x.jpg").write_bytes(_jpeg((1, 2, 3)))
    assert len(open_images(empty)) == 1
    with pytest.raises(DataError, match=r"no file name matches the pattern 'test/\*'"):
        open_images(empty, pattern="test/*")
    listing = tmp_path / "list.txt"
    listing.write_text("# nothing yet\n\n")
    with pytest.raises(DataError, match="list file .* names no file"):
        open_images(listing)
    archive = tmp_path / "none.tar"
    tarfile.open(archive, "w").close()
    with pytest.raises(DataError, match="archive .* holds no file"):
        open_images(archive)
    with pytest.raises(DataError, match="the list of paths given: it is empty"):
        open_images([])


def _non_utf8(name: str) -> str:
    """A file name with a byte that is not UTF-8, as os.listdir gives it (surrogate-escaped)."""
    return os.fsdecode(name.encode().replace(b"e.jpg", b"\xe9.jpg"))


def test_non_utf8_names_open_in_folders_lists_and_tars(tmp_path):
    name = _non_utf8("cafe.jpg")  # b"caf\xe9.jpg"
    assert name == "caf\udce9.jpg"
    folder = tmp_path / "photos"
    (folder / "cls").mkdir(parents=True)
    with open(os.fsencode(folder / "cls") + b"/caf\xe9.jpg", "wb") as f:  # the raw bytes
        f.write(_jpeg((250, 10, 10)))
    (folder / "cls" / "ok.jpg").write_bytes(_jpeg((10, 10, 250)))
    (folder / "cls" / _non_utf8("bade.jpg")).write_bytes(b"broken")
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"photos/cls/caf\xe9.jpg\nphotos/cls/ok.jpg\n")
    archive = tmp_path / "photos.tar"
    with tarfile.open(archive, "w") as tf:  # PAX: the raw name travels as hdrcharset=BINARY
        tf.add(folder / "cls", arcname="cls")
    gnu = tmp_path / "photos_gnu.tar.gz"
    with tarfile.open(gnu, "w:gz", format=tarfile.GNU_FORMAT) as tf:
        tf.add(folder / "cls", arcname="cls")
    want = {
        "folder": f"cls/{name}",
        "list": os.fspath(tmp_path / "photos" / "cls" / name),
        "tar": f"cls/{name}",
        "gnu tar": f"cls/{name}",
    }
    for kind, where in [("folder", folder), ("list", listing), ("tar", archive), ("gnu tar", gnu)]:
        src = open_images(where, transform=PRE)
        names = [r.name for r in src.records]
        assert want[kind] in names, kind  # lossless: the same str os.listdir gives
        assert os.fsencode(want[kind]).endswith(b"caf\xe9.jpg")
        for workers in (0, 2):
            batches = Batches(src, batch_size=8, workers=workers)
            got = {names[i]: img for b in batches for i, img in zip(b.indices.tolist(), b.images)}
            red = PRE.denormalize(got[want[kind]])
            assert red[0].mean() > 0.9 and red[2].mean() < 0.1, kind
        if kind != "list":
            assert batches.report.count == 1
            assert "bad\\xe9.jpg" in batches.report.summary()  # printable
            batches.report.summary().encode("utf-8")  # no lone surrogates left
    # a list file names the same files, whatever bytes they have
    assert len(open_images(listing)) == 2
