"""``convscope demo``: everything convscope can do so far, on the offline default model and the
bundled images, written into one folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from convscope.inputs.fileio import save_image, write_text
from convscope.inputs.samples import sample_images
from convscope.layers import layer_row
from convscope.render import (
    figure_to_image,
    filters_to_images,
    image_grid,
    predictions_figure,
    receptive_fields_figure,
    to_uint8,
)
from convscope.subject import Subject

Progress = Callable[[str], None]
DEMO_CONCEPT_STEPS = 12  # optimisation steps of each concept's picture: seconds on a CPU
# the demo's small microscope: stored feature visualisations (positive, 64 px) of the first
# units of the two middle stages, on a short budget, and the activation atlas of the second
# (one more pass over the 108 images; a 6 x 6 grid of 48 px cells, 24 steps each)
DEMO_VISUAL_UNITS = 4
DEMO_VISUAL_STEPS = 24
DEMO_ATLAS = {"grid": 6, "samples_per_image": 4, "steps": 24, "size": 48, "layout": "tsne"}


@dataclass
class DemoResult:
    """What the demo wrote: ``files`` maps a short description to its path."""

    out: Path
    files: dict[str, Path] = field(default_factory=dict)
    predictions: list[dict] = field(default_factory=list)
    scan: object = None  # the ScanResult of the bundled images


def first_conv_weight(subject: Subject) -> tuple[str, torch.Tensor]:
    """Name and weight (C_out, 3, kh, kw) of the first convolution that reads the RGB input."""
    modules = dict(subject.model.named_modules())
    for info in sorted((i for i in subject.layers if i.shape is not None), key=lambda i: i.order):
        m = modules[info.module]
        if isinstance(m, torch.nn.Conv2d) and m.in_channels == 3:
            return info.name, m.weight
    raise ValueError("the model has no convolution on the RGB input")


def run_demo(
    subject: Subject, out: str | Path, seed: int = 0, progress: Progress | None = None
) -> DemoResult:
    """Write the layer table, first-layer filters, receptive fields, top-5 predictions, and an
    atlas of the bundled images with top-K grids of a few units."""
    torch.manual_seed(seed)
    step = progress or (lambda _msg: None)
    out = Path(out)
    result = DemoResult(out)

    step("layer table")
    table = subject.layers
    result.files["layer table"] = write_text(out / "layers.txt", table.format() + "\n")
    rows = [dict(zip(("name", "type", "output", "units", "rf", "stride"), layer_row(i))) for i in table]
    result.files["layer table (json)"] = write_text(out / "layers.json", json.dumps(rows, indent=1))

    step("first-layer filters")
    name, weight = first_conv_weight(subject)
    grid = image_grid(filters_to_images(weight), cell=48, pad=3)
    result.files[f"first-layer filters ({name})"] = save_image(grid, out / "filters_first_layer.png")

    step("predictions")
    samples = sample_images()
    names = [n for n, _ in samples]
    x = subject.load_images([img for _, img in samples])
    preds = subject.predict(x, k=5)
    result.predictions = preds.to_records(names)
    result.files["top-5 predictions (json)"] = write_text(
        out / "predictions.json", json.dumps(result.predictions, indent=1)
    )
    seen = [np.asarray(subject.preprocess.resize_only(img)) for _, img in samples]
    fig = predictions_figure(seen, names, [preds.names(i) for i in range(len(names))], preds.probs.tolist())
    result.files["top-5 predictions"] = save_image(figure_to_image(fig, dpi=80), out / "predictions.png")

    step("receptive fields")
    picked = table.stages()
    fields = [(i.name, i.rf, i.shape[1:]) for i in picked[-6:]]
    fig = receptive_fields_figure(seen[0], fields)
    result.files["receptive fields"] = save_image(figure_to_image(fig), out / "receptive_fields.png")

    step("attribution maps")
    _demo_explain(subject, out / "explain", samples, result)

    step("synthesis")
    _demo_synthesis(subject, out / "synthesis", samples, seed, result)

    step("adversarial and fooling images")
    _demo_adversarial(subject, out / "adversarial", samples, seed, result)

    step("scan of the bundled images")
    result.scan = _demo_scan(subject, out / "atlas", seed, result, step)

    step("network dissection")
    _demo_dissect(subject, out / "atlas", seed, result)

    step("learned concepts")
    demo_concepts(subject, out / "atlas", seed, result, step)

    step("representations")
    _demo_represent(subject, out / "atlas", seed, result)

    step("a tiny training run")
    _demo_train(out / "training", seed, result)
    return result


def _demo_train(where: Path, seed: int, result: DemoResult) -> None:
    """Four epochs of a small CNN on scikit-learn's handwritten digits (8 x 8 px, upscaled to
    16), from scratch: curves, filter evolution, confusion matrix."""
    from sklearn.datasets import load_digits

    from convscope.render.training import confusion_figure, curves_figure, filter_evolution_figure
    from convscope.train import SmallCNN, TensorImages, TrainConfig, confusion_matrix, evaluate, train
    from convscope.train.loop import load_weights

    digits = load_digits()
    x = torch.from_numpy((digits.images / 16.0 * 255).astype(np.uint8))[:, None]
    x = x.repeat_interleave(2, 2).repeat_interleave(2, 3).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(digits.target).long()
    classes = [str(i) for i in range(10)]
    tr, te = TensorImages(x[:1400], y[:1400], classes), TensorImages(x[1400:], y[1400:], classes)
    torch.manual_seed(seed)
    model = SmallCNN(10, widths=(16, 32), input_size=16)
    config = TrainConfig(
        epochs=4, batch_size=64, lr=0.05, augment=False, seed=seed, mean=(0.3,) * 3, std=(0.4,) * 3
    )
    for old in where.glob("epoch_*.pt"):  # the demo starts its run afresh
        old.unlink()
    (where / "metrics.jsonl").unlink(missing_ok=True)
    run = train(model, tr, te, config, where)
    result.files[f"training curves (digits, test accuracy {run.final.test_accuracy:.2f})"] = save_image(
        figure_to_image(curves_figure(run.history, "SmallCNN on digits")), where / "curves.png"
    )
    snaps = [load_weights(p)[0] for p in run.checkpoints]
    fig = filter_evolution_figure(
        snaps, list(range(len(snaps))), ["features.0.0.weight", "features.1.0.weight"], n=8
    )
    result.files["filter evolution over epochs"] = save_image(fig, where / "filters_evolution.png")
    _, _, pred = evaluate(model, te, config)
    m = confusion_matrix(te.labels.numpy(), pred, 10)
    result.files["confusion matrix (digits)"] = save_image(
        figure_to_image(confusion_figure(m, classes)), where / "confusion.png"
    )


def _demo_represent(subject: Subject, where: Path, seed: int, result: DemoResult) -> None:
    """GAP features of three stages over the bundled photos and their crops: neighbours of two
    images, a t-SNE map (scatter and thumbnails) and the CKA between the stages."""
    from convscope.atlas import AtlasPaths
    from convscope.inputs.sources import open_images
    from convscope.render.represent import scatter_figure, similarity_figure, thumbnail_map
    from convscope.represent import extract_features, project, similarity_matrix
    from convscope.represent.report import write_neighbors_report

    source = open_images("convscope:samples", transform=subject.transform)
    layers = [i.name for i in subject.layers.stages()][-3:]
    atlas = AtlasPaths(where)
    fs = extract_features(subject, source, layers, out=atlas.features_dir("gap"), resume=False, batch_size=16)
    last = layers[-1]
    x = fs.get(last)
    found = write_neighbors_report(fs, last, [0, len(x) // 2], atlas, k=6, record=False)
    for q in found["queries"]:
        result.files[f"nearest neighbours of {q['query']}"] = Path(q["png"])
    xy = project(x, "tsne", seed=seed)
    fig = scatter_figure(xy, fs.valid_labels(), fs.classes, f"{last} (GAP), t-SNE")
    result.files[f"t-SNE of {last}, by photo"] = save_image(
        figure_to_image(fig), atlas.projection_render(last, "tsne")
    )
    result.files[f"t-SNE of {last}, thumbnails"] = save_image(
        thumbnail_map(xy, [source.read(i) for i in range(len(source))], size=900, thumb=48),
        atlas.projection_render(last, "tsne", thumbnails=True),
    )
    m = similarity_matrix({n: fs.get(n) for n in layers}, {n: fs.get(n) for n in layers}, "cka")
    result.files["linear CKA between stages"] = save_image(
        figure_to_image(similarity_figure(m, layers, layers, "linear CKA")), atlas.comparison_render("cka")
    )


def demo_concepts(
    subject: Subject, where: Path, seed: int, result: DemoResult, step: Progress, source=None
) -> None:
    """Eight NMF concepts of the last stage (``bn2`` of EfficientNet-Lite0) over the bundled
    photos and their crops (the atlas's own images, so that the viewer's image pages list their
    concepts): their top images, importance per class and short feature visualisations, in the
    demo atlas (``source``: other images instead). A stage that goes below zero is clipped at 0
    (NMF factorises max(x, 0))."""
    from convscope.atlas.concepts_build import concepts_to_atlas
    from convscope.inputs.sources import open_images

    if source is None:
        source = open_images("convscope:samples", transform=subject.transform)
    layer = subject.layers.stages()[-1].name
    stages: list[str] = []

    def stage(done, total, note=None) -> None:  # each stage once, as a step of the demo
        if note and note.split(":")[0] not in stages:
            stages.append(note.split(":")[0])
            step(f"learned concepts: {stages[-1]}")

    built = concepts_to_atlas(
        where,
        subject,
        source,
        layer,
        n=8,
        k=8,
        seed=seed,
        overwrite=True,  # the demo's own set, redone with the demo
        visualize={"steps": DEMO_CONCEPT_STEPS, "size": 96},
        per_image=4,
        max_samples=1000,  # 432 positions: all of them
        clip=True,
        batch_size=16,
        scan_options={"threshold_sample": 32},
        progress=stage,
    )
    result.files[f"concept set {built.name} in the atlas ({built.concepts.headline()})"] = built.atlas.db_path
    for i in range(built.pictures):
        result.files[f"feature visualisation of concept {i} of {built.name}"] = (
            built.atlas.dictionary_picture(built.name, i)
        )


def _demo_dissect(subject: Subject, where: Path, seed: int, result: DemoResult) -> None:
    """Dissect two stages against 64 synthetic Broden-format images (colours, shapes, textures)
    and one stage against the colour names of the bundled photos; stored in the demo atlas."""
    from convscope.atlas import Atlas
    from convscope.dissect import BrodenDataset, ColorConcepts, dissect, make_synthetic_broden

    atlas = Atlas.open(where)
    size = subject.input_size[0]
    root = make_synthetic_broden(where / "concepts" / "synthetic", n=64, size=size, seg=size // 2, seed=seed)
    stages = [i.name for i in subject.layers.stages()]
    layers = [stages[1], stages[-1]]
    for set_name, data, names in (
        ("synthetic", BrodenDataset(root), layers),
        ("auto-color", ColorConcepts("convscope:samples", seg=size // 2), layers[:1]),
    ):
        d = dissect(subject, data, names, batch_size=16)
        atlas.write_dissection(d, set_name)
        files = d.write_report(
            atlas,
            set_name,
            subject,
            data,
            units=2,
            broad=False,
            tables=False,
            summary=False,
            title=f"unique detectors per category ({set_name})",
        )
        result.files.update({f"dissection ({set_name}): {what}": path for what, path in files.items()})


def _demo_adversarial(subject: Subject, where: Path, samples, seed: int, result: DemoResult) -> None:
    """PGD at 2/255 on two photos, and a gradient and a CPPN fooling image (short budgets)."""
    from convscope.adversarial import fool, pgd

    adv = pgd(subject, [img for _, img in samples[:2]], eps=2 / 255, steps=10, seed=seed)
    for i, (name, _) in enumerate(samples[:2]):
        result.files[f"PGD 2/255 on {name}"] = adv.to_png(where / f"{name}_pgd.png", i)
    if subject.labels is not None and len(subject.labels) == 1000:
        grad = fool(subject, 285, "gradient", steps=30, seed=seed)
        result.files["fooling image (gradient), Egyptian cat"] = grad.to_png(where / "fool_gradient.png")
        cppn = fool(
            subject, 392, "cppn", generations=30, population=12, elite=3, sigma=0.5, rate=0.2, seed=seed
        )
        result.files["fooling image (CPPN), rock beauty"] = cppn.to_png(where / "fool_cppn.png")


def _demo_synthesis(subject: Subject, where: Path, samples, seed: int, result: DemoResult) -> None:
    """A few units of one stage, two class models, an inversion and a dream (short on CPU)."""
    from convscope.synthesis import class_model, dream, invert, visualize_units

    stages = subject.layers.stages()
    layer = stages[len(stages) // 2].name
    units = visualize_units(subject, layer, range(6), steps=48, size=96, seed=seed)
    result.files[f"feature visualisation, {layer} units 0-5"] = units.to_png(where / "units.png", ncols=6)
    if subject.labels is not None and len(subject.labels) == 1000:
        classes = class_model(subject, [285, 967], steps=48, size=160, seed=seed)
        result.files["class models: Egyptian cat, espresso"] = classes.to_png(where / "classes.png")
    inv = invert(subject, samples[0][1], [stages[0].name, stages[1].name], restarts=1, steps=60, seed=seed)
    result.files["inversion from two layers"] = inv.to_png(where / "inversion.png")
    dreamed = dream(subject, samples[1][1], layer, octaves=3, steps=6, seed=seed)
    result.files[f"DeepDream at {layer}"] = dreamed.to_png(where / "dream.png")


def _demo_explain(subject: Subject, where: Path, samples, result: DemoResult) -> None:
    """Saliency, guided backprop, Grad-CAM and occlusion for the first two photos (top class),
    and the Zeiler-Fergus projection's checkerboard on a random-init AlexNet (no trained one is
    available offline; the pattern comes from the strides), with and without the fix."""
    from convscope.attribution import explain
    from convscope.render.attribution import display_scale

    x = subject.load_images([img for _, img in samples[:2]])
    options = {"occlusion": {"window": 56, "stride": 28}}
    for method in ("saliency", "guided", "gradcam", "occlusion"):
        amap = explain(subject, x, method, target="top", **options.get(method, {}))
        for i, (name, _) in enumerate(samples[:2]):
            result.files[f"{method}, {name}"] = amap.to_png(where / f"{name}_{method}.png", i)
    from convscope.zoo import load

    torch.manual_seed(0)
    alexnet = load("torchvision:alexnet", weights=None)
    ax = alexnet.load_images([samples[0][1]])
    # The same projection through one 11 x 11, stride-4 filter of ones (AlexNet's conv1 shape):
    # each pixel is painted by 2 or 3 overlapping kernels, which shows the pattern plainly.
    conv = torch.nn.Conv2d(3, 1, 11, stride=4, bias=False)
    torch.nn.init.constant_(conv.weight, 1.0)
    flat = Subject.wrap(torch.nn.Sequential(conv, torch.nn.ReLU()), input_size=99)
    tiles, captions = [], []
    for even in (False, True):
        amap = explain(alexnet, ax, "zeiler_fergus", target="features.3:5", even_overlap=even)
        rgb = amap.raw[0].transpose(1, 2, 0)  # RGB around grey, scaled as attribution panels
        tiles.append(0.5 + 0.5 * np.clip(rgb / max(display_scale(rgb), 1e-12), -1, 1))
        one = explain(flat, torch.ones(1, 3, 99, 99), "zeiler_fergus", target="1:0", even_overlap=even).maps[
            0
        ][20:68, 20:68]
        lo, hi = float(one.min()), float(one.max())  # min black, max white; flat: mid grey
        shown = (one - lo) / (hi - lo) if hi - lo > 1e-6 * max(abs(hi), 1e-12) else np.full_like(one, 0.5)
        tiles.append(Image.fromarray(to_uint8(shown)).resize((224, 224), Image.NEAREST))
        label = "even overlap" if even else "plain"
        flat_note = ": flat" if even and hi - lo <= 1e-6 * max(abs(hi), 1e-12) else ""
        captions += [f"random AlexNet, {label}", f"stride-4 ones, {label}{flat_note}"]
    grid = image_grid(tiles, ncols=2, pad=4, captions=captions)
    head = [
        "Zeiler-Fergus projection of features.3:5 of an UNTRAINED",
        "(random-init) AlexNet: no trained AlexNet is available offline.",
        "The checkerboard comes from the strides, not the weights.",
    ]
    canvas = Image.new("RGB", (grid.width, grid.height + 13 * len(head) + 4), "white")
    canvas.paste(grid, (0, 13 * len(head) + 4))
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(head):
        draw.text((4, 2 + 13 * k), line, fill=(0, 0, 0))
    result.files[
        "Zeiler-Fergus projection on a random-init AlexNet, checkerboard (top) and even-overlap fix (bottom)"
    ] = save_image(canvas, where / "zeiler_fergus_checkerboard.png")


def scan_layers(subject: Subject) -> list[str]:
    """The layers the demo scans: two middle stages, the deepest convolution's output (before
    its batch norm and activation: ``conv_head`` of EfficientNet-Lite0, whose ``bn2`` output
    saturates at ReLU6's 6.0, so that its top scores would tie) and the last layer (logits)."""
    stages = subject.layers.stages()
    modules = dict(subject.model.named_modules())
    convs = [
        i
        for i in subject.layers
        if i.is_map and i.order <= stages[-1].order and isinstance(modules.get(i.module), torch.nn.Conv2d)
    ]
    deep = [convs[-1].name] if convs and convs[-1].name not in [i.name for i in stages[-3:-1]] else []
    last = [subject.layers[-1].name] if subject.layers[-1].units else []
    return [i.name for i in stages[-3:-1]] + deep + last


def best_labels(labels, n: int = 2) -> list:
    """The ``n`` dissection labels with the highest IoU among units that are not flagged too
    broad (the units the demo draws)."""
    from convscope.dissect.report import best_labels as best

    return best(labels, n, broad=False)


def _demo_scan(subject: Subject, where: Path, seed: int, result: DemoResult, step: Progress):
    """A small microscope of the bundled photos and their crops (scan, stored feature
    visualisations and an activation atlas, recorded as stages in the atlas); render a few units,
    the cat and espresso logits and two random directions."""
    from convscope.atlas import Atlas, render_units
    from convscope.atlas.build import model_spec
    from convscope.atlas.microscope_build import microscope_to_atlas
    from convscope.inputs.sources import open_images

    source = open_images("convscope:samples", transform=subject.transform)
    layers = scan_layers(subject)
    # The demo may replace its own earlier atlas of this model, never another model's.
    again = (
        Atlas(where).db_path.exists()
        and Atlas.open(where, readonly=True).model_spec == model_spec(subject)
        and Atlas.open(where, readonly=True).source_spec == source.spec
    )
    seen: list[str] = []

    def stage(done, total, note=None) -> None:  # each stage once, as a step of the demo
        if note and note.split(":")[0] not in seen:
            seen.append(note.split(":")[0])
            step(f"microscope: {seen[-1]}")

    built = microscope_to_atlas(
        subject,
        source,
        where,
        layers=layers,
        units=DEMO_VISUAL_UNITS,
        stages=["scan", "visuals", "activation_atlas"],
        overwrite=again,  # the demo's own stages, redone with the demo
        seed=seed,
        options={
            "scan": {"k": 8, "directions": 4, "batch_size": 16, "threshold_sample": 32},
            "visuals": {"layers": layers[:2], "kinds": ["positive"], "steps": DEMO_VISUAL_STEPS, "size": 64},
            "activation_atlas": {"layers": layers[1:2], **DEMO_ATLAS},
        },
        progress=stage,
    )
    atlas, scanned = Atlas.open(where), built.results["scan"]
    result.files["atlas (top-8 images per unit)"] = atlas.db_path
    for layer in layers[:2]:
        for unit in sorted(atlas.visual_units(layer)):
            tile = atlas.visual_tile(layer, unit, "positive")
            result.files[f"feature visualisation, {layer} unit {unit}"] = tile
    result.files[f"activation atlas, {layers[1]}"] = atlas.activation_atlas_file(layers[1], "image")
    step("top-K grids")
    for layer in layers[:-1]:
        for path in render_units(atlas, subject, source, layer, [0, 1, 2], ["max"]):
            result.files[f"top images, {layer} {path.stem}"] = path
        for path in render_units(atlas, subject, source, layer, [0, 1], ["max"], direction=True):
            result.files[f"top images, {layer} {path.stem}"] = path
    logits = layers[-1]
    if subject.labels is not None and len(subject.labels) == 1000:
        for unit in (285, 967):  # Egyptian cat, espresso
            for path in render_units(atlas, subject, source, logits, [unit], ["max"]):
                result.files[f"top images, {subject.label(unit)} logit"] = path
    step("empirical receptive fields")
    _demo_rf(subject, atlas, source, layers[0], result)
    return scanned


def _demo_rf(subject: Subject, atlas, source, layer: str, result: DemoResult) -> None:
    """Empirical receptive fields of two units of the first scanned layer (2 top images each,
    11 px random occluder, stride 6) and one unit's manufactured-stimulus test."""
    from convscope.empirical import best_patch, stimuli
    from convscope.empirical.report import write_rf_report

    for unit, rf, png in write_rf_report(atlas, subject, source, layer, (0, 1), top=2, stride=6):
        result.files[
            f"empirical receptive field, {layer}:{unit} "
            f"({rf.size:.0f} px vs theoretical {rf.theoretical:.0f})"
        ] = png
    top = atlas.topk(layer, 0, "max")
    patch = best_patch(subject, source.read(int(top.images[0])), layer, int(top.ys[0]), int(top.xs[0]))
    st = stimuli(subject, patch, layer, 0, stride=16, n=4)
    result.files[f"stimuli, {layer}:0"] = save_image(st.to_image(), atlas.stimuli_render(layer, 0))
