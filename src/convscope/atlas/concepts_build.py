"""Fill an atlas with a learned concept set: fit the dictionary, scan each concept's top-K images,
measure its importance per class, label it by dissection and draw its feature visualisation,
each stored in the atlas as it is done (``convscope concepts``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from convscope.atlas.build import model_spec, open_concepts
from convscope.atlas.cleanup import entries, undo_failed_build
from convscope.atlas.dictionaries import check_name, default_name
from convscope.atlas.store import Atlas, AtlasConflictError
from convscope.errors import UserInputError
from convscope.layers import LayerSpec
from convscope.subject import Subject
from convscope.verbs import image_layers

# what every stage takes from the options; the rest are fit_concepts' own
SHARED = ("batch_size", "workers", "accel")
PICTURES = {"steps": 64, "size": 96, "batch": 8}  # cheap defaults: a few seconds per batch on a CPU


@dataclass
class ConceptsBuilt:
    """What :func:`concepts_to_atlas` did: the ``atlas`` written, the dictionary's ``name`` in it,
    the :class:`~convscope.concepts.ConceptSet` ``concepts``, and what was stored beside it:
    ``scan`` (the concept scan's :class:`~convscope.scan.result.ScanResult`, None when reused),
    ``importance``, ``labels`` (a :class:`~convscope.dissect.Dissection`) on ``label_set``,
    ``pictures`` (feature visualisations written). ``reused``: stages taken from the atlas
    (``resume``)."""

    atlas: Atlas
    name: str
    concepts: object
    scan: object = None
    importance: object = None
    labels: object = None
    label_set: str | None = None
    pictures: int = 0
    reused: list[str] = field(default_factory=list)

    def headline(self) -> str:
        done = ["dictionary"]
        done += ["scan"] if self.scan is not None or "scan" in self.reused else []
        done += ["importance"] if self.importance is not None else []
        done += [f"labels ({self.label_set})"] if self.labels is not None else []
        done += [f"{self.pictures} pictures"] if self.pictures else []
        return f"{self.concepts.headline()}; stored as {self.name!r}: {', '.join(done)}"


def concepts_to_atlas(
    atlas: str | Path | Atlas,
    subject: Subject,
    data,
    layers: LayerSpec,
    *,
    method: str = "nmf",
    n: int = 32,
    name: str | None = None,
    k: int = 16,
    seed: int = 0,
    concept_data=None,
    visualize: bool | Mapping = True,
    resume: bool = False,
    overwrite: bool = False,
    scan_options: Mapping | None = None,
    progress: Callable[..., None] | None = None,
    **options,
) -> ConceptsBuilt:
    """Learn ``n`` concepts of one layer (``layers``: any layer spec naming exactly one) of
    ``subject`` from the images ``data`` by ``method`` and store them in the atlas ``atlas``
    (created for this model and data, or one of this model's) under ``name`` (default
    :func:`~convscope.atlas.dictionaries.default_name`, ``nmf32-bn2``), holding the atlas's
    writer lock throughout. Then, each stored as it is done: the concept scan (the top-``k``
    images and patches of each concept,
    :func:`~convscope.concepts.topk.scan_concepts`), each concept's importance per class
    (:func:`~convscope.concepts.importance.concept_importance`), labels by dissection on
    ``concept_data`` (a Broden-format folder, ``"auto-color"`` (the colour names of ``data``),
    ``"synthetic"``, or a concept dataset object; None: no labels) and, with ``visualize`` (True
    or a mapping of :func:`~convscope.synthesis.engine.optimize` settings: ``steps`` (64),
    ``size`` (96), ``batch`` (8 images per run), ``lr``...), one feature visualisation per
    concept: the direction objective along its dictionary row (unit norm).

    ``options``: :func:`~convscope.concepts.fit_concepts`' keywords (``per_image``,
    ``max_samples``, ``device``, ``checkpoint_every`` (also the scan's), the method's
    settings); ``batch_size``, ``workers`` and ``accel`` go to every stage; ``scan_options``:
    the concept scan's own (:func:`~convscope.scan.scanner.scan`'s ``criteria``,
    ``threshold_sample``...).
    ``progress(done, total, note)``: ``note`` names the stage (collecting, scanning,
    importance, labels, pictures; each starts with ``(0, 0, stage)``) and ``done``/``total``
    count images (pictures: concepts).

    A name the atlas already holds is refused unless ``resume`` (the stored concept set and its
    scan are reused when they match; the activation collection and the scan continue from
    their checkpoints in the atlas) or ``overwrite`` (replaced). An unknown layer, a layer spec
    naming several layers, an unknown method and unusable concept data fail before the atlas is
    created or written."""
    from convscope.concepts.activations import as_source
    from convscope.concepts.dictionary import check_method

    names = image_layers(subject, layers, "concepts")
    if len(names) != 1:
        raise UserInputError(f"concepts are learned at one layer; {layers!r} names {len(names)}")
    layer = names[0]
    subject.layers.get(layer)  # a module that runs several times must say which call
    check_method(method, n)
    name = check_name(name) if name is not None else default_name(layer, method, n)
    source = as_source(subject, data)
    shared = {key: options[key] for key in SHARED if key in options}
    out = atlas.path if isinstance(atlas, Atlas) else Path(atlas)
    labelled = None
    if concept_data is not None:  # checked (and the synthetic set generated) before the atlas is written
        labelled = _concept_data(concept_data, subject, out, source, seed)
    report = _stages(progress)
    before = entries(out)
    try:
        return _build(
            out, subject, source, layer, method, n, name, k, seed, labelled, visualize, resume,
            overwrite, scan_options, shared, report, options,
        )  # fmt: skip
    except BaseException as e:
        undo_failed_build(out, before, refused=isinstance(e, UserInputError), checkpoints=".concepts-*.ckpt")
        raise


def _build(
    out, subject, source, layer, method, n, name, k, seed, labelled, visualize, resume, overwrite,
    scan_options, shared, report, options,
) -> ConceptsBuilt:  # fmt: skip
    with Atlas(out).lock():
        store = Atlas.for_model(out, model_spec(subject), source.spec)
        stored = {d["name"]: d for d in store.dictionaries()}.get(name)
        if stored is not None and not (resume or overwrite):
            raise AtlasConflictError(
                f"{store.path} already holds the concept set {name!r}; pass --resume to continue "
                "it, --overwrite to replace it, or choose another --name"
            )
        fit_ckpt, scan_ckpt = checkpoint_path(store, name, "fit"), checkpoint_path(store, name, "scan")
        if not resume:
            for path in (fit_ckpt, scan_ckpt):
                path.unlink(missing_ok=True)
        built = ConceptsBuilt(store, name, None)

        wanted = build_settings(seed, k, options, scan_options)
        if stored is not None and resume and not overwrite:
            concepts = store.dictionary(name)
            _check_same(concepts, name, layer, method, n)
            _check_settings(store.dictionary_settings(name), wanted, name)
            built.reused.append("dictionary")
        else:
            from convscope.concepts.dictionary import fit_concepts

            concepts = fit_concepts(
                subject,
                source,
                layer,
                method,
                n,
                seed=seed,
                progress=report("collecting"),
                fit_progress=_when_called(report, "fitting"),
                checkpoint=fit_ckpt,
                resume=resume,
                **options,
            )
            store.write_dictionary(name, concepts, wanted)
            stored = None  # nothing stored for the old set survives its replacement
        fit_ckpt.unlink(missing_ok=True)
        built.concepts = concepts

        if stored is not None and stored.get("scanned"):
            built.reused.append("scan")
        else:
            from convscope.concepts.topk import scan_concepts

            built.scan = scan_concepts(
                subject,
                source,
                concepts,
                k=k,
                seed=seed,
                checkpoint=scan_ckpt,
                checkpoint_every=options.get("checkpoint_every", 30.0),
                resume=resume,
                progress=report("scanning"),
                **{**shared, **(scan_options or {})},
            )
            store.write_dictionary_scan(name, built.scan)
            if store.source_spec == json.loads(json.dumps(source.spec, sort_keys=True)):  # its own images
                store.register_images(built.scan)
        scan_ckpt.unlink(missing_ok=True)

        built.importance = _importance(subject, source, concepts, shared, report)
        store.write_dictionary_importance(name, built.importance)

        if labelled is not None:
            built.labels, built.label_set = _labels(subject, labelled, concepts, shared, report)
            store.write_dictionary_labels(name, built.labels, built.label_set)

        if visualize:
            settings = {**PICTURES, **(dict(visualize) if isinstance(visualize, Mapping) else {})}
            for i, image in _pictures(subject, concepts, seed, settings, shared, report):
                store.write_dictionary_picture(name, i, image)
                built.pictures += 1
    return built


def check_options(method: str, n: int, options: Mapping) -> None:
    """Refuse (one-line :class:`UserInputError`, before any work) an unknown ``method``, ``n``
    < 1, an option :func:`concepts_to_atlas` does not take (``options``: its keywords less the
    atlas, subject, data, layers, method, n, seed, resume and overwrite; ``fit_concepts``' and
    the method's settings pass through), a ``k`` < 1 and ``visualize`` settings that are not
    :func:`~convscope.synthesis.engine.optimize`'s (or steps, size, batch < 1)."""
    from convscope.atlas.build import check_counts, check_option_names, takes
    from convscope.concepts.dictionary import check_method, fit_concepts, method_options
    from convscope.synthesis.engine import optimize

    check_method(method, n)
    own = takes(concepts_to_atlas, "atlas", "subject", "data", "layers", "method", "n", "seed", "resume")
    own -= {"overwrite", "progress"}
    fit = takes(fit_concepts, "subject", "data", "layer", "method", "n", "seed", "progress", "fit_progress")
    fit -= {"checkpoint", "resume"}
    check_option_names("concepts", options, own | fit | method_options(method))
    check_counts(
        "concepts", options, {"k": 1, "per_image": 1, "max_samples": 1, "batch_size": 1, "workers": 0}
    )
    pictures = options.get("visualize", True)
    if isinstance(pictures, Mapping):
        drop = ("subject", "objective", "labels", "init", "progress", "seed", "accel")
        check_option_names("concepts", [f"visualize.{key}" for key in pictures],
                           {f"visualize.{key}" for key in takes(optimize, *drop)})  # fmt: skip
        check_counts("concepts", {f"visualize.{k}": v for k, v in pictures.items()},
                     {"visualize.steps": 1, "visualize.size": 1, "visualize.batch": 1})  # fmt: skip
    elif not isinstance(pictures, bool | None):
        raise UserInputError(
            f"the concepts stage's visualize is true, false or optimize settings, not {pictures!r}"
        )


def checkpoint_path(atlas: Atlas, name: str, stage: str) -> Path:
    """``ATLAS/.concepts-NAME-STAGE.ckpt``: the checkpoint of the activation collection
    (``fit``) or the concept scan (``scan``) of the dictionary ``name``, removed once its result
    is stored (a dot-file: private to convscope, never served)."""
    return atlas.path / f".concepts-{check_name(name)}-{stage}.ckpt"


def _stages(progress: Callable[..., None] | None):
    """``report(stage)``: a ``progress(done, total)`` callback for one stage that passes the
    stage's name on as the note."""

    def report(stage: str):
        if progress is None:
            return None
        progress(0, 0, stage)  # a new phase (its own count and rate), shown before its first batch

        def tick(done, total=None, note=None):
            progress(done, total, f"{stage}: {note}" if note else stage)

        return tick

    return report


def _when_called(report, stage: str):
    """A progress callback that opens ``stage`` on its first call (not when it is made: the fit's
    callback is made before the collection starts)."""
    tick = None

    def call(done, total):
        nonlocal tick
        if tick is None:
            tick = report(stage) or (lambda done, total: None)
        tick(done, total)

    return call


# fit_concepts keywords that change where the work runs or how it is reported, not what it finds
NOT_SETTINGS = (*SHARED, "device", "checkpoint_every")


def build_settings(seed: int, k: int, options: Mapping, scan_options: Mapping | None) -> dict:
    """What a stored concept set was built with, as JSON: ``seed``, ``k``, ``per_image`` and
    ``max_samples`` (fit_concepts' defaults filled in), the method's ``options`` and the scan's
    ``scan_options``; a ``--resume`` must ask for the same."""
    import inspect

    from convscope.concepts.dictionary import fit_concepts

    defaults = inspect.signature(fit_concepts).parameters
    fit = {key: options.get(key, defaults[key].default) for key in ("per_image", "max_samples")}
    method = {key: v for key, v in options.items() if key not in (*NOT_SETTINGS, *fit)}
    plain = json.loads(
        json.dumps({"method_options": method, "scan_options": dict(scan_options or {})}, default=repr)
    )
    return {"seed": int(seed), "k": int(k), **fit, **plain}


def _check_settings(stored: dict | None, wanted: dict, name: str) -> None:
    if stored is None:  # built before settings were stored: nothing to compare with
        return
    differ = [key for key in sorted({*stored, *wanted}) if stored.get(key) != wanted.get(key)]
    if differ:
        said = ", ".join(f"{key} {stored.get(key)!r} (now {wanted.get(key)!r})" for key in differ)
        raise AtlasConflictError(
            f"the atlas's concept set {name!r} was built with {said}; resume it with those settings, "
            "pass --overwrite to replace it or choose another --name"
        )


def _concept_data(concept_data, subject: Subject, out: Path, source, seed: int):
    """``(dataset, name)`` of the concept data: a string as ``convscope dissect --concepts``
    takes it (auto-color names the colours of the concept images ``source``), or a dataset."""
    if isinstance(concept_data, str):
        return open_concepts(concept_data, subject, out, images=source, seed=seed)
    if isinstance(concept_data, tuple):
        return concept_data
    root = getattr(concept_data, "root", None)
    return concept_data, Path(root).name if root is not None else type(concept_data).__name__


def _check_same(concepts, name: str, layer: str, method: str, n: int) -> None:
    got = (concepts.layer, concepts.method, concepts.n)
    if got != (layer, method, n):
        raise AtlasConflictError(
            f"the atlas's concept set {name!r} is {got[2]} {got[1]} concepts of {got[0]}, not {n} "
            f"{method} of {layer}; pass --overwrite to replace it or choose another --name"
        )


def _importance(subject, source, concepts, shared, report):
    """Each concept's importance per class."""
    from convscope.concepts.importance import concept_importance

    return concept_importance(
        subject,
        source,
        concepts,
        batch_size=shared.get("batch_size", 32),
        workers=shared.get("workers"),
        progress=report("importance"),
    )


def _labels(subject, labelled, concepts, shared, report):
    """``(dissection, name)``: the dissection of the concepts on ``labelled`` (dataset, name)."""
    from convscope.concepts.labels import label_concepts

    data, set_name = labelled
    return label_concepts(subject, data, concepts, progress=report("labels"), **shared), set_name


def _pictures(subject, concepts, seed, settings, shared, report):
    """``(concept, PIL image)`` of each concept's feature visualisation: the direction objective
    along the direction its code reads (:meth:`ConceptSet.directions`), ``settings["batch"]``
    concepts per optimisation."""
    from PIL import Image

    from convscope.render import to_uint8
    from convscope.synthesis.visualize import visualize_directions

    settings = dict(settings)
    batch = max(1, int(settings.pop("batch")))
    tick = report("pictures")
    for start in range(0, concepts.n, batch):
        chunk = range(start, min(start + batch, concepts.n))
        directions = concepts.directions(chunk)
        found = visualize_directions(
            subject, directions, seed=seed + start, accel=shared.get("accel"), **settings
        )
        for i, image in zip(chunk, found.images):
            yield i, Image.fromarray(to_uint8(image))
        if tick is not None:
            tick(chunk.stop, concepts.n)
