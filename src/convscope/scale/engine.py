"""Engines: where a scan, a feature extraction or a dissection runs.

:class:`LocalEngine` runs the ordinary single-process code; :class:`RayEngine` splits the images
into contiguous shards, runs the same code on Ray actors (one per GPU or CPU slot) and merges the
mergeable states: a :class:`~convscope.scan.result.ScanResult` (top-K per unit and statistics),
pooled feature rows, or dissection thresholds and IoU counts. The `area` thresholds of a scan are
computed first from the same calibration sample a single-process scan uses, so the merged scan
equals it (top-K images exactly; statistics up to float summation order).

Failures on Ray: actors are restarted and their task retried (``retries``); every finished
shard can be kept in a folder (tensors only, loaded with ``weights_only=True``), so a killed job
run again with the same folder and ``resume=True`` only computes the missing shards.

Every engine resolves nothing itself: the verbs (:mod:`convscope.verbs`) resolve the layer spec
once and pass exact addresses; :meth:`Engine.check` says before anything is written or
started whether the engine can run this subject on these images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from convscope.accel import Accel, check_finite, with_default_settings
from convscope.errors import NameNotFoundError, UserInputError
from convscope.subject import Subject

if TYPE_CHECKING:
    from convscope.dissect.result import Dissection
    from convscope.represent.features import FeatureSet
    from convscope.scan.result import ScanResult

Progress = Callable[[int, int], None]

# What a kept Ray shard holds; shards of another format (an older convscope) are not reused.
# 2: top-K with the tie-breaking key, one more top value per unit.
STATE_FORMAT = 2
ENGINES = ("local", "ray")


@runtime_checkable
class Engine(Protocol):
    """Runs the three dataset reductions. ``layers`` are exact addresses (already resolved);
    ``state`` is where a killed run's work is kept for ``resume`` (a checkpoint file for an
    engine with ``keeps_shards`` False, a folder of shards otherwise); ``progress(done, total)``
    is called as images are done."""

    name: str
    keeps_shards: bool

    def check(self, subject: Subject, data=None) -> None:
        """Raise a one-line error if this engine cannot run ``subject`` on ``data`` (nothing
        is started)."""

    def scan(
        self,
        subject: Subject,
        source,
        layers: Sequence[str],
        *,
        state: str | os.PathLike | None = None,
        resume: bool = False,
        progress: Progress | None = None,
        **options,
    ) -> ScanResult:
        """:func:`convscope.scan.scanner.scan` of ``source``; ``options`` are its keywords."""

    def features(
        self,
        subject: Subject,
        source,
        layers: Sequence[str],
        *,
        out: str | os.PathLike | None = None,
        resume: bool = True,
        progress: Progress | None = None,
        **options,
    ) -> FeatureSet:
        """:func:`convscope.represent.features.extract_features`; ``options`` are its keywords."""

    def dissect(
        self,
        subject: Subject,
        data,
        layers: Sequence[str],
        *,
        state: str | os.PathLike | None = None,
        resume: bool = False,
        progress: Progress | None = None,
        **options,
    ) -> Dissection:
        """:func:`convscope.dissect.dissection.dissect`; ``options`` are its keywords."""


class LocalEngine:
    """This process: the capability folders' own functions, unchanged."""

    name = "local"
    keeps_shards = False

    def check(self, subject: Subject, data=None) -> None:
        """Any subject and data run here."""

    def scan(self, subject, source, layers, *, state=None, resume=False, progress=None, **options):
        """:func:`~convscope.scan.scanner.scan` with its checkpoint at ``state``."""
        from convscope.scan.scanner import scan

        state = options.pop("checkpoint", None) or state  # the scan's own name for it
        return scan(subject, source, layers, checkpoint=state, resume=resume, progress=progress, **options)

    def features(self, subject, source, layers, *, out=None, resume=True, progress=None, **options):
        """:func:`~convscope.represent.features.extract_features` into the folder ``out``."""
        from convscope.represent.features import extract_features

        return extract_features(subject, source, layers, out=out, resume=resume, progress=progress, **options)

    def dissect(self, subject, data, layers, *, state=None, resume=False, progress=None, **options):
        """:func:`~convscope.dissect.dissection.dissect` (a local dissection keeps no partial state)."""
        from convscope.dissect.dissection import dissect

        return dissect(subject, data, layers, progress=progress, **options)


class RayEngine:
    """Shards over Ray actors: ``workers`` actors on the cluster at ``address`` (None: a local
    Ray node), computing on ``device`` (None: the subject's), the data cut into ``n_shards``
    pieces (default 4 per worker), a failed task retried ``retries`` times
    (``pip install 'convscope[ray]'``)."""

    name = "ray"
    keeps_shards = True

    def __init__(
        self,
        address: str | None = None,
        workers: int = 2,
        device: str | None = None,
        retries: int = 3,
        n_shards: int | None = None,
    ):
        if workers < 1:
            raise UserInputError("a Ray engine needs at least one worker")
        self.address, self.workers, self.device = address, workers, device
        self.retries, self.n_shards = retries, n_shards

    def __repr__(self) -> str:
        return f"RayEngine(address={self.address!r}, workers={self.workers}, device={self.device!r})"

    def _device(self, subject: Subject) -> str:
        return self.device or str(subject.device)

    def _parts(self, n: int) -> list[list[int]]:
        from convscope.scale.ray import shards

        return shards(n, self.n_shards or 4 * self.workers)

    def _start(self, subject: Subject):
        from convscope.scale.ray import init_ray

        return init_ray(self.address, self.workers, self._device(subject))

    def _actors(self, ray, count: int, model_spec: dict, subject: Subject) -> list:
        from convscope.scale.ray import actors

        return actors(ray, min(self.workers, count), model_spec, self._device(subject), self.retries)

    def check(self, subject: Subject, data=None) -> None:
        """Ray is installed, the model can be loaded again by the workers (by name or file, not
        random weights) and so can the images or concept data (opened from a path)."""
        from convscope.scale.ray import import_ray, specs

        import_ray()
        if data is not None and hasattr(data, "concepts"):
            specs(subject, None)
            if dict(getattr(data, "spec", {})).get("kind") not in ("broden", "auto-color"):
                raise UserInputError(
                    "--engine ray needs concept data opened from a path (Broden or auto-color)"
                )
        else:
            specs(subject, data)

    def scan(
        self,
        subject,
        source,
        layers,
        *,
        state=None,
        resume=False,
        progress=None,
        fail_once: str | None = None,
        **options,
    ):
        """The scan of ``source`` over the actors, merged. With ``state`` (a folder), each
        finished shard is kept there; ``resume=True`` reuses those of the same settings,
        otherwise they are removed first. ``fail_once`` (tests): a marker file; the first
        shard submitted kills its worker once."""
        from convscope.scale.ray import run_shards, specs
        from convscope.scan.result import ScanResult
        from convscope.scan.scanner import CRITERIA, scan
        from convscope.scan.state import LayerState

        model_spec, source_spec = specs(subject, source)
        names = subject.layers.select(layers)  # an unknown layer fails before Ray starts
        ray = self._start(subject)
        criteria = tuple(options.get("criteria", CRITERIA))
        n = len(source)
        # The calibration sample of the single-process scan gives the same `area` thresholds.
        # no checkpoint (the kept shards are), every part; decoding workers sized by each actor
        dropped = ("checkpoint", "checkpoint_every", "resume", "indices")
        cal_opts = {k: v for k, v in options.items() if k not in dropped}
        if cal_opts.get("workers", 0) is None:
            del cal_opts["workers"]
        thresholds = cal_opts.pop("thresholds", None)
        cal = None
        if "area" in criteria and thresholds is None:
            # the same sample (broken files replaced by the next images in its order) as one process
            cal = scan(subject, source, names, **{**cal_opts, "calibration_only": True})
            thresholds = cal.thresholds
        opts = dict(cal_opts)
        opts["thresholds"] = {k: v.cpu() for k, v in thresholds.items()} if thresholds else None
        parts = self._parts(n)
        folder = Path(state) if state is not None else None
        if folder is not None:
            if not resume:
                clear_shards(folder, "scan")
            folder.mkdir(parents=True, exist_ok=True)
            check_manifest(
                folder,
                {
                    "kind": "scan",
                    "format": STATE_FORMAT,
                    "layers": names,
                    "images": n,
                    "shards": len(parts),
                    "model": model_spec,
                    "source": source_spec,
                    # decoding workers change no result: a resume may use another number
                    **{k: v for k, v in opts.items() if k not in ("thresholds", "accel", "workers")},
                    **Accel.of(opts.get("accel")).config(),
                },
            )
        fail = [fail_once] if fail_once else []
        results = run_shards(
            ray,
            parts,
            lambda a, i: a.scan.remote(source_spec, parts[i], names, opts, fail.pop() if fail else None),
            lambda count: self._actors(ray, count, model_spec, subject),
            lambda i: shard_file(folder, "scan", i, len(parts)),
            progress or (lambda d, t: None),
            0,
            n,
        )
        template = cal or scan(subject, source, names, indices=[], **opts)
        merged = None
        for i in range(len(parts)):
            r = results[i]
            part = ScanResult(
                layers=template.layers,
                channels=template.channels,
                directions=template.directions,
                states={nm: LayerState.from_dict(r["states"][nm]) for nm in template.layers},
                k=template.k,
                criteria=template.criteria,
                image_names=template.image_names,
                image_labels=template.image_labels,
                classes=template.classes,
                skipped=[(int(a), str(b)) for a, b in r["skipped"]],
                processed=int(r["processed"]),
                seconds=float(r["seconds"]),
                config={
                    **template.config,
                    "engine": "ray",
                    "shards": len(parts),
                    # the driver's libraries; every worker computes on one thread
                    "versions": {**template.config.get("versions", {}), "threads": "1 per worker"},
                },
            )
            merged = part if merged is None else merged.merge(part)
        merged.record_ties()
        return merged

    def features(self, subject, source, layers, *, out=None, resume=True, progress=None, **options):
        """Pooled features over the actors; rows go into the same feature folder as a
        single-process run (:mod:`convscope.represent.folder`; in memory without ``out``), and
        finished shards are recorded there so that a killed job continues where it stopped
        (``resume=False`` starts over). ``options``: pooling, p, batch_size, accel."""
        from convscope.represent.features import POOLINGS, FeatureSet
        from convscope.represent.folder import FeatureWriter, folder_config, source_labels
        from convscope.scale.ray import run_tasks, specs

        model_spec, source_spec = specs(subject, source)
        infos = [subject.layers.get(a) for a in subject.layers.select(layers)]  # before Ray starts
        pooling = options.get("pooling", "gap")
        if pooling not in POOLINGS:
            raise UserInputError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        ray = self._start(subject)
        names = [i.name for i in infos]
        dims = [int(i.shape[0]) for i in infos]
        n = len(source)
        parts = self._parts(n)
        p = options.get("p", 3.0)
        accel = Accel.of(options.get("accel")).config()
        config = folder_config(
            subject, source, names, dims, pooling, p, engine="ray", shards=len(parts), accel=accel
        )
        labels = source_labels(source)
        image_names = [r.name for r in source.records]
        folder = None
        if out is not None:
            folder = FeatureWriter(
                out,
                config,
                dims,
                image_names=image_names,
                labels=labels,
                classes=source.classes,
                parts=len(parts),
                resume=resume,
            )
            folder.checkpoint()
            feats, valid, done = folder.features, folder.valid, folder.done
        else:
            feats = {nm: np.zeros((n, d), np.float32) for nm, d in zip(names, dims)}
            valid, done = np.zeros(n, bool), set()
        skipped: list = []
        report = progress or (lambda d, t: None)

        def finished(i, value):
            idx = np.array(parts[i])
            for nm in names:
                feats[nm][idx] = value["features"][nm]
            valid[idx] = value["valid"]
            skipped.extend(value["skipped"])
            done.add(i)
            if folder is not None:
                folder.checkpoint()
            report(sum(len(parts[j]) for j in done), n)

        todo = [i for i in range(len(parts)) if i not in done]
        if todo:
            opts = {k: v for k, v in options.items() if k in ("pooling", "p", "batch_size", "accel")}
            run_tasks(
                ray,
                self._actors(ray, len(todo), model_spec, subject),
                [(i, lambda a, i=i: a.features.remote(source_spec, parts[i], names, opts)) for i in todo],
                finished,
            )
        if folder is not None:
            folder.checkpoint()
            result = FeatureSet.load(folder.path)
        else:
            result = FeatureSet(
                feats, image_names, labels, source.classes, valid, pooling, subject.name, source.spec, p=p
            )
        result.skipped = skipped
        return result

    def dissect(
        self,
        subject,
        data,
        layers,
        *,
        state=None,
        resume=False,
        progress=None,
        quantile: float = 0.005,
        iou_threshold: float = 0.04,
        max_coverage: float = 0.2,
        top: int = 8,
        batch_size: int | None = None,
        accel=None,
        bases=None,
        **options,
    ):
        """The dissection over the actors: pass 1 (top activations) on each shard, merged into
        the exact thresholds; pass 2 (IoU counts) on each shard, summed. The result equals a
        single-process dissection up to float rounding. With ``state`` (a folder), every
        finished shard of either pass is kept there and ``resume=True`` computes only the
        missing ones; what it kept is removed at the end. ``workers``/``cache_bytes`` of a
        local dissection do not apply."""
        from convscope.dissect.dissection import (
            dissection_plan,
            finish,
            merge_count_states,
            merge_threshold_states,
        )
        from convscope.scale.ray import run_shards

        unknown = set(options) - {"workers", "cache_bytes"}
        if unknown:
            raise UserInputError(f"unknown dissection options {', '.join(sorted(unknown))}")
        self.check(subject, data)
        model_spec = dict(subject.spec)
        spec = dict(getattr(data, "spec", {}))
        plan = dissection_plan(subject, data, subject.layers.select(layers), bases)  # before Ray starts
        names, bases = plan.names, plan.bases
        ray = self._start(subject)
        device = self._device(subject)
        bs = batch_size or (4 if device == "cpu" else 64)
        parts = self._parts(len(data))
        report = progress or (lambda d, t: None)
        total = 2 * len(data)
        folder = Path(state) if state is not None else None
        if folder is not None:
            if not resume:
                clear_shards(folder, "dissect")
            folder.mkdir(parents=True, exist_ok=True)
            check_manifest(
                folder,
                {
                    "kind": "dissect",
                    "format": STATE_FORMAT,
                    "layers": names,
                    "images": len(data),
                    "shards": len(parts),
                    "model": model_spec,
                    "concepts": spec,
                    "quantile": quantile,
                    "top": top,
                    "batch_size": bs,
                    **Accel.of(accel).config(),
                    **({"bases": {n: b.fingerprint for n, b in bases.items()}} if bases else {}),
                },
            )

        def run_pass(p: int, submit, offset: int) -> dict:
            return run_shards(
                ray,
                parts,
                submit,
                lambda count: self._actors(ray, count, model_spec, subject),
                lambda i: shard_file(folder, f"pass{p}", i, len(parts)),
                report,
                offset,
                total,
            )

        state1 = run_pass(
            1, lambda a, i: a.dissect_thresholds.remote(spec, parts[i], names, quantile, bs, accel, bases), 0
        )
        pass1 = [state1[i] for i in range(len(parts))]
        tops, skipped = merge_threshold_states(data, plan.maps, quantile, pass1)
        thr = {n: tops.thresholds(n, separate=True).cpu() for n in names}
        check_finite(Accel.of(accel), thr)
        state2 = run_pass(
            2,
            lambda a, i: a.dissect_counts.remote(spec, parts[i], names, thr, top, bs, accel, bases),
            len(data),
        )
        counts = merge_count_states(plan, thr, top, [state2[i] for i in range(len(parts))])
        result = finish(plan, data, thr, counts, iou_threshold, quantile, max_coverage, skipped, subject.name)
        if folder is not None:
            clear_shards(folder, "dissect")
        return result


def resolve_engine(engine: str | Engine | None = None, **options) -> Engine:
    """The engine ``engine`` names: None or ``"local"`` (:class:`LocalEngine`), ``"ray"``
    (:class:`RayEngine` with ``options``: address, workers, device, retries, n_shards), or an
    engine object, returned as it is. An unknown name raises a one-line
    :class:`~convscope.errors.NameNotFoundError` with the close matches."""
    if engine is None or engine == "local":
        return LocalEngine()
    if engine == "ray":
        return RayEngine(**options)
    if isinstance(engine, str):
        raise NameNotFoundError(engine, ENGINES, what="engine")
    if not isinstance(engine, Engine):
        raise UserInputError(f"engine must be local, ray or an Engine object, not {type(engine).__name__}")
    return engine


def check_manifest(state: Path, config: dict) -> None:
    """Shards in ``state`` belong to ``config``; a folder left by other settings is refused."""
    import json

    from convscope.inputs.fileio import write_text

    f = state / "manifest.json"
    wanted = json.loads(json.dumps(config, sort_keys=True, default=str))
    if f.exists():
        if with_default_settings(json.loads(f.read_text())) != wanted:
            raise UserInputError(
                f"{state} holds shards of a job with other settings; start over "
                "(without --resume) or use another folder"
            )
    else:
        write_text(f, json.dumps(wanted, indent=1, sort_keys=True))


def shard_file(state: Path | None, stem: str, i: int, n: int) -> Path | None:
    """Where shard ``i`` of ``n`` of a job step (``scan``, ``pass1``, ``pass2``) is kept in the
    folder ``state`` (None: not kept)."""
    return None if state is None else state / f"{stem}_shard_{i:04d}_of_{n:04d}.pt"


def clear_shards(state: Path, kind: str) -> None:
    """Remove what a Ray job of ``kind`` (``scan`` or ``dissect``) kept in ``state`` (and the
    folder, if that leaves it empty); nothing else there is touched."""
    stems = ("scan",) if kind == "scan" else ("pass1", "pass2")
    kept = [f for s in stems for f in (*state.glob(f"{s}_shard_*_of_*.pt"), *state.glob(f".{s}_shard_*.tmp"))]
    for f in [*kept, state / "manifest.json"]:
        f.unlink(missing_ok=True)
    if state.is_dir() and not any(state.iterdir()):
        state.rmdir()
