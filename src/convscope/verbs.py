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
:func:`class_model`, :func:`fool`, :func:`train`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from convscope.adversarial import Adversarial, fgsm, fool, minimal, pgd
from convscope.attribution import explain
from convscope.dissect.result import Dissection
from convscope.empirical import EmpiricalRF, Stimuli
from convscope.errors import UserInputError
from convscope.layers import LayerSpec
from convscope.represent.features import FeatureSet
from convscope.represent.probe import ProbeResult
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
    "dissect",
    "dream",
    "empirical_rf",
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
    :func:`convscope.scan.scanner.scan` (k, criteria, directions, seed, batch_size, accel...).
    To store the scan in an atlas, use :func:`convscope.atlas.scan_to_atlas`."""
    run = resolve_engine(engine)
    names = subject.layers.select(layers)
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
    names = subject.layers.select(layers)
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
    ``options``: quantile, iou_threshold, max_coverage, top, batch_size, workers, accel."""
    run = resolve_engine(engine)
    names = subject.layers.select(layers)
    run.check(subject, data)
    return run.dissect(subject, data, names, state=state, resume=resume, progress=progress, **options)


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
    """Per layer (N, C) rows of readable images: of a FeatureSet (``layers``: its names, None:
    all) or of a mapping as it is."""
    if isinstance(data, FeatureSet):
        names = data.layers if layers is None else _stored(data.layers, layers)
        return {n: data.get(n) for n in names}
    names = list(data) if layers is None else _stored(list(data), layers)
    return {n: np.asarray(data[n]) for n in names}


def _stored(have: list[str], layers) -> list[str]:
    from convscope.errors import NameNotFoundError

    names = [s.strip() for s in layers.split(",")] if isinstance(layers, str) else list(layers)
    for n in names:
        if n not in have:
            raise NameNotFoundError(n, have, what="layer with features")
    return names


def probe(data: FeatureSet | Mapping[str, np.ndarray], labels=None, layers=None, **options) -> ProbeResult:
    """Linear probe accuracy of each layer's features (a FeatureSet, or a mapping layer ->
    (N, C) with ``labels`` (N,)). ``options``: train, test, test_fraction, classifier, c, seed."""
    from convscope.represent.probe import linear_probe

    if labels is None:
        if not isinstance(data, FeatureSet):
            raise UserInputError("probe needs labels for features that are not a FeatureSet")
        labels = data.valid_labels()
    return linear_probe(_features_of(data, layers), np.asarray(labels), **options)


def neighbors(
    data: FeatureSet | np.ndarray,
    queries: np.ndarray | Sequence[int],
    layers: str | None = None,
    *,
    k: int = 8,
    metric: str = "cosine",
    index: str = "exact",
    post: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest database rows of each query: ``queries`` are database image indices
    (ints) or vectors (nq, d), in the features of the one layer ``layers`` of a FeatureSet (or
    an (N, d) array). ``post``: post-processing fitted on the database (``l2,pca:128,whiten``).
    Returns (scores (nq, k), database image indices (nq, k)), nearest first."""
    from convscope.represent import NeighborIndex, PostProcess

    if isinstance(data, FeatureSet):
        if layers is None and len(data.layers) != 1:
            raise UserInputError(f"neighbors works on one layer; choose one of {', '.join(data.layers)}")
        (layer,) = _stored(data.layers, layers) if layers is not None else data.layers
        x = np.asarray(data.get(layer, valid_only=False))
        rows = data.valid_indices()
    else:
        x = np.asarray(data)
        rows = np.arange(len(x))
    q = np.asarray(queries)
    q = x[q] if q.ndim == 1 and np.issubdtype(q.dtype, np.integer) else np.atleast_2d(q)
    pp = PostProcess.parse(post).fit(x[rows]) if post else None
    db, q = (pp.transform(x[rows]), pp.transform(q)) if pp else (x[rows], q)
    scores, found = NeighborIndex(db, metric, index).search(q.astype(np.float32), k)
    return scores, np.where(found >= 0, rows[np.clip(found, 0, None)], -1)


def project(
    data: FeatureSet | np.ndarray, layers: str | None = None, method: str = "tsne", **options
) -> np.ndarray:
    """2-D coordinates (N, 2) of each readable image in the features of the one layer
    ``layers`` (a FeatureSet; or an (N, d) array): ``method`` pca, tsne or umap.
    ``options``: seed, perplexity, neighbors."""
    from convscope.represent.projection import project as run

    if isinstance(data, FeatureSet):
        feats = _features_of(data, layers)
        if len(feats) != 1:
            raise UserInputError(f"project works on one layer; choose one of {', '.join(feats)}")
        data = next(iter(feats.values()))
    return run(np.asarray(data), method, **options)


def compare(
    a: FeatureSet | Mapping[str, np.ndarray],
    b: FeatureSet | Mapping[str, np.ndarray] | None = None,
    measure: str = "cka",
    layers=None,
) -> np.ndarray:
    """Similarity of every layer of ``a`` with every layer of ``b`` (default: ``a`` itself),
    over the same images: ``measure`` cka (linear CKA) or rsa. Returns (layers of a, layers of b)."""
    from convscope.represent.similarity import similarity_matrix

    fa = _features_of(a, layers)
    return similarity_matrix(fa, fa if b is None else _features_of(b, None), measure)
