from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from convscope.errors import UserInputError
from convscope.inputs.batches import Batches, collate
from convscope.inputs.decode import decode_batch, jpeg_decoder
from convscope.inputs.sources import open_images
from convscope.preprocess import Preprocess

BACKENDS = [
    "torchvision",
    pytest.param(
        "torchcodec",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("torchcodec") is None, reason="TorchCodec not installed"
        ),
    ),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """JPEGs (colour, grey, EXIF-rotated, large), a PNG with transparency, a GIF, and two files
    that are no images."""
    root = tmp_path_factory.mktemp("decode")
    cat = Image.fromarray(skimage.data.chelsea())
    cat.save(root / "cat.jpg", quality=90)
    Image.fromarray(skimage.data.camera()).save(root / "grey.jpg")
    exif = cat.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    cat.save(root / "rotated.jpg", exif=exif.tobytes(), quality=90)
    Image.fromarray(skimage.data.astronaut()).resize((1600, 1200)).save(root / "large.jpg", quality=85)
    rgba = np.zeros((60, 80, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[20:40, 20:60, 3] = 255  # a red box on a transparent (white) background
    Image.fromarray(rgba).save(root / "alpha.png")
    Image.fromarray(skimage.data.coffee()).convert("P").save(root / "palette.gif")
    (root / "truncated.jpg").write_bytes((root / "cat.jpg").read_bytes()[:2000])
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "pre", [Preprocess(size=(224, 224), resize=256), Preprocess(size=(96, 128), resize=None, mode="squash")]
)
def test_device_decoding_matches_pil_within_one_level(folder, backend, pre, monkeypatch):
    import convscope.inputs.decode as D

    monkeypatch.setattr(D, "jpeg_decoder", lambda b=None, _j=jpeg_decoder: _j(backend))
    # torchvision leaves orientation to convscope (its CUDA decoder ignores it): tested here
    src = open_images(folder, transform=pre)
    ref_b, dev_b = Batches(src, 16), Batches(src, 16, decode="device")
    (ref,), (dev,) = list(ref_b), list(dev_b)
    assert ref.indices.tolist() == dev.indices.tolist() and len(ref.indices) == 6
    assert ref_b.report.count == dev_b.report.count == 2
    assert {n for n, _ in dev_b.report.items} == {"notes.txt", "truncated.jpg"}
    a = pre.denormalize(ref.images) * 255
    b = pre.denormalize(dev.images) * 255
    diff = (a - b).abs()
    assert diff.max() <= 1.0 + 1e-3  # one grey level at most (rounding of two resamplers)
    assert diff.mean() < 0.3


def test_custom_transforms_cannot_be_reproduced_on_the_device(folder):
    src = open_images(folder, transform=lambda img: torch.zeros(3, 8, 8))
    with pytest.raises(UserInputError, match="custom transform"):
        Batches(src, 4, decode="device")


def test_samples_and_equal_sizes(folder):
    pre = Preprocess(size=(64, 64), resize=None, mode="squash")
    src = open_images("convscope:samples", transform=pre, pattern="chelsea*")
    (ref,), (dev,) = list(Batches(src, 8)), list(Batches(src, 8, decode="device"))
    assert (pre.denormalize(ref.images) - pre.denormalize(dev.images)).abs().max() * 255 <= 1.001
    # equal-sized images are resized together and land in their own rows
    cat = torch.frombuffer(bytearray((folder / "cat.jpg").read_bytes()), dtype=torch.uint8)
    grey = torch.frombuffer(bytearray((folder / "grey.jpg").read_bytes()), dtype=torch.uint8)
    x, order, bad = decode_batch([(cat, 5), (grey, 7), (cat, 9)], pre, torch.device("cpu"))
    assert order == [5, 7, 9] and not bad
    assert torch.equal(x[0], x[2]) and not torch.equal(x[0], x[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", BACKENDS)
def test_nvjpeg_matches_cpu(folder, backend, monkeypatch):
    import convscope.inputs.decode as D

    monkeypatch.setattr(D, "jpeg_decoder", lambda b=None, _j=jpeg_decoder: _j(backend))
    pre = Preprocess(size=(224, 224), resize=256)
    src = open_images(folder, transform=pre)
    (ref,), (dev,) = list(Batches(src, 16)), list(Batches(src, 16, decode="device", device="cuda"))
    assert dev.images.is_cuda and ref.indices.tolist() == dev.indices.tolist()
    diff = (pre.denormalize(ref.images) - pre.denormalize(dev.images.cpu())).abs() * 255
    # per image: nvJPEG's IDCT differs slightly from libjpeg-turbo's; a wrong orientation would
    # differ by tens of levels
    assert diff.flatten(1).mean(1).max() < 2.0
    (pinned,) = list(Batches(src, 16, pin_memory=True))
    assert pinned.images.is_pinned()


@pytest.mark.parametrize("code", range(1, 9))
def test_orientation_matches_pil(code):
    from PIL import ImageOps

    from convscope.inputs.decode import orient

    arr = np.random.default_rng(code).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    img.getexif()[0x0112] = code  # exif_transpose reads this cached tag
    want = np.asarray(ImageOps.exif_transpose(img))
    got = orient(torch.from_numpy(arr).permute(2, 0, 1), code).permute(1, 2, 0).numpy()
    assert np.array_equal(got, want)


def test_rotated_jpegs_travel_as_bytes_and_are_oriented(folder):
    from convscope.inputs.decode import RawImages, exif_orientation

    src = open_images(folder)
    raw = RawImages(src)
    by_name = {r.name: raw[r.index][0] for r in src.records}
    assert by_name["rotated.jpg"].dim() == 1  # bytes, no PIL decoding in the worker
    assert exif_orientation(by_name["rotated.jpg"].numpy().tobytes()) == 6
    assert exif_orientation(by_name["cat.jpg"].numpy().tobytes()) == 1
    pre = Preprocess(size=(451, 300), resize=None, mode="squash")
    for backend in ["torchvision"] + (["torchcodec"] if importlib.util.find_spec("torchcodec") else []):
        x, order, bad = decode_batch([(by_name["rotated.jpg"], 0)], pre, torch.device("cpu"), backend)
        ref = pre(Image.open(folder / "rotated.jpg").convert("RGB").transpose(Image.ROTATE_270))
        assert (x[0] - ref).abs().max() < 0.05, backend


def test_sources_pickle_for_spawned_workers(folder, tmp_path):
    import pickle

    listing = tmp_path / "list.txt"
    listing.write_text(f"{folder / 'cat.jpg'}\n{folder / 'grey.jpg'}\n")
    pre = Preprocess(size=(32, 32), resize=None, mode="squash")
    for where in (folder, listing):
        src = pickle.loads(pickle.dumps(open_images(where, transform=pre)))
        assert src[0][2] is None
    src = open_images(listing, transform=pre)
    loader = torch.utils.data.DataLoader(
        src, batch_size=2, num_workers=1, multiprocessing_context="spawn", collate_fn=collate
    )
    (batch,) = list(loader)
    assert batch.indices.tolist() == [0, 1] and not batch.skipped


def test_file_bytes_travel_from_worker_processes(folder):
    pre = Preprocess(size=(48, 48), resize=None, mode="squash")
    src = open_images(folder, transform=pre)
    inline = list(Batches(src, 4, decode="device"))
    spawned_b = Batches(src, 4, workers=2, decode="device")
    spawned = list(spawned_b)
    assert [b.indices.tolist() for b in inline] == [b.indices.tolist() for b in spawned]
    assert all(torch.equal(a.images, b.images) for a, b in zip(inline, spawned))
    assert spawned_b.report.count == 2


def test_device_decoding_converts_every_mode_like_read_image(tmp_path):
    """16-bit, float, premultiplied, keyed, L*a*b* and CMYK files through the device path: the
    same pixels as the documented reference conversions (the image size is the model's, so no
    resampling hides a wrong conversion)."""
    from tests.inputs.test_sources import MODE_CASES

    suffix = {"png": ".png", "tiff": ".tif", "pgm": ".pgm"}
    want = {}
    for case_id, payload, _, ref, tol in MODE_CASES:
        kind = case_id.split()[-1]
        if isinstance(payload, bytes) and kind in suffix:
            name = case_id.replace(" ", "_").replace(";", "") + suffix[kind]
            (tmp_path / name).write_bytes(payload)
            want[name] = (ref, tol)
    rng = np.random.default_rng(3)
    cmyk = Image.frombytes("CMYK", (12, 8), rng.integers(0, 256, (8, 12, 4), dtype=np.uint8).tobytes())
    cmyk.save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    pre = Preprocess(size=(8, 12), resize=None, mode="squash")
    src = open_images(tmp_path, transform=pre)
    dev_b = Batches(src, 64, decode="device")
    ((ref_batch,), (dev,)) = list(Batches(src, 64)), list(dev_b)
    assert dev_b.report.count == 0 and len(dev.indices) == len(src) == len(want) + 1
    got = (pre.denormalize(dev.images) * 255).permute(0, 2, 3, 1).double().numpy()
    names = [src.records[i].name for i in dev.indices.tolist()]
    for row, name in zip(got, names):
        if name in want:
            ref, tol = want[name]
            assert np.abs(row - ref).max() <= tol + 1e-3, name
    # the CMYK JPEG: the batch decoder's colours are the ones PIL gives on the CPU
    cpu = (pre.denormalize(ref_batch.images) * 255).permute(0, 2, 3, 1).double().numpy()
    k = names.index("cmyk.jpg")
    assert np.abs(got[k] - cpu[k]).max() <= 1 + 1e-3
