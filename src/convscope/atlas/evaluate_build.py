"""Evaluate attribution methods on a dataset's images and store the evaluation in an atlas
(``convscope evaluate``): seeded, resumable from a checkpoint inside the atlas, one writer at a
time."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convscope.atlas.build import model_spec
from convscope.atlas.cleanup import entries, undo_failed_build
from convscope.atlas.evaluations import check_name
from convscope.atlas.store import Atlas, AtlasConflictError
from convscope.errors import UserInputError
from convscope.inputs.fileio import write_text
from convscope.subject import Subject


@dataclass
class EvaluationStored:
    """What :func:`evaluate_to_atlas` did: the ``atlas`` written, the evaluation's ``name`` in
    it, the :class:`~convscope.attribution.evaluation.Evaluation` ``evaluation`` (its
    ``skipped`` names the images that could not be read), the ``files`` it is stored as
    (``result``, ``csv``, ``json``, ``plot``), and ``reused``: True when the atlas already held
    it, finished, with these settings (``resume``)."""

    atlas: Atlas
    name: str
    evaluation: object
    files: dict[str, Path] = field(default_factory=dict)
    reused: bool = False

    def headline(self) -> str:
        what = "reused" if self.reused else "stored"
        return f"{self.evaluation.headline()}; {what} as {self.name!r} in {self.atlas.path}"


def evaluate_to_atlas(
    subject: Subject,
    data,
    out: str | Path | Atlas,
    methods: Sequence[str],
    metrics: Sequence[str],
    *,
    n: int = 32,
    name: str = "default",
    target="top",
    seed: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    **options,
) -> EvaluationStored:
    """Score every attribution method of ``methods`` by every metric of ``metrics``
    (:func:`convscope.attribution.evaluator.evaluate`) on ``n`` images of ``data`` (an image
    source, or what :func:`~convscope.inputs.open_images` opens: a folder, archive, list file,
    ``convscope:samples``), and store the result in the atlas ``out`` (created for this model
    and data, or one of this model's) under ``name``: the ``.npz``, its ranked table (CSV,
    JSON) and its ranked plot (:meth:`Atlas.write_evaluation`). The images are a uniform sample
    seeded by ``seed`` (all of them when there are at most ``n``), in dataset order; files that
    cannot be read are skipped and named in the result; ``seed`` also seeds the methods and
    metrics. ``options``: :func:`evaluate`'s other keywords
    (``options``, ``metric_options``, ``masks``, ``boxes``, ``chunk``).
    ``progress(done, total)`` counts method x image pairs.

    The atlas's writer lock is held throughout; the work is checkpointed after each chunk in
    :meth:`~convscope.atlas.paths.AtlasPaths.evaluation_checkpoint`. A name the atlas already
    holds, or one with an interrupted run, is refused unless ``resume`` (an interrupted run
    continues from its checkpoint; a finished one is reused) or ``overwrite`` (started again);
    a ``resume`` with other settings is refused, naming each. Unknown methods or metrics and
    unusable data fail before the atlas is created or written; a failed build of a new atlas
    leaves nothing behind, unless it left a checkpoint to resume."""
    from convscope.attribution.api import get_method
    from convscope.attribution.evaluator import evaluate  # registers the baselines (edge, random)
    from convscope.attribution.metrics import get_metric
    from convscope.concepts.activations import as_source

    name = check_name(name)
    methods = [get_method(m).name for m in methods]
    metrics = list(metrics)
    for metric in metrics:
        get_metric(metric)  # unknown: a one-line error with close matches, before any work
    if not methods or not metrics:
        raise UserInputError("an evaluation needs at least one method and one metric")
    if n < 1:
        raise UserInputError(f"an evaluation needs at least one image, not n={n}")
    source = as_source(subject, data)
    out = out.path if isinstance(out, Atlas) else Path(out)
    before = entries(out)
    try:
        with Atlas(out).lock():
            return _build(
                evaluate, out, subject, source, methods, metrics, n, name, target, seed, resume,
                overwrite, progress, options,
            )  # fmt: skip
    except BaseException as e:
        undo_failed_build(out, before, refused=isinstance(e, UserInputError), checkpoints=".evaluate-*.ckpt")
        raise


def _build(
    evaluate, out, subject, source, methods, metrics, n, name, target, seed, resume, overwrite,
    progress, options,
) -> EvaluationStored:  # fmt: skip
    store = Atlas.for_model(out, model_spec(subject), source.spec)
    ckpt = store.evaluation_checkpoint(name)
    sidecar = ckpt.with_name(ckpt.name[: -len(".ckpt")] + ".json")
    stored = name in {e["name"] for e in store.evaluations()}
    if overwrite:
        for path in (ckpt, sidecar):
            path.unlink(missing_ok=True)
    elif not resume and (stored or ckpt.exists()):
        what = "an evaluation" if stored else "an interrupted evaluation"
        raise AtlasConflictError(
            f"{store.path} already holds {what} named {name!r}; pass --resume to "
            f"{'reuse' if stored else 'continue'} it, --overwrite to start again, or choose another --name"
        )

    images = pick_images(source, n, seed)
    if len(images) < len(source):  # regions are given per image of the data: those of the sample
        keep = _sample(len(source), n, seed)
        options = {
            k: (_take(v, keep) if k in ("masks", "boxes") and v is not None else v)
            for k, v in options.items()
        }
    wanted = run_settings(subject, images, methods, metrics, target, seed, source.spec, options)
    if stored and resume and not overwrite:
        _check_settings(store.evaluation_settings(name), wanted, name)
        ckpt.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        files = {k: store.evaluation_file(name, k) for k in ("result", "csv", "json", "plot")}
        return EvaluationStored(store, name, store.evaluation(name), files, True)
    if resume and sidecar.exists():
        _check_settings(json.loads(sidecar.read_text()), wanted, name)
    elif ckpt.exists():  # a checkpoint without the settings it was made with cannot be trusted
        ckpt.unlink()
    write_text(sidecar, json.dumps(wanted, sort_keys=True))

    try:
        evaluation = evaluate(
            subject,
            images,
            methods,
            metrics,
            target,
            seed=seed,
            checkpoint=ckpt,
            progress=progress,
            **options,
        )
    except BaseException:
        if not ckpt.exists():  # nothing to resume: the settings file has no use
            sidecar.unlink(missing_ok=True)
        raise
    files = store.write_evaluation(name, evaluation, wanted)
    ckpt.unlink(missing_ok=True)
    sidecar.unlink(missing_ok=True)
    return EvaluationStored(store, name, evaluation, files, False)


def pick_images(source, n: int, seed: int):
    """The images of ``source`` an evaluation of ``n`` images runs on: a uniform sample seeded
    by ``seed`` (all of them when it holds at most ``n``), in the source's order, as a source
    (read a chunk at a time by the evaluation; unreadable files are skipped and named there)."""
    if len(source) <= n:
        return source
    return source.subset(_sample(len(source), n, seed))


def _sample(size: int, n: int, seed: int) -> list[int]:
    keep = np.sort(np.random.default_rng(seed).choice(size, size=n, replace=False))
    return [int(i) for i in keep]


def _take(values, keep: list[int]):
    """The rows ``keep`` of per-image masks or boxes (an array, a tensor or a list)."""
    if hasattr(values, "shape"):
        return values[keep]
    return [values[i] for i in keep]


def run_settings(
    subject: Subject, images, methods, metrics, target, seed: int, data_spec: dict, options
) -> dict:
    """What an evaluation was run with, as JSON, which a ``--resume`` must ask for again: the
    fingerprint of the run (:func:`convscope.attribution.evaluator.fingerprint`, the one its
    checkpoint is checked against: model, weights, device, preprocessing, image names, methods,
    metrics and their options, target, seed, chunk, masks, boxes) and the data it came from."""
    from convscope.attribution.evaluator import fingerprint

    found = fingerprint(subject, images, methods, metrics, target, seed=seed, **options)
    return {**found, "data": data_spec.get("source", data_spec.get("description"))}


def _check_settings(stored: dict | None, wanted: dict, name: str) -> None:
    if stored is None:
        return
    differ = [key for key in sorted({*stored, *wanted}) if stored.get(key) != wanted.get(key)]
    if differ:
        said = ", ".join(_said(key, stored.get(key), wanted.get(key), differ) for key in differ)
        raise AtlasConflictError(
            f"the atlas's evaluation {name!r} was run with {said}; resume it with those settings, "
            "pass --overwrite to start again or choose another --name"
        )


def _said(key: str, old, new, differ: list[str]) -> str:
    """One setting that differs, as a user reads it: method names rather than the fingerprint's
    [key, name] pairs, and the image sample rather than its SHA-1."""
    if key == "images":  # a digest of the images' names and pixels
        if "seed" in differ or "n_images" in differ:
            return "the image sample (drawn with --seed and --n)"
        return "the images (their names or pixels)"

    def show(value):
        if key == "methods" and isinstance(value, list):
            return ", ".join(str(m[0]) if isinstance(m, list) and m else str(m) for m in value)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return ", ".join(value)
        return repr(value)

    return f"{key} {show(old)} (now {show(new)})"


__all__ = ["EvaluationStored", "evaluate_to_atlas", "pick_images", "run_settings"]
