"""Scan a dataset into an atlas, dissect a model into one, render unit pictures, reopen an
atlas's model and data, gather the stored dissections a report is drawn from, and compare
atlases (dissected layers, a unit's top images before and after)."""

from __future__ import annotations

import difflib
import inspect
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

from convscope.atlas.store import Atlas
from convscope.dissect.compare import DissectionComparison
from convscope.dissect.result import Dissection
from convscope.errors import ConvscopeError, UserInputError
from convscope.inputs.fileio import save_image
from convscope.inputs.sources import ImageSource, open_spec
from convscope.layers import LayerSpec
from convscope.scale.engine import Engine, resolve_engine
from convscope.scan.patches import render_topk
from convscope.scan.result import ScanResult
from convscope.subject import Subject
from convscope.verbs import image_layers


def model_spec(subject: Subject) -> dict:
    """What the atlas records about the model (enough to load it again, when it came from load)."""
    return dict(subject.spec) if subject.spec else {"name": subject.name}


def refuse_bases(options: dict, writer: str) -> None:
    """The atlas's unit tables hold channels: a basis's codes stored there would pass for the
    layer's units. Concept sets have tables of their own (:func:`concepts_to_atlas`)."""
    if options.get("bases"):
        raise UserInputError(
            f"{writer} stores a layer's units; store concept codes with convscope.atlas.concepts_to_atlas"
        )


def check_option_names(stage: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    """A one-line :class:`UserInputError` for the first name of ``given`` that ``stage`` does
    not take: its close match among ``allowed`` (difflib) and every valid name."""
    allowed = sorted(set(allowed))
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserInputError(f"unknown {stage} option {key!r}{hint}; its options: {', '.join(allowed)}")


def check_counts(stage: str, options: Mapping, lowest: Mapping[str, int]) -> None:
    """A one-line :class:`UserInputError` when an option of ``options`` named in ``lowest`` is
    not a whole number >= its lowest value (None is left to the stage: its default)."""
    for key, low in lowest.items():
        value = options.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
            raise UserInputError(f"the {stage} stage's {key} must be a whole number >= {low}, not {value!r}")


def takes(fn: Callable, *drop: str) -> set[str]:
    """The keyword names ``fn`` takes, less ``drop`` (those its caller sets itself)."""
    params = inspect.signature(fn).parameters.values()
    return {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - set(drop)


def check_scan_options(options: Mapping) -> None:
    """Refuse (one-line :class:`UserInputError`) what :func:`scan_to_atlas` would only refuse
    once it runs: an option it does not take (``options`` are its keywords, without the subject,
    images, atlas, layers, seed and resume) and values :func:`~convscope.scan.scanner.scan`
    cannot run with."""
    from convscope.scan.scanner import check_settings, scan

    own = takes(scan, "subject", "data", "layers", "seed", "checkpoint", "resume", "progress", "bases")
    own -= {"indices", "thresholds", "calibration_only"}  # a part of a scan, not a whole atlas
    check_option_names("scan", options, own | {"engine"})
    keys = ("k", "criteria", "batch_size", "directions")
    check_settings(**{key: options[key] for key in keys if key in options})
    check_counts("scan", options, {"threshold_sample": 1, "workers": 0, "buffer_bytes": 1})


def check_dissect_options(options: Mapping) -> None:
    """Refuse (one-line :class:`UserInputError`) an option :func:`dissect_to_atlas` does not take
    (``options`` are its keywords, without the subject, concepts, atlas, layers, images and seed)
    and counts that cannot be."""
    from convscope.dissect import dissect

    own = takes(
        dissect_to_atlas, "subject", "concepts", "out", "layers", "images", "seed", "progress", "resume"
    )
    own |= takes(dissect, "subject", "data", "layers", "progress", "bases")
    check_option_names("dissect", options, own)
    check_counts("dissect", options, {"batch_size": 1, "workers": 0, "units": 0, "top": 1, "limit": 1})
    check_counts("dissect", options, {"synthetic_images": 1})
    for key in ("quantile", "max_coverage"):
        value = options.get(key)
        if value is not None and not (isinstance(value, int | float) and 0 < value <= 1):
            raise UserInputError(f"the dissect stage's {key} is a fraction in (0, 1], not {value!r}")


def scan_to_atlas(
    subject: Subject,
    source: ImageSource,
    out: str | Path,
    layers: LayerSpec,
    *,
    engine: str | Engine | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    **options,
) -> tuple[Atlas, ScanResult]:
    """Scan ``source`` through ``layers`` (any layer spec, resolved once) of ``subject`` on
    ``engine`` (None or ``"local"``, ``"ray"``, or an engine object such as
    ``RayEngine(workers=8)``) and store the result in the atlas at ``out``, holding the atlas's
    writer lock throughout (another writer is refused with
    :class:`~convscope.atlas.store.AtlasLockedError`). A local scan keeps its checkpoint in the
    atlas, a Ray scan its finished shards (removed once the scan is stored); ``resume=True``
    continues from them. ``options`` are :func:`convscope.scan.scanner.scan`'s keywords.

    Unknown layers and an engine that cannot run this subject on these images (Ray: random
    weights, images not from a path, Ray missing) fail before the atlas is created, replaced
    (``overwrite``) or locked."""
    run = resolve_engine(engine)
    refuse_bases(options, "scan_to_atlas")
    names = image_layers(subject, layers, "scan")
    for name in names:  # a module that runs several times must say which call, also before
        subject.layers.get(name)
    run.check(subject, source)
    with Atlas(out).lock():
        atlas = Atlas.create(out, model_spec(subject), source.spec, overwrite=overwrite, resume=resume)
        state = atlas.shards_dir("scan") if run.keeps_shards else atlas.checkpoint_path
        started = time.time()
        result = run.scan(subject, source, names, state=state, resume=resume, progress=progress, **options)
        atlas.write_scan(result, subject, started)
        if run.keeps_shards:
            shutil.rmtree(state, ignore_errors=True)
    return atlas, result


def features_to_atlas(
    subject: Subject,
    source: ImageSource,
    out: str | Path,
    layers: LayerSpec,
    *,
    pooling: str = "gap",
    engine: str | Engine | None = None,
    resume: bool = True,
    progress: Callable[[int, int], None] | None = None,
    **options,
):
    """Pool ``layers`` (any layer spec, resolved once) over ``source`` on ``engine`` into the
    feature folder of ``pooling`` in the atlas at ``out`` (created for this model and data, or
    one of theirs). Unknown layers and an engine that cannot run fail before anything is
    written. ``options`` are :func:`convscope.represent.features.extract_features`'s keywords.
    Returns the :class:`~convscope.represent.features.FeatureSet`."""
    run = resolve_engine(engine)
    names = image_layers(subject, layers, "features")
    run.check(subject, source)
    folder = Atlas(out).features_dir(pooling)  # a bad pooling name fails before the atlas exists
    with Atlas(out).lock():  # one writer of the atlas and its feature folders
        Atlas.for_model(out, model_spec(subject), source.spec)
        return run.features(
            subject, source, names, out=folder, pooling=pooling, resume=resume, progress=progress, **options
        )


def render_layers(
    atlas: Atlas, subject: Subject, source: ImageSource, result: ScanResult, units: int
) -> list[Path]:
    """:func:`render_units` for the first ``units`` units of every layer of the scan
    ``result`` stored in ``atlas``; the PNGs written."""
    paths: list[Path] = []
    for name in result.layers if units else []:
        paths += render_units(atlas, subject, source, name, range(min(units, result.channels[name])))
    return paths


def stored_dissection(atlas: Atlas, dataset: str, like, order: Sequence[str] = ()):
    """What a dissection report of ``dataset`` is drawn from: every layer stored in ``atlas``
    with the settings (IoU threshold, quantile, max coverage) of the dissection ``like``, in
    ``order`` (a model's layer names; others after them, in the order they were dissected).
    Returns that :class:`~convscope.dissect.Dissection` and the names of the layers stored with
    other settings (left out: their numbers do not compare)."""
    settings = (like.iou_threshold, like.quantile, like.max_coverage)
    stored = atlas.dissection_settings(dataset)
    other = [name for name, s in stored.items() if s != settings]
    d = atlas.dissection(dataset, settings=settings)
    rank = {name: i for i, name in enumerate(order)}
    names = sorted(d.layers, key=lambda n: (rank.get(n, len(rank)), list(d.layers).index(n)))
    d.layers = {n: d.layers[n] for n in names}
    return d, other


def render_units(
    atlas: Atlas,
    subject: Subject,
    source: ImageSource,
    layer: str,
    units: Sequence[int],
    criteria: Sequence[str] | None = None,
    direction: bool = False,
) -> list[Path]:
    """Write one top-K grid PNG per unit and criterion under ``atlas/render/LAYER/``; units with
    a stored empirical receptive field use its size where the theoretical one exceeds the image."""
    criteria = criteria or atlas.run()["config"]["criteria"]
    measured = {} if direction else {r["unit"]: r["size"] for r in atlas.empirical_rfs(layer)}
    paths = []
    for unit in units:
        vec = atlas.direction(layer, unit) if direction else None
        for crit in criteria:
            top = atlas.topk(layer, unit, crit, direction=direction)
            if not len(top):
                continue
            path = atlas.unit_render(layer, unit, crit, direction=direction)
            paths.append(
                save_image(
                    render_topk(subject, source, top, direction=vec, empirical=measured.get(unit)), path
                )
            )
    return paths


def reopen(
    atlas: Atlas, subject: Subject | None = None, source: ImageSource | None = None
) -> tuple[Subject, ImageSource]:
    """The subject and image source an atlas was made from (loaded again from its specs)."""
    if subject is None:
        from convscope.zoo import load_spec

        subject = load_spec(atlas.model_spec)
    if source is None:
        spec = atlas.source_spec
        if (spec.get("source") or spec.get("files")) is None:
            raise ConvscopeError("the atlas does not say where its images are; pass the source")
        source = open_spec(spec, transform=subject.transform)
        if len(source) != spec.get("images", len(source)):
            raise ConvscopeError(
                f"{spec['description']} now has {len(source)} images, the atlas was made from "
                f"{spec['images']}; rescan it"
            )
    return subject, source


def unit_top(
    atlas: Atlas,
    layer: str,
    unit: int,
    criterion: str = "max",
    *,
    direction: bool = False,
    render: bool = True,
    out: str | Path | None = None,
    device: str = "cpu",
) -> dict:
    """One unit's (or random direction's) top-K images stored in ``atlas``, as a record:
    ``layer``, ``unit``, ``unit_name`` (a classifier's class, else None), ``criterion``,
    ``direction``, ``top`` (rank, image index, name, score, y, x per image) and ``png``: with
    ``render``, the patch/heat-map grid written to ``out`` (default: the atlas's render path of
    that unit), the model and images reopened from the atlas on ``device``."""
    from convscope.inputs.images import display_name

    top = atlas.topk(layer, unit, criterion, direction=direction)
    layer = top.layer  # an alias (conv5) names the scanned layer's files and record
    png = None
    if render and len(top):
        subject, source = reopen(atlas)
        subject.to(device)
        vec = atlas.direction(layer, unit) if direction else None
        png = Path(out) if out is not None else atlas.unit_render(layer, unit, criterion, direction=direction)
        measured = [] if direction else [r["size"] for r in atlas.empirical_rfs(layer) if r["unit"] == unit]
        image = render_topk(subject, source, top, direction=vec, empirical=measured[0] if measured else None)
        save_image(image, png)
    rows = [
        {"rank": r, "image": int(i), "name": display_name(n), "score": float(s), "y": int(y), "x": int(x)}
        for r, (i, n, s, y, x) in enumerate(zip(top.images, top.names, top.scores, top.ys, top.xs))
    ]
    names = [] if direction else atlas.unit_names().get(top.layer, [])
    return {
        "layer": layer,
        "unit": unit,
        "unit_name": names[unit] if 0 <= unit < len(names) else None,
        "criterion": criterion,
        "direction": direction,
        "png": str(png) if png else None,
        "top": rows,
    }


def open_concepts(
    concepts: str,
    subject: Subject,
    out: str | Path,
    *,
    images: ImageSource | None = None,
    color_table: str | Path | None = None,
    synthetic_images: int = 256,
    seed: int = 0,
    limit: int | None = None,
):
    """The concept dataset ``concepts`` names and its short name in the atlas: a Broden-format
    directory (named after the folder), ``"auto-color"`` (the colour names of ``images``, default
    the bundled samples, by the van de Weijer ``color_table`` or colour prototypes) or
    ``"synthetic"`` (``synthetic_images`` generated shapes, colours and textures at the subject's
    input size, written once into the atlas folder ``out``). ``limit``: the first N images."""
    from convscope.dissect import BrodenDataset, ColorConcepts, ColorNamer, make_synthetic_broden
    from convscope.inputs.sources import open_images

    size = subject.input_size[0]
    if concepts == "synthetic":
        root = Path(out) / "concepts" / f"synthetic-{synthetic_images}-{size}-{seed}"
        if not (root / "index.csv").exists():
            make_synthetic_broden(root, n=synthetic_images, size=size, seg=size // 2, seed=seed)
        return BrodenDataset(root, limit=limit), "synthetic"
    if concepts == "auto-color":
        namer = ColorNamer.from_file(color_table) if color_table else ColorNamer.prototypes()
        source = images if images is not None else open_images("convscope:samples")
        if limit is not None:
            source = source.subset(range(min(limit, len(source))))
        return ColorConcepts(source, seg=size // 2, namer=namer), "auto-color"
    path = Path(concepts)
    if not path.is_dir():
        raise UserInputError(
            f"--concepts {concepts!r} is not a Broden directory, 'auto-color' or 'synthetic'"
        )
    return BrodenDataset(path, limit=limit), path.resolve().name


@dataclass
class DissectedAtlas:
    """What :func:`dissect_to_atlas` did: the ``atlas`` written, the new dissection ``result``,
    the concept set's name ``concepts`` in the atlas, and ``other``: layers the atlas holds on
    that set with other settings (left out of the report's charts)."""

    atlas: Atlas
    result: Dissection
    concepts: str
    other: list[str]


def dissect_to_atlas(
    subject: Subject,
    concepts: str,
    out: str | Path,
    layers: LayerSpec,
    *,
    engine: str | Engine | None = None,
    resume: bool = False,
    progress: Callable[[int, int], None] | None = None,
    units: int = 12,
    images: ImageSource | None = None,
    color_table: str | Path | None = None,
    synthetic_images: int = 256,
    seed: int = 0,
    limit: int | None = None,
    **options,
) -> DissectedAtlas:
    """Network dissection of ``layers`` (any layer spec) of ``subject`` on the concept set
    ``concepts`` (see :func:`open_concepts`, which takes ``images`` … ``limit``) on ``engine``,
    stored in the atlas at ``out`` (created for this model, or added to), with its report under
    the atlas's dissection folder: charts and summary over every layer the atlas holds on these
    concepts with the same settings, and the figures of the ``units`` best units per layer.
    ``options`` are :func:`convscope.dissect.dissect`'s keywords (``quantile``,
    ``iou_threshold``, ``max_coverage``, ``batch_size``, ``workers``, ``accel``).

    Unknown layers, an unknown engine, unusable concepts and an engine that cannot run them fail
    before the atlas is written (the synthetic concepts are generated after the engine is
    known)."""
    refuse_bases(options, "dissect_to_atlas")
    names = image_layers(subject, layers, "dissect")
    run = resolve_engine(engine)
    data, set_name = open_concepts(
        concepts,
        subject,
        out,
        images=images,
        color_table=color_table,
        synthetic_images=synthetic_images,
        seed=seed,
        limit=limit,
    )
    run.check(subject, data)
    spec = {"description": f"concepts: {set_name}", **data.spec}
    with Atlas(out).lock():  # one writer: the dissection and its report are written together
        atlas = Atlas.for_model(out, model_spec(subject), spec)
        state = atlas.shards_dir("dissect")
        result = run.dissect(subject, data, names, state=state, resume=resume, progress=progress, **options)
        atlas.write_dissection(result, set_name)
        stored, other = stored_dissection(atlas, set_name, result, subject.layers.names())
        result.write_report(
            atlas,
            set_name,
            subject,
            data,
            units=units,
            summaries=[stored.summary(n) for n in stored.layers],
            other_settings=other,
        )
    return DissectedAtlas(atlas, result, set_name, other)


def compare_dissections(
    items: Sequence[str | Path | tuple[str | Path, str | None]],
    concepts: str | None = None,
    unique: bool = True,
) -> DissectionComparison:
    """The dissected layers ``items`` of several atlases (or of one) side by side: each an
    atlas folder, ``"ATLAS:LAYER"`` or an ``(atlas, layer)`` pair; without a layer, the last one
    dissected. ``concepts``: the concept set (needed when an atlas holds several); ``unique``:
    chart unique concepts, else every detector unit."""
    summaries, names = [], []
    for item in items:
        if isinstance(item, tuple):
            path, layer = item
        elif Path(item).exists():
            path, layer = item, ""
        else:
            path, _, layer = str(item).partition(":")
        d = Atlas.open(path, readonly=True).dissection(concepts)
        layer = layer or list(d.layers)[-1]
        if layer not in d.layers:
            raise UserInputError(f"{path} has no dissection of {layer!r}; it has {list(d.layers)}")
        summaries.append(d.summary(layer))
        names.append(f"{d.model}\n{layer}")
    return DissectionComparison(summaries, names, unique=unique)


def compare_scans(
    before: str | Path,
    after: str | Path,
    layer: str,
    units: Sequence[int],
    out: str | Path,
    k: int = 6,
) -> list[tuple[str, int, Path]]:
    """For each of ``units`` of ``layer`` (a name or alias of the scanned layer), its ``k`` top
    images in the atlas ``before`` beside those in the atlas ``after`` (e.g. fine-tuning), one
    PNG per unit in the folder ``out`` (``LAYER_unitNNNN.png``). Returns (layer name, unit, PNG)
    per unit."""
    from convscope.train.report import compare_scans_figure

    a, b = Atlas.open(before, readonly=True), Atlas.open(after, readonly=True)
    sources = open_spec(a.source_spec), open_spec(b.source_spec)
    name = a.layer(layer)["name"]
    return [
        (
            name,
            u,
            save_image(
                compare_scans_figure(a, b, name, u, k, sources=sources), Path(out) / f"{name}_unit{u:04d}.png"
            ),
        )
        for u in units
    ]


def scan_split(subject: Subject, split, out: str | Path, layer: LayerSpec, device: str = "cpu") -> Atlas:
    """Scan the images of ``split`` (a :class:`~convscope.train.data.TensorImages`: uint8
    (N, 3, H, W) tensors, already resized and cropped for the model) through ``layer`` of
    ``subject`` on ``device`` into a new atlas at ``out`` (replacing one there; top 8 per unit).
    The images are written once as PNGs, one folder per class, into ``scan_images/`` beside
    ``out``, so that the atlas can show them again."""
    from dataclasses import replace

    from PIL import Image

    from convscope.inputs.sources import open_images

    img_dir = Path(out).parent / "scan_images"
    if not img_dir.exists():
        for i, (x, y) in enumerate(zip(split.images, split.labels)):
            save_image(
                Image.fromarray(x.permute(1, 2, 0).numpy()), img_dir / split.classes[int(y)] / f"{i:05d}.png"
            )
    # the images are already what the model sees (its own resize and crop): scanned as they are
    pre = replace(subject.preprocess, resize=None, mode="squash")
    seen = Subject(subject.model, pre, subject.labels, name=subject.name)
    source = open_images(img_dir, transform=seen.transform)
    seen.to(device)
    atlas, _ = scan_to_atlas(
        seen, source, out, layer, overwrite=True, k=8, batch_size=16, threshold_sample=32
    )
    return atlas


def finetune_and_scan(
    subject: Subject,
    data: str | Path,
    out: str | Path,
    freeze_blocks: Sequence[int] = (0,),
    *,
    scan_layer: LayerSpec | None = None,
    device: str = "cpu",
    **options,
):
    """:func:`convscope.train.workflow.finetune_run` (``options`` are its keywords) into the
    folder ``out``; with ``scan_layer`` (one layer), the test images are also scanned through it
    before fine-tuning (atlas ``out/scan_before``) and after the last run (``out/scan_after``),
    for ``convscope compare-scans``. An unknown ``scan_layer`` fails before anything is written.
    Returns the :class:`~convscope.train.workflow.FinetuneSweep`."""
    from convscope.train.workflow import finetune_run

    out = Path(out)
    if scan_layer is None:
        return finetune_run(subject, data, out, freeze_blocks, device=device, **options)
    layer = subject.layers.select(scan_layer)  # resolved once, and checked before anything is written
    return finetune_run(
        subject,
        data,
        out,
        freeze_blocks,
        device=device,
        before=lambda s, test: scan_split(s, test, out / "scan_before", layer, device),
        after=lambda s, test: scan_split(s, test, out / "scan_after", layer, device),
        **options,
    )
