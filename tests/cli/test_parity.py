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
    from convscope.layers import LAYER_COLUMNS, layer_row

    subject = tiny()
    cols = LAYER_COLUMNS
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
    result = convscope.scan(subject, source, SCAN_LAYERS, **SCAN)
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
    from convscope.atlas import Atlas
    from convscope.atlas.build import unit_top
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
    record = unit_top(Atlas.open(atlas), "conv2", 3, out=tmp_path / "py.png")  # what the command calls
    assert Path(record.pop("png")) == tmp_path / "py.png" and Path(shown.pop("png")) == tmp_path / "t.png"
    assert json.loads(json.dumps(record)) == shown
    same_picture(tmp_path / "t.png", Image.open(tmp_path / "py.png"))

    shown = json.loads(
        cli("topk", atlas, "--layers", "conv1", "--unit", 1, "--direction", "--format", "json")
    )
    top = result.topk("conv1", 1, "max", direction=True)
    assert [r["image"] for r in shown["top"]] == top.images.tolist()
    vec = result.directions["conv1"][1]
    same_picture(shown["png"], render_topk(subject, source, top, direction=vec))


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
        saved = convscope.AttributionMap.load(out / f"{method}.npz")
        np.testing.assert_allclose(saved.maps, amap.maps, rtol=1e-5, atol=1e-7)
        assert list(saved.targets) == list(amap.targets)
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
    from convscope.synthesis import Synthesis
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
    syn = convscope.visualize(tiny(), "conv2", [0, 1, 2], batch=32, **opts)
    saved = Synthesis.load(tmp_path / "conv2_units.npz")
    np.testing.assert_allclose(saved.images, syn.images, atol=1e-6)
    np.testing.assert_allclose(saved.scores, syn.scores, rtol=1e-5)
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
    directions = Direction.random("conv2", subject.layer("conv2").units, 2, seed=0)
    syn = convscope.visualize(subject, "conv2", directions=directions, **opts)
    np.testing.assert_allclose(
        Synthesis.load(tmp_path / "conv2_directions.npz").images, syn.images, atol=1e-6
    )


def test_classviz(tmp_path, capsys):
    from convscope.synthesis import Synthesis

    text = cli("classviz", "tiny", "--classes", "1,class4", "--steps", 4, "--size", 32, "--out", tmp_path)
    subject = tiny()
    syn = convscope.class_model(
        subject, [1, 4], l2=0.0, regularized=True, steps=4, size=32, seed=0, param="fft"
    )
    saved = Synthesis.load(tmp_path / "classes.npz")
    np.testing.assert_allclose(saved.images, syn.images, atol=1e-6)
    assert list(saved.labels) == list(syn.labels)
    same_picture(tmp_path / "classes.png", syn.to_image(ncols=2))
    assert "class 4 (class4)" in text


def test_invert(tmp_path):
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
    inv = convscope.invert(tiny(), sample_image("coffee"), "conv1,conv2", restarts=1, steps=5, seed=0)
    same_picture(tmp_path / "coffee_inversion.png", inv.to_image())
    for name, e in zip(inv.layers, inv.errors):
        assert f"{name:<24} normalised feature error {e:.4f}" in text


def test_dream(tmp_path):
    from convscope.render.grid import to_uint8

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
    d = convscope.dream(tiny(), sample_image("coffee"), "conv2", octaves=2, steps=2, seed=0)
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
    d = convscope.dream(
        tiny(), sample_image("coffee"), "conv2", frames=2, zoom=1.05, octaves=1, steps=1, seed=0
    )
    with Image.open(tmp_path / "z" / "coffee_dream.gif") as gif:
        assert gif.n_frames == len(d.frames) == 2


def test_attack(tmp_path):
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
    res = convscope.attack(tiny(), [sample_image("coffee")], method="pgd", eps=8 / 255, steps=3, seed=0)
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
    res = convscope.attack(tiny(), [sample_image("coffee")], method="fgsm", eps=0.05, target=4)
    same_picture(tmp_path / "coffee_fgsm.png", res.to_image(0))


def test_fool(tmp_path):
    text = cli("fool", "tiny", "--classes", "class2", "--method", "gradient", "--steps", 3, "--out", tmp_path)
    res = convscope.fool(tiny(), 2, "gradient", n=1, seed=0, steps=3, generations=200, population=16, elite=4)
    same_picture(tmp_path / "fool_2_gradient.png", res.to_image())
    assert f"p(class2) = {res.confidence[0]:.4f}" in text


# ---------------------------------------------------------------------------------------------
# representations: features, and the commands that read them


@pytest.fixture(scope="module")
def featured(photos, tmp_path_factory):
    """The CLI's atlas with gap features of two layers, and the same features in Python."""
    atlas = tmp_path_factory.mktemp("features") / "atlas"
    cli(
        "features",
        "tiny",
        "--data",
        photos,
        "--layers",
        "conv1,conv2",
        "--out",
        atlas,
        "--workers",
        0,
        "--batch-size",
        4,
    )
    subject = tiny()
    source = open_images(photos, transform=subject.transform)
    fs = convscope.features(subject, source, "conv1,conv2", pooling="gap", batch_size=4, workers=0)
    return atlas, fs


def stored_features(atlas):
    from convscope.atlas import AtlasPaths
    from convscope.represent import FeatureSet

    return FeatureSet.load(AtlasPaths(atlas).features_dir("gap"))


def test_features(featured):
    atlas, fs = featured
    saved = stored_features(atlas)
    assert saved.layers == fs.layers == ["conv1", "conv2"]
    assert saved.names == fs.names
    np.testing.assert_array_equal(saved.labels, fs.labels)
    np.testing.assert_array_equal(saved.valid, fs.valid)
    for layer in fs.layers:
        np.testing.assert_allclose(saved.get(layer), fs.get(layer), rtol=1e-5, atol=1e-6)


def test_neighbors(featured, tmp_path):
    from convscope.atlas import AtlasPaths
    from convscope.represent import PostProcess, evaluate_labels
    from convscope.represent.report import write_neighbors_report

    atlas, fs = featured
    report = write_neighbors_report(fs, "conv2", [0, 7], AtlasPaths(tmp_path), k=3, post="l2", evaluate=True)
    cli(
        "neighbors",
        atlas,
        "--layers",
        "conv2",
        "--query",
        0,
        "--query",
        7,
        "--k",
        3,
        "--post",
        "l2",
        "--eval",
    )
    shown = json.loads(
        (AtlasPaths(atlas).neighbors_render("conv2", "q").parent / "neighbors.json").read_text()
    )
    # the arrays (each query finds itself too) and the Neighbors results (without it, as the CLI)
    scores, found = convscope.neighbors(fs, [0, 7], "conv2", k=4, post="l2", images=False)
    results = convscope.neighbors(fs, [0, 7], "conv2", k=3, post="l2", skip_self=True)
    grids = convscope.neighbors(stored_features(atlas), [0, 7], "conv2", k=3, post="l2", skip_self=True)
    for q, record, s, f, got, grid in zip((0, 7), shown["queries"], scores, found, results, grids):
        hits = [(int(j), float(v)) for j, v in zip(f, s) if j != q][:3]
        assert record["query"] == fs.names[q] == got.query
        assert [n["image"] for n in record["neighbors"]] == [fs.names[j] for j, _ in hits] == got.names
        np.testing.assert_allclose([n["score"] for n in record["neighbors"]], [s for _, s in hits], rtol=1e-5)
        np.testing.assert_allclose([n["score"] for n in record["neighbors"]], got.scores, rtol=1e-5)
        same_picture(record["png"], grid.to_image())  # the same features: the same grid
    db = PostProcess.parse("l2").fit(fs.get("conv2")).transform(fs.get("conv2"))
    scores = evaluate_labels(db, fs.labels, "cosine")
    assert shown["map"] == pytest.approx(scores.map)
    for q in report["queries"]:  # the library's report: the same record and grids
        png = Path(q.pop("png"))
        same_picture(atlas / png.relative_to(tmp_path), Image.open(png))
    for q in shown["queries"]:
        q.pop("png")
    assert json.loads(json.dumps(report, default=float)) == shown
    assert shown["precision"] == {str(k): pytest.approx(v) for k, v in scores.precision.items()}


def test_probe(featured, tmp_path):
    from convscope.atlas import AtlasPaths

    atlas, fs = featured
    cli("probe", atlas, "--test-fraction", 0.5)
    rows = read_csv(AtlasPaths(atlas).probe_render("gap", "logistic").with_suffix(".csv"))
    result = convscope.probe(fs, classifier="logistic", c=1.0, test_fraction=0.5, seed=0)
    png, table = result.write_report(tmp_path / "probe.png")
    same_picture(AtlasPaths(atlas).probe_render("gap", "logistic"), Image.open(png))
    assert read_csv(table) == rows
    assert rows[0] == ["layer", "dims", "train_accuracy", "test_accuracy", "chance"]
    assert rows[1:] == [
        [r.layer, str(r.dims), f"{r.train_accuracy:.4f}", f"{r.test_accuracy:.4f}", f"{result.chance:.4f}"]
        for r in result.rows
    ]


def test_project(featured):
    from convscope.atlas import AtlasPaths

    atlas, fs = featured
    cli("project", atlas, "--layers", "conv2", "--method", "pca", "--thumbnails", 0)
    rows = read_csv(AtlasPaths(atlas).projection_render("conv2", "pca").with_suffix(".csv"))
    projection = convscope.project(fs, "conv2", "pca", seed=0)
    xy = projection.xy
    assert rows[0] == ["image", "label", "x", "y"]
    assert [r[:2] for r in rows[1:]] == [[n, str(lab)] for n, lab in zip(fs.names, fs.labels)]
    np.testing.assert_allclose([[float(a), float(b)] for _, _, a, b in rows[1:]], xy, atol=2e-5)
    assert [[n, str(lab)] for n, lab in zip(projection.names, projection.labels)] == [r[:2] for r in rows[1:]]
    saved = convscope.project(stored_features(atlas), "conv2", "pca", seed=0)  # the CLI's features
    png = AtlasPaths(atlas).projection_render("conv2", "pca")
    same_picture(png, saved.to_image(title="conv2 (gap), pca"))


def test_compare(featured, tmp_path):
    atlas, fs = featured
    cli("compare", atlas, "--measure", "cka", "--out", tmp_path / "cka.png")
    rows = read_csv(tmp_path / "cka.csv")
    result = convscope.compare(fs, measure="cka")
    m = result.values
    assert rows[0] == ["", *fs.layers] == ["", *result.cols]
    assert [r[0] for r in rows[1:]] == fs.layers == result.rows
    np.testing.assert_allclose([[float(v) for v in r[1:]] for r in rows[1:]], m, atol=6e-5)
    same_picture(tmp_path / "cka.png", convscope.compare(stored_features(atlas), measure="cka").to_image())


# ---------------------------------------------------------------------------------------------
# empirical receptive fields and stimuli, on the scan's atlas


@pytest.fixture()
def atlas_copy(scanned, tmp_path):
    """A copy of the scan's atlas (these commands add to it)."""
    import shutil

    atlas, subject, source, result = scanned
    copy = tmp_path / "atlas"
    shutil.copytree(atlas, copy)
    return copy, subject, source, result


def test_rf(atlas_copy):
    import torch

    from convscope.atlas import Atlas
    from convscope.render.receptive import empirical_rf_panel

    atlas, subject, source, result = atlas_copy
    cli("rf", atlas, "--layers", "conv2", "--units", "0-1", "--top", 2, "--occluder", 5, "--stride", 4)
    store = Atlas.open(atlas)
    stored = store.empirical_rfs("conv2")
    assert [r["unit"] for r in stored] == [0, 1]
    for row in stored:
        top = result.topk("conv2", row["unit"], "max")
        x = torch.stack([source[int(i)][0] for i in top.images[:2]])
        rf = convscope.empirical_rf(subject, x, "conv2", row["unit"], patch=5, stride=4, fill="noise")
        assert row["size"] == pytest.approx(rf.size)
        assert (row["height"], row["width"]) == (rf.height, rf.width)
        assert row["theoretical"] == pytest.approx(rf.theoretical)
        np.testing.assert_allclose(row["average"], rf.average, rtol=1e-5, atol=1e-6)
        same_picture(store.empirical_rf_render("conv2", row["unit"]), empirical_rf_panel(subject, x, rf))
    sizes = json.loads(store.rf_sizes(".json").read_text())
    assert sizes[0]["layer"] == "conv2" and sizes[0]["units"] == 2
    assert sizes[0]["empirical_mean"] == pytest.approx(np.mean([r["size"] for r in stored]))


def test_stimuli(atlas_copy):
    from convscope.atlas import Atlas
    from convscope.empirical import best_patch

    atlas, subject, source, result = atlas_copy
    text = cli("stimuli", atlas, "--layers", "conv2", "--unit", 1, "--stride", 8)
    top = result.topk("conv2", 1, "max")
    patch = best_patch(subject, source.read(int(top.images[0])), "conv2", int(top.ys[0]), int(top.xs[0]))
    st = convscope.stimuli(subject, patch, "conv2", 1, stride=8)
    same_picture(Atlas.open(atlas).stimuli_render("conv2", 1), st.to_image())
    assert (
        f"intact {st.intact:.3g}, pixels shuffled {st.shuffled:.3g}, blocks scrambled {st.scrambled:.3g}"
        in text
    )


# ---------------------------------------------------------------------------------------------
# dissection


DISSECT = dict(quantile=0.005, iou_threshold=0.04, max_coverage=0.2, batch_size=4, workers=0)


@pytest.fixture(scope="module")
def dissected(tmp_path_factory):
    """The CLI's atlas of a dissection against 8 synthetic Broden-format images, and the same
    dissection in Python."""
    from convscope.dissect import BrodenDataset, make_synthetic_broden

    root = tmp_path_factory.mktemp("dissect")
    atlas = root / "atlas"
    cli(
        *("dissect", "tiny", "--concepts", "synthetic", "--synthetic-images", 8, "--layers", "conv1,conv2"),
        *("--out", atlas, "--batch-size", 4, "--workers", 0, "--show", 2),
    )
    subject = tiny()
    make_synthetic_broden(root / "concepts", n=8, size=32, seg=16, seed=0)
    data = BrodenDataset(root / "concepts")
    result = convscope.dissect(subject, data, "conv1,conv2", **DISSECT)
    return atlas, subject, result, data


def test_dissect(dissected, tmp_path):
    from convscope.atlas import Atlas, AtlasPaths

    atlas, subject, result, data = dissected
    store = Atlas.open(atlas)
    files = result.write_report(AtlasPaths(tmp_path), "synthetic", subject, data, units=2)
    ours = sorted(
        p.relative_to(tmp_path) for p in AtlasPaths(tmp_path).dissection_dir("synthetic").rglob("*")
    )
    theirs = sorted(p.relative_to(atlas) for p in store.dissection_dir("synthetic").rglob("*"))
    assert ours == theirs and sorted(p.relative_to(tmp_path) for p in files.values()) == [
        p for p in ours if (tmp_path / p).is_file()
    ]
    for path in files.values():
        cli_file = atlas / path.relative_to(tmp_path)
        if path.suffix == ".png":
            same_picture(cli_file, Image.open(path))
        elif path.name == "summary.json":  # all but the seconds the run took
            a, b = json.loads(cli_file.read_text()), json.loads(path.read_text())
            a.pop("seconds"), b.pop("seconds")
            assert a == b
        else:
            assert cli_file.read_text() == path.read_text(), path.name
    assert json.loads(
        store.dissection_layer_file("synthetic", "conv2", "units.json").read_text()
    ) == json.loads(json.dumps(result.to_records("conv2")))
    assert (
        json.loads(store.dissection_file("synthetic", "summary.json").read_text())["images"]
        == result.images
        == 8
    )
    stored = store.dissection("synthetic")
    for layer in ("conv1", "conv2"):
        assert [(u.unit, u.name, pytest.approx(u.iou)) for u in stored.labels(layer)] == [
            (u.unit, u.name, u.iou) for u in result.labels(layer)
        ]


def test_dissect_compare(dissected, tmp_path):
    from convscope.atlas import Atlas

    atlas, subject, result, data = dissected
    cli("dissect-compare", f"{atlas}:conv1", f"{atlas}:conv2", "--out", tmp_path / "cmp.png")
    rows = json.loads((tmp_path / "cmp.json").read_text())
    stored = Atlas.open(atlas).dissection()
    for row, layer in zip(rows, ("conv1", "conv2"), strict=True):
        s = stored.summary(layer)
        assert row["model"] == f"{stored.model} {layer}"
        assert (row["units"], row["detectors"], row["unique"]) == (s.units, s.detectors, s.unique)
        ours = result.summary(layer)
        assert (s.units, s.detectors, s.unique) == (ours.units, ours.detectors, ours.unique)


def test_concepts(photos, tmp_path):
    """``convscope concepts`` is concepts_to_atlas: the same dictionary, top-K, importance and
    pictures stored."""
    import torch

    from convscope.atlas import Atlas
    from convscope.atlas.concepts_build import concepts_to_atlas

    args = ("--n", 3, "--k", 2, "--steps", 2, "--batch-size", 4, "--workers", 0, "--seed", 1)
    text = cli("concepts", "tiny", "--data", photos, "--layers", "block", *args, "--out", tmp_path / "c")
    ours = concepts_to_atlas(
        tmp_path / "p",
        tiny(),
        open_images(photos),
        "block",
        n=3,
        k=2,
        seed=1,
        visualize={"steps": 2},
        batch_size=4,
        workers=0,
    )
    assert ours.headline() in text.replace("\n", "")
    a, b = Atlas.open(tmp_path / "c", readonly=True), ours.atlas
    assert a.dictionaries() == b.dictionaries()
    assert torch.equal(a.dictionary(ours.name).dictionary, b.dictionary(ours.name).dictionary)
    for c in range(3):
        ta, tb = a.dictionary_topk(ours.name, c), b.dictionary_topk(ours.name, c)
        assert list(ta.names) == list(tb.names) and np.allclose(ta.scores, tb.scores)
        same_picture(a.dictionary_picture(ours.name, c), Image.open(b.dictionary_picture(ours.name, c)))
    ia, ib = a.dictionary_importance(ours.name), b.dictionary_importance(ours.name)
    assert ia["classes"] == ib["classes"] and np.allclose(ia["matrix"], ib["matrix"])


# ---------------------------------------------------------------------------------------------
# the training lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    """An ImageFolder source with train/ and test/ parts (2 classes, 16 px)."""
    root = tmp_path_factory.mktemp("lab")
    _photos(root / "train", 4, 16)
    _photos(root / "test", 2, 16, offset=5)
    return root


def metrics(path) -> list[list[str]]:
    """metrics.csv without its seconds column (time differs from run to run)."""
    return [r[:-1] for r in read_csv(path)]


def history(result) -> list[list[str]]:
    """A training result's epochs as metrics.csv writes them (without seconds)."""
    return [
        [str(h.epoch), *(f"{v:.5f}" for v in (h.train_loss, h.train_accuracy, h.test_loss, h.test_accuracy))]
        for h in result.history
    ]


def test_train(lab, tmp_path):
    import torch

    from convscope.train import TrainConfig, build, load_split
    from convscope.train.filters import spread
    from convscope.train.report import write_report

    cli("train", "--data", lab, "--epochs", 2, "--batch-size", 4, "--size", 16, "--out", tmp_path / "cli")
    tr, te = load_split(lab, size=16)
    torch.manual_seed(0)
    model = build(
        "small", len(tr.classes), widths=(32, 64, 128), batchnorm=True, padding="same", input_size=16
    )
    config = TrainConfig(epochs=2, batch_size=4, lr=0.1, weight_decay=5e-4, seed=0)
    result = convscope.train(model, tr, te, config, tmp_path / "py")
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    written = write_report(
        tmp_path / "py", model, result, te, config, tr.classes, "small", evolution=spread(convs)
    )
    assert {p.name for p in written} == {
        "metrics.csv",
        "curves.png",
        "confusion.csv",
        "confusion.png",
        "filters_evolution.png",
    }
    lines = metrics(tmp_path / "cli" / "metrics.csv")
    assert lines[0] == ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy"]
    assert lines[1:] == history(result) == metrics(tmp_path / "py" / "metrics.csv")[1:]
    for path in written:
        if path.suffix == ".csv" and path.name != "metrics.csv":
            assert (tmp_path / "cli" / path.name).read_text() == path.read_text(), path.name
        elif path.suffix == ".png":
            same_picture(tmp_path / "cli" / path.name, Image.open(path))
    cli_weights = torch.load(tmp_path / "cli" / "epoch_002.pt", weights_only=True)
    py_weights = torch.load(tmp_path / "py" / "epoch_002.pt", weights_only=True)
    for k, v in py_weights["model"].items():
        torch.testing.assert_close(cli_weights["model"][k], v)


def test_finetune(lab, tmp_path):
    import copy

    import torch

    from convscope.train import TrainConfig, blocks, freeze, load_split, replace_head

    cli(
        *("finetune", "tiny", "--data", lab, "--limit", 2, "--epochs", 1, "--batch-size", 4),
        *("--freeze", "0,1", "--out", tmp_path / "cli"),
    )
    subject = tiny()
    pre = subject.preprocess
    tr, te = load_split(lab, preprocess=pre, limit=2)
    config = TrainConfig(
        epochs=1, batch_size=4, lr=0.01, weight_decay=1e-4, seed=0, mean=tuple(pre.mean), std=tuple(pre.std)
    )
    rows = []
    for k in (0, 1):
        torch.manual_seed(0)
        m = copy.deepcopy(subject.model)
        replace_head(m, len(tr.classes))
        frozen = freeze(m, k)
        result = convscope.train(m, tr, te, config, tmp_path / "py" / f"freeze_{k}")
        rows.append({"freeze": k, "frozen": frozen, "test_accuracy": result.final.test_accuracy})
        assert metrics(tmp_path / "cli" / f"freeze_{k}" / "metrics.csv")[1:] == history(result)
    shown = json.loads((tmp_path / "cli" / "transfer.json").read_text())
    assert shown == {"blocks": blocks(subject.model), "rows": rows}


def test_filters(photos, tmp_path):
    from convscope.train.filters import filters_grid, rank_filters

    subject = tiny()
    cli("filters", "tiny", "--layers", "conv1", "--n", 4, "--out", tmp_path / "f.png")
    grid, captions = filters_grid(subject, ["conv1"], 4)
    same_picture(tmp_path / "f.png", grid)
    assert captions == [f"conv1:{i}" for i in range(4)]

    text = cli(
        "filters", "tiny", "--layers", "conv2", "--n", 4, "--data", photos, "--out", tmp_path / "r.png"
    )
    ranking = rank_filters(subject, open_images(photos, transform=subject.transform), ["conv2"])
    grid, _ = filters_grid(subject, ["conv2"], 4, ranking)
    same_picture(tmp_path / "r.png", grid)
    assert ranking.images == 12
    assert ", ".join(str(u) for u in ranking.top("conv2", 4)) in text


# ---------------------------------------------------------------------------------------------
# the viewer, its static export, and the demo


def test_serve(scanned, monkeypatch):
    pytest.importorskip("fastapi")
    import uvicorn
    from fastapi.testclient import TestClient

    from convscope.viewer.app import create_app

    atlas, subject, source, result = scanned
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.update(app=app, **options))
    cli("serve", atlas, "--port", 8123)
    assert served["port"] == 8123 and served["host"] == "127.0.0.1"
    local = "http://127.0.0.1:8123"  # the viewer answers only its own host names
    with (
        TestClient(served["app"], base_url=local) as ours,
        TestClient(create_app(atlas), base_url=local) as theirs,
    ):
        for route in ("/api/layers", "/api/layer/conv2", "/api/unit/conv2/3"):
            got = ours.get(route)
            assert got.status_code == 200, route
            assert got.json() == theirs.get(route).json(), route
        unit = ours.get("/api/unit/conv2/3").json()
    top = result.topk("conv2", 3, "max")
    assert [r["image"] for r in unit["topk"]["max"]] == top.images.tolist()
    np.testing.assert_allclose([r["score"] for r in unit["topk"]["max"]], top.scores, rtol=1e-5)


def test_export(scanned, tmp_path):
    pytest.importorskip("fastapi")
    from convscope.viewer.export import export_html

    atlas, subject, source, result = scanned
    cli("export", atlas, "--html", tmp_path / "cli", "--units", 2)
    export_html(atlas, tmp_path / "py", units_per_layer=2)
    files = sorted(p.relative_to(tmp_path / "cli") for p in (tmp_path / "cli").rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(tmp_path / "py") for p in (tmp_path / "py").rglob("*") if p.is_file()
    )
    assert any(f.suffix == ".html" for f in files)
    for f in files:
        assert (tmp_path / "cli" / f).read_bytes() == (tmp_path / "py" / f).read_bytes(), f


def test_demo(monkeypatch, tmp_path):
    """The demo is one library call, ``run_demo(subject, out, seed=...)`` (its output is checked
    by tests/app): the command passes its subject, folder and seed through and prints the files."""
    import convscope.app.demo
    from convscope.app.demo import DemoResult

    calls = []

    def run_demo(subject, out, *, seed=0, progress=None):
        calls.append((subject.name, out, seed))
        (out / "layers.txt").parent.mkdir(parents=True, exist_ok=True)
        (out / "layers.txt").write_text(subject.layers.format())
        return DemoResult(out, files={"the layer table": out / "layers.txt"})

    monkeypatch.setattr(convscope.app.demo, "run_demo", run_demo)
    text = cli("demo", "tiny", "--out", tmp_path / "d", "--seed", 3)
    assert calls == [("tiny", tmp_path / "d", 3)]
    assert "layers.txt" in text and "the layer table" in text
    assert (tmp_path / "d" / "layers.txt").read_text() == tiny().layers.format()


def test_compare_scans(scanned, lab, tmp_path):
    from convscope.atlas import Atlas
    from convscope.train.report import compare_scans_figure

    atlas, subject, source, result = scanned
    other = tmp_path / "other"  # the same model over other images: other top lists
    cli(
        "scan", "tiny", "--data", lab / "train", "--layers", "conv2", "--k", 4, "--workers", 0, "--out", other
    )
    cli(
        "compare-scans",
        atlas,
        other,
        "--layers",
        "conv2",
        "--units",
        "0-1",
        "--k",
        3,
        "--out",
        tmp_path / "cmp",
    )
    before, after = Atlas.open(atlas), Atlas.open(other)
    for u in (0, 1):
        picture = compare_scans_figure(before, after, "conv2", u, k=3)
        same_picture(tmp_path / "cmp" / f"conv2_unit{u:04d}.png", picture)


def test_engine_choice(photos, tmp_path, capsys):
    """``--engine`` is the verbs' ``engine=``: the same one-line refusal of an unknown engine,
    before anything is written, from the command and from Python."""
    from convscope.errors import NameNotFoundError

    subject = tiny()
    with pytest.raises(NameNotFoundError) as e:
        convscope.scan(subject, open_images(photos, transform=subject.transform), "conv1", engine="rya")
    capsys.readouterr()
    for command, data in (("scan", photos), ("features", photos), ("dissect", "--synthetic-images=8")):
        args = ("--data", data) if command != "dissect" else (data,)
        cli(command, "tiny", *args, "--layers", "conv1", "--engine", "rya", "--out", tmp_path / "a", code=2)
        assert str(e.value) in capsys.readouterr().err.replace("\n", " ")
    assert not (tmp_path / "a").exists()


def test_evaluate(photos, tmp_path):
    """``convscope evaluate`` is convscope.evaluate on evaluate_to_atlas's seeded sample: the same
    scores and the same ranked table stored."""
    from convscope.atlas import Atlas
    from convscope.atlas.evaluate_build import pick_images

    args = ("--methods", "saliency,gradcam,edge", "--metrics", "average_drop,pixel_flipping", "--n", 6)
    args += ("--layers", "conv2", "--chunk", 4, "--seed", 2, "--metric-option", "pixel_flipping.step=128")
    text = cli("evaluate", "tiny", "--data", photos, *args, "--out", tmp_path / "e")
    subject = tiny()
    ours = convscope.evaluate(
        subject,
        pick_images(open_images(photos, transform=subject.transform), 6, 2),
        ["saliency", "gradcam", "edge"],
        ["average_drop", "pixel_flipping"],
        options={"layer": "conv2"},
        metric_options={"pixel_flipping": {"step": 128}},
        seed=2,
        chunk=4,
    )
    stored = Atlas.open(tmp_path / "e").evaluation("default")
    assert stored.images == ours.images and len(ours.images) == 6
    np.testing.assert_array_equal(stored.scores, ours.scores)
    table = (tmp_path / "e" / "evaluations" / "default" / "table.csv").read_text()
    drop_seconds = lambda t: [row.rsplit(",", 1)[0] for row in t.splitlines()]  # noqa: E731
    assert drop_seconds(table) == drop_seconds(ours.to_csv())
    assert ours.headline() in text


def test_microscope(photos, tmp_path):
    """``convscope microscope`` is microscope_to_atlas: the same stages recorded, the same scan
    and the same stored feature visualisations (rows and tiles, byte for byte)."""
    from convscope.atlas import Atlas
    from convscope.atlas.microscope_build import microscope_to_atlas

    args = ("--layers", "conv2", "--units", 2, "--steps", 2, "--stages", "scan,visuals", "--seed", 1)
    cli("microscope", "tiny", "--data", photos, *args, "--out", tmp_path / "c")
    microscope_to_atlas(
        tiny(),
        open_images(photos),
        tmp_path / "p",
        layers="conv2",
        units=2,
        stages=["scan", "visuals"],
        seed=1,
        options={"visuals": {"steps": 2}},
    )
    a, b = Atlas.open(tmp_path / "c", readonly=True), Atlas.open(tmp_path / "p", readonly=True)
    assert [(r["name"], r["status"]) for r in a.stages()] == [(r["name"], r["status"]) for r in b.stages()]
    assert [r["status"] for r in a.stages()] == ["done", "done"]
    ta, tb = a.topk("conv2", 0, "max"), b.topk("conv2", 0, "max")
    assert list(ta.names) == list(tb.names) and np.allclose(ta.scores, tb.scores)
    assert a.visuals("conv2") == b.visuals("conv2") and len(a.visuals("conv2")) >= 2
    for r in a.visuals("conv2"):
        tile = (r["unit"], r["kind"], r["index"])
        assert a.visual_tile("conv2", *tile).read_bytes() == b.visual_tile("conv2", *tile).read_bytes()


def test_every_command_has_a_parity_test():
    """A new command comes with its test here (named test_<command>, dashes as underscores)."""
    import typer

    from convscope.cli.main import app

    commands = typer.main.get_command(app).commands
    assert len(commands) >= 26
    missing = [c for c in commands if f"test_{c.replace('-', '_')}" not in globals()]
    assert not missing, f"no parity test for: {', '.join(missing)}"
