"""The Python API can do everything the CLI does (issue 18): for each command of ``convscope
--help``, the same work through the public API, and the OUTPUTS compared (numbers, CSV/JSON
contents, saved arrays, PNG pixels where the drawing is deterministic) -- not merely that both run.

Everything runs on convscope.testing's TinyCNN (32 x 32 inputs), which the CLI loads as ``tiny``
(``convscope.zoo.load`` patched, with a spec so that an atlas can load it again), and on a dozen
small PNGs cut from the bundled photos, in two labelled folders."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import convscope
import convscope.zoo
from convscope.cli.main import main
from convscope.inputs.samples import sample_image, sample_images
from convscope.inputs.sources import open_images
from convscope.testing import tiny_subject

CLASSES = ("cats", "things")


def tiny() -> convscope.Subject:
    """The subject the CLI's ``tiny`` loads (seeded: the same weights every time)."""
    s = tiny_subject(size=32)
    s.spec = {"name": "tiny", "model": "tiny", "weights": None, "arch": None}
    return s


@pytest.fixture(scope="module", autouse=True)
def tiny_model():
    real = convscope.zoo.load

    def load(model, *args, **kwargs):
        if str(model) == "tiny":
            return tiny().to(kwargs.get("device") or "cpu")
        return real(model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(convscope.zoo, "load", load)
        yield


def _photos(root: Path, per_class: int, size: int, offset: int = 0) -> Path:
    """``per_class`` small PNGs per class under ``root/<class>/``, crops of the bundled photos."""
    photos = [img for _, img in sample_images()]
    for c, cls in enumerate(CLASSES):
        for i in range(per_class):
            img = photos[(c * per_class + i + offset) % len(photos)].convert("RGB")
            w, h = img.size
            s = min(w, h) // (2 + (i % 3))
            x0, y0 = (i * 37) % max(1, w - s), (i * 53) % max(1, h - s)
            p = root / cls / f"{cls}{i:02d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            img.crop((x0, y0, x0 + s, y0 + s)).resize((size, size)).save(p)
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return _photos(tmp_path_factory.mktemp("photos"), 6, 40)


def cli(*args, code: int | None = 0) -> str:
    """Run ``convscope ARGS`` in-process; its stdout (the exit code checked unless ``code`` is None:
    an attack that fails on the tiny model exits 1 but still writes its pictures)."""
    out = io.StringIO()
    from contextlib import redirect_stdout

    with redirect_stdout(out):
        rc = main([str(a) for a in args])
    assert code is None or rc == code, (args, out.getvalue())
    return out.getvalue()


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def same_picture(path, image: Image.Image) -> None:
    a, b = pixels(path), np.asarray(image.convert("RGB"))
    assert a.shape == b.shape
    np.testing.assert_array_equal(a, b)


def read_csv(path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(Path(path).read_text())))


# ---------------------------------------------------------------------------------------------
# layers


def test_layers(capsys):
    from convscope.layers import layer_row

    subject = tiny()
    cols = ("name", "type", "output", "units", "rf", "stride")
    shown = json.loads(cli("layers", "tiny", "--format", "json"))
    assert shown == [dict(zip(cols, layer_row(i))) for i in subject.layers]
    picked = json.loads(cli("layers", "tiny", "--format", "json", "--filter", "conv*"))
    names = set(subject.layers.select("conv*"))
    assert [r["name"] for r in picked] == [i.name for i in subject.layers if i.name in names]
    assert len(picked) >= 3


# ---------------------------------------------------------------------------------------------
# scan and what reads its atlas


SCAN = dict(k=4, directions=2, batch_size=4, threshold_sample=8, workers=0, seed=0)
SCAN_LAYERS = "conv1,conv2"


@pytest.fixture(scope="module")
def scanned(photos, tmp_path_factory):
    """The CLI's atlas of a scan, and the same scan in Python."""
    atlas = tmp_path_factory.mktemp("scan") / "atlas"
    cli(
        *("scan", "tiny", "--data", photos, "--layers", SCAN_LAYERS, "--out", atlas),
        *("--k", 4, "--directions", 2, "--batch-size", 4, "--threshold-sample", 8, "--workers", 0),
    )
    subject = tiny()
    source = open_images(photos, transform=subject.transform)
    from convscope.scan import scan

    result = scan(subject, source, SCAN_LAYERS, **SCAN)
    return atlas, subject, source, result


def test_scan(scanned):
    from convscope.atlas import Atlas

    atlas, subject, source, result = scanned
    store = Atlas.open(atlas)
    assert [r["name"] for r in store.layers()] == list(result.layers) == ["conv1", "conv2"]
    for layer in result.layers:
        for direction in (False, True):
            a, b = store.stats(layer, direction), result.stats(layer, direction)
            for field in ("mean", "std", "max", "fraction_positive", "threshold"):
                np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-5, atol=1e-6)
            units = 2 if direction else result.channels[layer]
            for u in range(units):
                for crit in ("max", "mean", "area"):
                    x, y = store.topk(layer, u, crit, direction), result.topk(layer, u, crit, direction)
                    np.testing.assert_array_equal(x.images, y.images)
                    np.testing.assert_allclose(x.scores, y.scores, rtol=1e-5, atol=1e-6)
                    np.testing.assert_array_equal(x.ys, y.ys)
                    np.testing.assert_array_equal(x.xs, y.xs)
            if direction:
                for d in range(2):
                    np.testing.assert_allclose(
                        store.direction(layer, d), result.directions[layer][d], atol=1e-7
                    )


def test_topk(scanned, tmp_path):
    from convscope.inputs.images import display_name
    from convscope.scan.patches import render_topk

    atlas, subject, source, result = scanned
    shown = json.loads(
        cli("topk", atlas, "--layers", "conv2", "--unit", 3, "--format", "json", "--out", tmp_path / "t.png")
    )
    top = result.topk("conv2", 3, "max")
    assert [r["image"] for r in shown["top"]] == top.images.tolist()
    assert [r["name"] for r in shown["top"]] == [display_name(n) for n in top.names]
    np.testing.assert_allclose([r["score"] for r in shown["top"]], top.scores, rtol=1e-5)
    assert [(r["y"], r["x"]) for r in shown["top"]] == list(zip(top.ys.tolist(), top.xs.tolist()))
    same_picture(tmp_path / "t.png", render_topk(subject, source, top))


# ---------------------------------------------------------------------------------------------
# attribution, synthesis, adversarial: one subject, images in


def test_explain(tmp_path):
    out = tmp_path / "maps"
    cli(
        *("explain", "tiny", "--data", "sample:coffee", "--data", "sample:chelsea"),
        *("--method", "saliency,gradcam,occlusion", "--layers", "conv2", "--target", "class:3"),
        *("--window", 8, "--stride", 4, "--trust", "--out", out),
    )
    subject = tiny()
    images = [sample_image("coffee"), sample_image("chelsea")]
    summary = json.loads((out / "explain.json").read_text())
    for method, options in (
        ("saliency", {}),
        ("gradcam", {"layer": "conv2"}),
        ("occlusion", {"window": 8, "stride": 4, "fill": "gray", "seed": 0}),
    ):
        amap = convscope.explain(subject, images, method, target="class:3", **options)
        saved = np.load(out / f"{method}.npz")
        np.testing.assert_allclose(saved["maps"], amap.maps, rtol=1e-5, atol=1e-7)
        assert saved["targets"].tolist() == list(amap.targets)
        for i, stem in enumerate(("coffee", "chelsea")):
            same_picture(out / f"{stem}_{method}.png", amap.to_image(i))
        from convscope.attribution import deletion_insertion, resolve_target

        x = subject.load_images(images)
        tgt = resolve_target(subject, "class:3", x)
        for i, stem in enumerate(("coffee", "chelsea")):
            entry = next(e for e in summary if e["image"] == stem and e["method"] == method)
            dele, ins = deletion_insertion(subject, x[i : i + 1], amap.maps[i : i + 1], tgt.for_image(i))
            assert entry["deletion_auc"] == pytest.approx(float(dele.auc[0]), abs=1e-6)
            assert entry["insertion_auc"] == pytest.approx(float(ins.auc[0]), abs=1e-6)


def test_visualize(tmp_path):
    from convscope.synthesis import visualize_directions, visualize_units
    from convscope.units import Direction

    opts = dict(steps=4, size=32, param="fft", seed=0)
    cli(
        "visualize",
        "tiny",
        "--layers",
        "conv2",
        "--units",
        "0-2",
        "--steps",
        4,
        "--size",
        32,
        "--out",
        tmp_path,
    )
    syn = visualize_units(tiny(), "conv2", [0, 1, 2], batch=32, **opts)
    saved = np.load(tmp_path / "conv2_units.npz")
    np.testing.assert_allclose(saved["images"], syn.images, atol=1e-6)
    np.testing.assert_allclose(saved["scores"], syn.scores, rtol=1e-5)
    same_picture(tmp_path / "conv2_units.png", syn.to_image(ncols=3))

    cli(
        "visualize",
        "tiny",
        "--layers",
        "conv2",
        "--direction",
        "random:2",
        "--steps",
        4,
        "--size",
        32,
        "--out",
        tmp_path,
    )
    subject = tiny()
    syn = visualize_directions(
        subject, Direction.random("conv2", subject.layer("conv2").units, 2, seed=0), **opts
    )
    np.testing.assert_allclose(np.load(tmp_path / "conv2_directions.npz")["images"], syn.images, atol=1e-6)


def test_classviz(tmp_path, capsys):
    from convscope.synthesis import class_model

    text = cli("classviz", "tiny", "--classes", "1,class4", "--steps", 4, "--size", 32, "--out", tmp_path)
    subject = tiny()
    syn = class_model(subject, [1, 4], l2=0.0, regularized=True, steps=4, size=32, seed=0, param="fft")
    saved = np.load(tmp_path / "classes.npz")
    np.testing.assert_allclose(saved["images"], syn.images, atol=1e-6)
    assert saved["labels"].tolist() == list(syn.labels)
    same_picture(tmp_path / "classes.png", syn.to_image(ncols=2))
    assert "class 4 (class4)" in text


def test_invert(tmp_path):
    from convscope.synthesis import invert

    text = cli(
        "invert",
        "tiny",
        "--data",
        "sample:coffee",
        "--layers",
        "conv1,conv2",
        "--steps",
        5,
        "--restarts",
        1,
        "--out",
        tmp_path,
    )
    inv = invert(tiny(), sample_image("coffee"), ["conv1", "conv2"], restarts=1, steps=5, seed=0)
    same_picture(tmp_path / "coffee_inversion.png", inv.to_image())
    for name, e in zip(inv.layers, inv.errors):
        assert f"{name:<24} normalised feature error {e:.4f}" in text


def test_dream(tmp_path):
    from convscope.render.grid import to_uint8
    from convscope.synthesis import dream, dream_zoom

    cli(
        "dream",
        "tiny",
        "--data",
        "sample:coffee",
        "--layers",
        "conv2",
        "--octaves",
        2,
        "--steps",
        2,
        "--out",
        tmp_path,
    )
    d = dream(tiny(), sample_image("coffee"), "conv2", octaves=2, steps=2, seed=0)
    same_picture(tmp_path / "coffee_dream.png", Image.fromarray(to_uint8(d.image)))
    cli(
        "dream",
        "tiny",
        "--data",
        "sample:coffee",
        "--layers",
        "conv2",
        "--octaves",
        1,
        "--steps",
        1,
        "--frames",
        2,
        "--out",
        tmp_path / "z",
    )
    d = dream_zoom(tiny(), sample_image("coffee"), "conv2", frames=2, zoom=1.05, octaves=1, steps=1, seed=0)
    with Image.open(tmp_path / "z" / "coffee_dream.gif") as gif:
        assert gif.n_frames == len(d.frames) == 2


def test_attack(tmp_path):
    from convscope.adversarial import fgsm, pgd

    cli(
        "attack",
        "tiny",
        "--data",
        "sample:coffee",
        "--method",
        "pgd",
        "--eps",
        "8/255",
        "--steps",
        3,
        "--out",
        tmp_path,
        code=None,
    )
    res = pgd(
        tiny(),
        [sample_image("coffee")],
        eps=8 / 255,
        alpha=None,
        steps=3,
        norm="linf",
        target=None,
        random_start=False,
        seed=0,
    )
    same_picture(tmp_path / "coffee_pgd.png", res.to_image(0))
    cli(
        "attack",
        "tiny",
        "--data",
        "sample:coffee",
        "--method",
        "fgsm",
        "--eps",
        "0.05",
        "--target",
        "class4",
        "--out",
        tmp_path,
        code=None,
    )
    res = fgsm(tiny(), [sample_image("coffee")], eps=0.05, target=4)
    same_picture(tmp_path / "coffee_fgsm.png", res.to_image(0))


def test_fool(tmp_path):
    from convscope.adversarial import fool

    text = cli("fool", "tiny", "--classes", "class2", "--method", "gradient", "--steps", 3, "--out", tmp_path)
    res = fool(tiny(), 2, "gradient", n=1, seed=0, steps=3, generations=200, population=16, elite=4)
    same_picture(tmp_path / "fool_2_gradient.png", res.to_image())
    assert f"p(class2) = {res.confidence[0]:.4f}" in text
