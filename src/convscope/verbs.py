"""One verb per family, exported at the package top level (``convscope.scan(...)``).

Each verb is a thin, documented entry point over its family's own function, of one shape::

    verb(subject, data | images, layers, ..., engine=None, progress=None) -> Result

- ``layers`` is any layer spec (:meth:`~convscope.layers.LayerTable.select`: names, aliases,
  globs, comma lists, ``stages``, ``all-conv``, callables), resolved ONCE here and passed down
  as exact addresses; an unknown name fails before anything is written or started.
- ``engine`` (the dataset reductions: :func:`scan`, :func:`features`, :func:`dissect`): None or
  ``"local"`` (this process), ``"ray"`` (``RayEngine()`` with its defaults) or an engine object
  such as ``convscope.scale.RayEngine(address="auto", workers=8)``.
- ``progress``: None or a callable ``(done, total)``; compute never prints.

Where a family's function has that shape already it is exported as it is (:func:`explain`,
:func:`evaluate`, :func:`class_model`, :func:`fool`, :func:`train`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from convscope.adversarial import Adversarial, fgsm, fool, minimal, pgd
from convscope.attribution import evaluate, explain
from convscope.concepts.result import ConceptSet
from convscope.dissect.result import Dissection
from convscope.empirical import EmpiricalRF, Stimuli
from convscope.errors import UserInputError
from convscope.layers import LayerSpec, LayerTable
from convscope.represent.features import FeatureSet
from convscope.represent.probe import ProbeResult
from convscope.represent.projection import Projection
from convscope.represent.retrieval import Neighbors
from convscope.represent.similarity import SimilarityMatrix
from convscope.scale.engine import Engine, resolve_engine
from convscope.scan.result import ScanResult
from convscope.subject import Subject
from convscope.synthesis import Dream, Inversion, Synthesis, class_model
from convscope.train.loop import train

Progress = Callable[[int, int], None]
EngineLike = str | Engine | None

__all__ = [
    "attack",
    "class_model",
    "compare",
    "concepts",
    "dissect",
    "dream",
    "empirical_rf",
    "evaluate",
    "explain",
    "features",
    "fool",
    "invert",
    "neighbors",
    "probe",
    "project",
    "scan",
    "stimuli",
    "train",
    "visualize",
]


def one_layer(subject: Subject, layers: LayerSpec, verb: str) -> str:
    """The single address a verb that works on one layer was given (any layer spec)."""
    names = subject.layers.select(layers)
    if len(names) != 1:
        raise UserInputError(
            f"{verb} works on one layer; {layers!r} names {len(names)}: {', '.join(names[:5])}"
        )
    return names[0]


def image_layers(subject: Subject, layers: LayerSpec, verb: str) -> list[str]:
    """The addresses of ``layers`` for a verb that reduces per image (scan, features, dissect);
    a layer whose output's leading axis is not the image batch (windowed attention folds its
    windows into it) is a one-line error naming the block that holds it."""
    names = subject.layers.select(layers)
    for name in names:
        infos = subject.layers.calls(name) or [subject.layers.get(name)]
        if any(not i.per_image for i in infos):
            parent = name
            while "." in parent:
                parent = parent.rsplit(".", 1)[0]
                calls = subject.layers.calls(parent)
                if calls and all(c.per_image and c.shape is not None for c in calls):
                    break
            else:
                parent = None
            hint = f"; use an enclosing layer such as {parent}" if parent else ""
            raise UserInputError(
                f"{verb}: the output of {name} holds attention windows folded into the batch, "
                f"not one map per image{hint}"
            )
    return names


# -- dataset reductions (engines) ----------------------------------------------------------------
def scan(
    subject: Subject,
    data,
    layers: LayerSpec = "stages",
    *,
    engine: EngineLike = None,
    progress: Progress | None = None,
    state: str | os.PathLike | None = None,
    resume: bool = False,
    **options,
) -> ScanResult:
    """Scan the image source ``data`` (:func:`convscope.inputs.sources.open_images`): the top-K
    images and patches of every unit of ``layers``, per criterion, and per-unit statistics.
    ``state``: where a killed scan is resumed from with ``resume=True`` (a checkpoint file on
    the local engine, a folder of shards on Ray). ``options``: the keywords of
    :func:`convscope.scan.scanner.scan` (k, criteria, directions, seed, batch_size, accel, and
    ``bases={layer: basis}`` to scan a basis's codes, such as a concept set's encoder
    :meth:`ConceptSet.basis`, as the layer's units).
    To store the scan in an atlas, use :func:`convscope.atlas.scan_to_atlas`."""
    run = resolve_engine(engine)
    names = image_layers(subject, layers, "scan")
    run.check(subject, data)
    return run.scan(subject, data, names, state=state, resume=resume, progress=progress, **options)


def features(
    subject: Subject,
    data,
    layers: LayerSpec = "stages",
    *,
    pooling: str = "gap",
    out: str | os.PathLike | None = None,
    engine: EngineLike = None,
    progress: Progress | None = None,
    resume: bool = True,
    **options,
) -> FeatureSet:
    """One pooled vector per image of ``data`` per layer (``pooling``: gap, mac, spoc, gem),
    as a :class:`~convscope.represent.features.FeatureSet` (N, C) per layer; with ``out``,
    streamed to a feature folder there (:mod:`convscope.represent.folder`), continued when
    ``resume``. ``options``: p (GeM exponent), batch_size, workers, accel."""
    run = resolve_engine(engine)
    names = image_layers(subject, layers, "features")
    run.check(subject, data)
    return run.features(
        subject, data, names, out=out, pooling=pooling, resume=resume, progress=progress, **options
    )


def dissect(
    subject: Subject,
    data,
    layers: LayerSpec = "stages",
    *,
    engine: EngineLike = None,
    progress: Progress | None = None,
    state: str | os.PathLike | None = None,
    resume: bool = False,
    **options,
) -> Dissection:
    """Network dissection of ``layers`` against the concept data ``data``
    (:func:`convscope.dissect.open_concept_data`, a Broden folder, auto-colour or synthetic):
    every unit's IoU with every concept, as a :class:`~convscope.dissect.result.Dissection`.
    ``state`` (Ray): a folder for the finished shards, reused with ``resume=True``.
    ``options``: quantile, iou_threshold, max_coverage, top, batch_size, workers, accel, and
    ``bases={layer: basis}`` to dissect a basis's codes (a concept set's encoder) as its units."""
    run = resolve_engine(engine)
    names = image_layers(subject, layers, "dissect")
    run.check(subject, data)
    return run.dissect(subject, data, names, state=state, resume=resume, progress=progress, **options)


def concepts(
    subject: Subject,
    data,
    layers: LayerSpec,
    *,
    method: str = "nmf",
    n: int = 32,
    progress: Progress | None = None,
    **options,
) -> ConceptSet:
    """Learn ``n`` concepts of the one layer ``layers`` names from the images of ``data``
    (``method``: nmf, pca, ica, sae-topk, sae-batchtopk), as a
    :class:`~convscope.concepts.result.ConceptSet` (dictionary, encoder, reconstruction error,
    sparsity, dead atoms). ``options``: those of :func:`convscope.concepts.fit_concepts`
    (per_image, max_samples, seed, device, batch_size...) and of the method."""
    from convscope.concepts.dictionary import check_method, fit_concepts

    layer = one_layer(subject, layers, "concepts")
    check_method(method, n)
    return fit_concepts(subject, data, layer, method, n, progress=progress, **options)


# -- synthesis ------------------------------------------------------------------------------------
def visualize(
    subject: Subject,
    layers: LayerSpec,
    units: Sequence[int] = (0,),
    *,
    directions=None,
    progress=None,
    **options,
) -> Synthesis:
    """Feature visualisation: one image per unit of the one layer ``layers`` names that
    maximises it (``directions``: :class:`~convscope.units.Direction` objects of that layer
    instead of units). ``options``: those of :func:`convscope.synthesis.visualize_units`."""
    from convscope.synthesis import visualize_directions, visualize_units

    layer = one_layer(subject, layers, "visualize")
    if progress is not None:
        options["progress"] = progress
    if directions is not None:
        return visualize_directions(subject, list(directions), **options)
    return visualize_units(subject, layer, list(units), **options)


def invert(subject: Subject, images, layers: LayerSpec, *, progress=None, **options) -> Inversion:
    """Reconstruct the image ``images`` from each of ``layers`` (any spec) by optimising an
    input whose activations match it. ``options``: restarts, tv, beta, steps, lr, seed."""
    from convscope.synthesis import invert as run

    return run(subject, images, subject.layers.select(layers), progress=progress, **options)


def dream(subject: Subject, images, layers: LayerSpec, *, frames: int = 0, **options) -> Dream:
    """DeepDream: amplify what the one layer ``layers`` sees in the image ``images``, over
    octaves; ``frames`` > 0 makes a zoom-in sequence. ``options``: octaves, steps, seed..."""
    from convscope.synthesis import dream as run
    from convscope.synthesis import dream_zoom

    layer = one_layer(subject, layers, "dream")
    if frames:
        return dream_zoom(subject, images, layer, frames=frames, **options)
    return run(subject, images, layer, **options)


# -- adversarial ----------------------------------------------------------------------------------
ATTACKS = ("pgd", "pgd-l2", "fgsm", "szegedy")


def attack(subject: Subject, images, *, method: str = "pgd", target=None, **options) -> Adversarial:
    """An adversarial perturbation of ``images`` (paths, PIL, arrays or a batch): ``method``
    ``pgd`` (L-inf), ``pgd-l2``, ``fgsm`` or ``szegedy`` (the minimal L2 perturbation to
    ``target``, one image at a time). ``options``: those of :func:`convscope.adversarial.pgd`
    (eps, alpha, steps, random_start, seed), :func:`~convscope.adversarial.fgsm` (eps) or
    :func:`~convscope.adversarial.minimal` (steps, lr, seed)."""
    from convscope.errors import NameNotFoundError

    if method in ("pgd", "pgd-l2"):
        return pgd(subject, images, norm="l2" if method == "pgd-l2" else "linf", target=target, **options)
    if method == "fgsm":
        return fgsm(subject, images, target=target, **options)
    if method == "szegedy":
        if target is None:
            raise UserInputError("the szegedy attack needs a target class")
        return minimal(subject, images, target, **options)
    raise NameNotFoundError(method, ATTACKS, what="attack")


# -- empirical receptive fields --------------------------------------------------------------------
def empirical_rf(subject: Subject, images, layers: LayerSpec, channel: int, **options) -> EmpiricalRF:
    """The empirical receptive field of unit ``channel`` of the one layer ``layers`` names,
    from discrepancy maps over ``images`` (a preprocessed batch (N, 3, H, W)).
    ``options``: threshold, window, and those of :func:`convscope.empirical.discrepancy_map`."""
    from convscope.empirical import empirical_rf as run

    return run(subject, images, one_layer(subject, layers, "empirical_rf"), channel, **options)


def stimuli(subject: Subject, patch, layers: LayerSpec, channel: int, **options) -> Stimuli:
    """Manufactured-stimulus test of unit ``channel`` of the one layer ``layers`` names with
    ``patch`` (its best image patch): the patch pasted over a grid, shuffled and blocked.
    ``options``: stride, background, n, blocks, batch, seed."""
    from convscope.empirical import stimuli as run

    return run(subject, patch, one_layer(subject, layers, "stimuli"), channel, **options)


# -- representations --------------------------------------------------------------------------------
def _features_of(data: FeatureSet | Mapping[str, np.ndarray], layers) -> dict[str, np.ndarray]:
    """Per layer (N, C) rows of readable images: of a FeatureSet (``layers``: a spec over its
    layers, None: all) or of a mapping as it is."""
    if isinstance(data, FeatureSet):
        return {n: data.get(n) for n in data.select(layers)}
    names = list(data) if layers is None else _stored(list(data), layers)
    return {n: np.asarray(data[n]) for n in names}


def _stored(have: list[str], layers: LayerSpec) -> list[str]:
    """The stored layers of ``have`` that ``layers`` names (see :meth:`FeatureSet.select`)."""
    if layers is None or layers == "all":
        return list(have)
    return LayerTable.from_names(have, what="layer with features").select(layers)


def _one_stored(data: FeatureSet, layers, verb: str) -> str:
    """The one stored layer of ``data`` that ``layers`` names (None: its only layer)."""
    names = data.select(layers)
    if len(names) != 1:
        raise UserInputError(f"{verb} works on one layer; choose one of {', '.join(names)}")
    return names[0]


def probe(data: FeatureSet | Mapping[str, np.ndarray], labels=None, layers=None, **options) -> ProbeResult:
    """Linear probe accuracy of each layer's features (a FeatureSet, or a mapping layer ->
    (N, C) with ``labels`` (N,)). ``layers``: a spec over the stored layers (names, globs,
    comma lists, ``"all"``, a callable ``LayerInfo -> bool``; None: all).
    ``options``: train, test, test_fraction, classifier, c, seed."""
    from convscope.represent.probe import linear_probe

    if labels is None:
        if not isinstance(data, FeatureSet):
            raise UserInputError("probe needs labels for features that are not a FeatureSet")
        labels = data.valid_labels()
    return linear_probe(_features_of(data, layers), np.asarray(labels), **options)


def neighbors(
    data: FeatureSet | np.ndarray,
    queries: int | np.ndarray | Sequence[int],
    layers: LayerSpec | None = None,
    *,
    k: int = 8,
    metric: str = "cosine",
    index: str = "exact",
    post: str = "",
    skip_self: bool = False,
    images: bool | None = None,
) -> Neighbors | list[Neighbors] | tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest database images of each query, nearest first, in the features of the
    one layer ``layers`` names of a FeatureSet (or of an (N, d) array). ``queries``: a database
    image index (int) or a vector (d,) -- one query -- or a sequence of indices or an (nq, d)
    array. ``metric``: cosine (scores are similarities) or l2 (squared distances); ``index``:
    exact, ivf or hnsw; ``post``: post-processing fitted on the database (``l2,pca:128,whiten``);
    ``skip_self``: leave an index query out of its own neighbours (as ``convscope neighbors``
    does; by default an index query finds itself first).

    Returns, for a FeatureSet (``images`` None or True), a
    :class:`~convscope.represent.retrieval.Neighbors` for one query and a list of them (one per
    query) for several: the hits with their names and thumbnails, a picture grid that
    ``to_image()`` draws (vector queries show a blank query tile). The images are opened from
    where the features were extracted; a UserInputError says so when they cannot be.
    With ``images=False`` (and always for an array database, which has no images) nothing is
    read: the arrays ``(scores (nq, k), database image indices (nq, k))``, -1 where fewer than
    ``k`` exist, for large batches of queries."""
    from convscope.represent import NeighborIndex, PostProcess
    from convscope.represent.retrieval import search_neighbors

    fs = data if isinstance(data, FeatureSet) else None
    if images is None:
        images = fs is not None
    if images and fs is None:
        raise UserInputError("neighbors of an array have no images to show; pass images=False")
    if fs is not None:
        layer = _one_stored(fs, layers, "neighbors")
        x = np.asarray(fs.get(layer, valid_only=False))
        rows = fs.valid_indices()
    else:
        layer, x = "", np.asarray(data)
        rows = np.arange(len(x))
    q = np.asarray(queries)
    one = q.ndim == 0 or (q.ndim == 1 and not np.issubdtype(q.dtype, np.integer))
    own = np.atleast_1d(q) if q.ndim <= 1 and np.issubdtype(q.dtype, np.integer) else None
    if own is not None:
        readable = set(rows.tolist())
        bad = [int(i) for i in own if int(i) not in readable]
        if bad:
            raise UserInputError(
                f"query {bad[0]}: the features hold images 0..{len(x) - 1}, "
                "and this one is missing or was unreadable"
            )
        vectors = x[own]
    else:
        vectors = np.atleast_2d(q)
    pp = PostProcess.parse(post).fit(x[rows]) if post else None
    db, vectors = (pp.transform(x[rows]), pp.transform(vectors)) if pp else (x[rows], vectors)
    vectors = np.asarray(vectors, np.float32)
    search = NeighborIndex(db, metric, index)
    if not images:
        extra = int(skip_self and own is not None)
        scores, found = search.search(vectors, k + extra)
        ids = np.where(found >= 0, rows[np.clip(found, 0, None)], -1)
        if extra:  # drop each query's own row (or the last hit when it was not found)
            keep = ids != own[:, None]
            keep[keep.all(1), -1] = False
            scores = scores[keep].reshape(len(ids), -1)
            ids = ids[keep].reshape(len(ids), -1)
        return scores, ids
    source = _images_of(fs)
    blank = np.full((224, 224, 3), 255, np.uint8)
    found = [
        search_neighbors(
            search,
            vectors[j : j + 1],
            k,
            fs.names,
            source.read,
            query=fs.names[own[j]] if own is not None else f"query vector {j}",
            query_image=source.read(int(own[j])) if own is not None else blank,
            layer=layer,
            ids=rows,
            exclude=int(own[j]) if own is not None and skip_self else None,
            pooling=fs.pooling,
        )
        for j in range(len(vectors))
    ]
    return found[0] if one else found


def _images_of(fs: FeatureSet):
    """The images ``fs`` was extracted from, or a UserInputError that says how to do without."""
    from convscope.represent.report import feature_images

    try:
        return feature_images(fs)
    except (UserInputError, OSError) as e:
        raise UserInputError(f"{e}; neighbors(..., images=False) gives the scores and indices only") from e


def project(
    data: FeatureSet | np.ndarray, layers: LayerSpec | None = None, method: str = "tsne", **options
) -> Projection:
    """The 2-D map of the features of the one layer ``layers`` names (a FeatureSet, over its
    readable images, with their labels, classes and names; or an (N, d) array) by ``method``
    pca, tsne or umap, as a :class:`~convscope.represent.projection.Projection`: ``xy`` (N, 2),
    ``to_image()`` the scatter by class. ``options``: seed, perplexity, neighbors."""
    from convscope.represent.projection import project_features

    if isinstance(data, FeatureSet):
        layer = _one_stored(data, layers, "project")
        rows = data.valid_indices()
        return project_features(
            data.get(layer),
            data.valid_labels(),
            data.classes,
            method,
            layer=layer,
            names=[data.names[i] for i in rows],
            **options,
        )
    name = layers if isinstance(layers, str) else ""
    return project_features(np.asarray(data), None, (), method, layer=name, **options)


def compare(
    a: FeatureSet | Mapping[str, np.ndarray],
    b: FeatureSet | Mapping[str, np.ndarray] | None = None,
    measure: str = "cka",
    layers: LayerSpec | None = None,
) -> SimilarityMatrix:
    """Similarity of every layer of ``a`` (``layers``: a spec over its stored layers, None:
    all) with every layer of ``b`` (default: the same layers of ``a``), over the same images:
    ``measure`` cka (linear CKA) or rsa. Returns a
    :class:`~convscope.represent.similarity.SimilarityMatrix`: ``values`` (layers of a, layers
    of b), rows and columns named, the models from the FeatureSets; ``to_image()`` the heat map."""
    from convscope.represent.similarity import compare_layers

    both = isinstance(a, FeatureSet) and isinstance(b, FeatureSet)
    if both and (a.names != b.names or not np.array_equal(a.valid, b.valid)):
        raise UserInputError("the two feature sets are not over the same images")
    fa = _features_of(a, layers)
    fb = None if b is None else _features_of(b, None)
    row = a.model if isinstance(a, FeatureSet) else ""
    col = row if b is None else (b.model if isinstance(b, FeatureSet) else "")
    return compare_layers(fa, fb, measure, row_model=row, col_model=col)
