"""Scans and feature extraction on a Ray cluster.

The driver splits the image list into contiguous shards; each Ray actor loads the model and the
images again from their specs (what an atlas records), runs the ordinary single-process code on
its shard, and returns a mergeable state: a :class:`~convscope.scan.result.ScanResult` (top-K
per unit and statistics) or pooled feature rows. The `area` thresholds are computed first from
the same calibration sample a single-process scan uses, so the merged scan equals it (top-K
images exactly; statistics up to float summation order).

Failures: actors are restarted and their task retried by Ray (``retries``); every finished
shard is written to ``state_dir`` (tensors only, loaded with ``weights_only=True``), so a killed
job run again with the same ``state_dir`` only computes the missing shards.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from convscope.accel import Accel, check_finite, with_default_settings
from convscope.errors import UserInputError
from convscope.inputs.fileio import atomic_path
from convscope.inputs.sources import ImageSource
from convscope.scan.result import ScanResult
from convscope.scan.scanner import CRITERIA, scan
from convscope.scan.state import LayerState
from convscope.subject import Subject

# What a kept shard holds; shards of another format (an older convscope) are not reused.
# 2: top-K with the tie-breaking key, one more top value per unit.
STATE_FORMAT = 2


def shards(n: int, parts: int) -> list[list[int]]:
    """``range(n)`` cut into ``parts`` contiguous, nearly equal pieces (none empty)."""
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(parts)]


def _ray():
    try:
        import ray
    except ImportError:
        raise UserInputError("--engine ray needs Ray: pip install 'convscope[ray]'") from None
    return ray


def _init(address: str | None, workers: int, device: str = "cpu"):
    ray = _ray()
    if not ray.is_initialized():
        _POOL.clear()
        if address:
            kwargs = {"address": address}
        elif device.startswith("cuda"):
            kwargs = {}  # a local node with all its cores (they decode) and GPUs
        else:
            kwargs = {"num_cpus": workers}
        ray.init(
            include_dashboard=False,
            log_to_driver=False,
            ignore_reinit_error=True,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
            **kwargs,
        )
    return ray


def _specs(subject: Subject, source: ImageSource) -> tuple[dict, dict]:
    if not subject.spec or "model" not in subject.spec:
        raise UserInputError(
            "--engine ray needs a model loaded by name or file (convscope.load), "
            "so that workers can load it again"
        )
    if subject.spec.get("weights") in (None, "none"):
        raise UserInputError(
            "--engine ray cannot use random weights (each worker would draw its own); "
            "save them to a file and pass --weights FILE"
        )
    if source is None:
        return dict(subject.spec), None
    if not (source.spec.get("source") or source.spec.get("files")):
        raise UserInputError("--engine ray needs images opened from a path (open_images)")
    return dict(subject.spec), dict(source.spec)


class _Worker:
    """Body of the Ray actor: the model loaded again from its spec; image sources and concept
    data opened from theirs on first use and kept."""

    def __init__(self, model_spec: dict, device: str, cpus: int):
        from convscope.zoo import load_spec

        # A CPU actor computes on its one core; a GPU actor's cores decode for its GPU.
        on_gpu = device.startswith("cuda")
        torch.set_num_threads(1 if on_gpu else cpus)
        self.loader_workers = max(0, min(cpus - 1, 12)) if on_gpu else 0
        self.subject = load_spec(model_spec, device)
        self.opened: dict[str, object] = {}

    def _workers(self, nbytes: int) -> int:
        """This actor's decoding workers for batches of ``nbytes``: its CPU share, within /dev/shm."""
        from convscope.inputs.workers import fit_workers

        return fit_workers(self.loader_workers, nbytes)

    def _image_workers(self, options: dict) -> int:
        """Decoding workers for a scan or feature extraction with ``options``."""
        from convscope.accel import Accel
        from convscope.inputs.workers import batch_bytes

        decode = Accel.of(options.get("accel")).decode
        return self._workers(batch_bytes(options.get("batch_size", 32), self.subject.input_size, decode))

    def _open(self, kind: str, spec: dict):
        """The image source (``kind="images"``) or concept data a spec describes, kept."""
        import json

        from convscope.dissect.open import open_concept_data
        from convscope.inputs.sources import open_spec

        key = json.dumps([kind, spec], sort_keys=True, default=str)
        if key not in self.opened:
            self.opened[key] = open_spec(spec) if kind == "images" else open_concept_data(spec)
        return self.opened[key]

    def dissect_thresholds(
        self, spec: dict, indices: list[int], layers: list[str], quantile: float, batch_size: int, accel=None
    ):
        from convscope.dissect.dissection import loader_batch_bytes, threshold_state

        return threshold_state(
            self.subject,
            self._open("concepts", spec),
            layers,
            quantile=quantile,
            indices=indices,
            batch_size=batch_size,
            workers=self._workers(loader_batch_bytes(self.subject, batch_size)),
            accel=accel,
        )

    def dissect_counts(
        self,
        spec: dict,
        indices: list[int],
        layers: list[str],
        thresholds: dict,
        top: int,
        batch_size: int,
        accel=None,
    ):
        from convscope.dissect.dissection import count_state, loader_batch_bytes

        return count_state(
            self.subject,
            self._open("concepts", spec),
            layers,
            thresholds,
            top=top,
            indices=indices,
            batch_size=batch_size,
            workers=self._workers(loader_batch_bytes(self.subject, batch_size)),
            accel=accel,
        )

    def scan(
        self,
        source_spec: dict,
        indices: list[int],
        layers: list[str],
        options: dict,
        fail_marker: str | None = None,
    ):
        if fail_marker and not os.path.exists(fail_marker):  # for tests: die once, mid-task
            Path(fail_marker).write_text("failed once")
            os._exit(1)
        import warnings

        from convscope.scan.result import SaturationWarning

        if options.get("workers") is None:
            options = {**options, "workers": self._image_workers(options)}
        with warnings.catch_warnings():  # one part's ties say nothing: the driver warns on the whole
            warnings.simplefilter("ignore", SaturationWarning)
            r = scan(self.subject, self._open("images", source_spec), layers, indices=indices, **options)
        return {
            "states": {n: s.to_dict() for n, s in r.states.items()},
            "skipped": r.skipped,
            "processed": r.processed,
            "seconds": r.seconds,
        }

    def features(self, source_spec: dict, indices: list[int], layers: list[str], options: dict):
        from convscope.represent.features import extract_features

        images = self._open("images", source_spec).subset(indices)
        fs = extract_features(self.subject, images, layers, workers=self._image_workers(options), **options)
        return {
            "features": {n: np.asarray(fs.features[n]) for n in layers},
            "valid": fs.valid,
            "skipped": fs.skipped,
        }


_POOL: dict[str, list] = {}


def _actors(ray, n: int, model_spec, device: str, retries: int):
    """``n`` workers for this model and device; started once per Ray session and kept, since
    starting one (a Python process importing torch and loading the model) takes seconds. Workers
    of another model are stopped first: each holds a CPU (or GPU) slot of the cluster."""
    import json

    key = json.dumps([model_spec, device, retries], sort_keys=True, default=str)
    for other in [k for k in _POOL if k != key]:
        for a in _POOL.pop(other):
            ray.kill(a)
    pool = _POOL.setdefault(key, [])
    gpus = 1 if device.startswith("cuda") else 0
    cpus = _cpus_per_gpu(ray) if gpus else 1
    cls = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=retries, max_task_retries=retries)(_Worker)
    while len(pool) < n:
        pool.append(cls.remote(model_spec, device, cpus))
    return pool[:n]


def _cpus_per_gpu(ray) -> int:
    """CPUs one GPU actor can ask for and still be placed on every GPU node: the smallest
    per-node share of cores per GPU (cluster totals would overstate it on mixed clusters)."""
    shares = [
        int(n["Resources"].get("CPU", 0) // n["Resources"]["GPU"])
        for n in ray.nodes()
        if n.get("Alive") and n["Resources"].get("GPU", 0) >= 1
    ]
    return max(1, min(shares)) if shares else 1


def shutdown_workers() -> None:
    """Stop the kept workers (they also go with ``ray.shutdown()``)."""
    ray = _ray()
    for pool in _POOL.values():
        for a in pool:
            ray.kill(a)
    _POOL.clear()


def _run(ray, actors, tasks: list[tuple[int, Callable]], done: Callable[[int, object], None]) -> None:
    """Run ``tasks`` (shard, submit(actor) -> ref) on the actors, at most one each at a time."""
    pending = list(tasks)
    running = {}
    free = list(actors)
    while pending or running:
        while pending and free:
            i, submit = pending.pop(0)
            actor = free.pop(0)
            running[submit(actor)] = (i, actor)
        ready, _ = ray.wait(list(running), num_returns=1)
        i, actor = running.pop(ready[0])
        done(i, ray.get(ready[0]))
        free.append(actor)


def _run_shards(
    ray,
    parts: list[list[int]],
    submit: Callable,
    start_actors: Callable[[int], list],
    file_of: Callable[[int], Path | None],
    report: Callable[[int, int], None],
    offset: int,
    total: int,
) -> dict[int, object]:
    """Every shard's result: those kept in files (``file_of(i)``; None: not kept) are read back
    (tensors only, ``weights_only``), the others computed by ``submit(actor, i)`` on the actors
    ``start_actors(n)`` gives and each saved atomically as it arrives, so that a killed job run
    again computes only the missing ones. Progress: ``report(offset + images done, total)``."""
    got: dict[int, object] = {}
    for i in range(len(parts)):
        f = file_of(i)
        if f is not None and f.exists():
            got[i] = torch.load(f, weights_only=True)

    def done(i, value):
        got[i] = value
        f = file_of(i)
        if f is not None:
            with atomic_path(f) as tmp:
                torch.save(value, tmp)
        report(offset + sum(len(parts[j]) for j in got), total)

    report(offset + sum(len(parts[j]) for j in got), total)
    todo = [i for i in range(len(parts)) if i not in got]
    if todo:
        _run(ray, start_actors(len(todo)), [(i, lambda a, i=i: submit(a, i)) for i in todo], done)
    return got


def ray_scan(
    subject: Subject,
    source: ImageSource,
    layers: str | Sequence[str],
    *,
    workers: int = 2,
    address: str | None = None,
    n_shards: int | None = None,
    device: str = "cpu",
    state_dir: str | os.PathLike | None = None,
    retries: int = 3,
    progress: Callable[[int, int], None] | None = None,
    fail_once: str | None = None,
    **options,
) -> ScanResult:
    """:func:`convscope.scan.scan` of ``source`` split over ``workers`` Ray actors (``n_shards``
    pieces, default 4 per worker) and merged. ``options`` are ``scan``'s keyword arguments."""

    ray = _init(address, workers, device)
    model_spec, source_spec = _specs(subject, source)
    names = subject.layers.select(layers)
    criteria = tuple(options.get("criteria", CRITERIA))
    n = len(source)
    # The calibration sample of the single-process scan gives the same `area` thresholds.
    cal_opts = {k: v for k, v in options.items() if k not in ("checkpoint", "resume", "indices", "progress")}
    thresholds = options.pop("thresholds", None)
    cal = None
    if "area" in criteria and thresholds is None:
        # the same sample (broken files replaced by the next images in its order) as one process
        cal = scan(subject, source, names, **{**cal_opts, "calibration_only": True})
        thresholds = cal.thresholds
    opts = {k: v for k, v in cal_opts.items() if k != "thresholds"}
    opts["thresholds"] = {k: v.cpu() for k, v in thresholds.items()} if thresholds else None
    parts = shards(n, n_shards or 4 * workers)
    state = Path(state_dir) if state_dir is not None else None
    if state is not None:
        state.mkdir(parents=True, exist_ok=True)
        _check_manifest(
            state,
            {
                "kind": "scan",
                "format": STATE_FORMAT,
                "layers": names,
                "images": n,
                "shards": len(parts),
                "model": model_spec,
                "source": source_spec,
                **{k: v for k, v in opts.items() if k not in ("thresholds", "accel")},
                **Accel.of(opts.get("accel")).config(),
            },
        )
    fail = [fail_once] if fail_once else []  # for tests: the first shard submitted dies once
    results = _run_shards(
        ray,
        parts,
        lambda a, i: a.scan.remote(source_spec, parts[i], names, opts, fail.pop() if fail else None),
        lambda count: _actors(ray, min(workers, count), model_spec, device, retries),
        lambda i: state / f"scan_shard_{i:04d}_of_{len(parts):04d}.pt" if state is not None else None,
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


def _check_manifest(state: Path, config: dict) -> None:
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


def ray_features(
    subject: Subject,
    source: ImageSource,
    layers: Sequence[str],
    *,
    out,
    workers: int = 2,
    address: str | None = None,
    n_shards: int | None = None,
    device: str = "cpu",
    retries: int = 3,
    progress: Callable[[int, int], None] | None = None,
    resume: bool = True,
    **options,
):
    """:func:`convscope.represent.extract_features` over Ray actors; rows go into the same
    memory-mapped files as a single-process run, and finished shards are recorded so that a
    killed job continues where it stopped (``resume=False`` starts over)."""
    import json

    from convscope.inputs.fileio import write_text
    from convscope.represent.features import FeatureSet

    ray = _init(address, workers, device)
    model_spec, source_spec = _specs(subject, source)
    infos = [subject.layer(nm) for nm in layers]
    names = [i.name for i in infos]
    dims = [int(i.shape[0]) for i in infos]
    n = len(source)
    parts = shards(n, n_shards or 4 * workers)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pooling = options.get("pooling", "gap")
    config = {
        "layers": names,
        "dims": dims,
        "pooling": pooling,
        "p": options.get("p", 3.0),
        "images": n,
        "engine": "ray",
        "shards": len(parts),
        "model": subject.name,
        "source": source.spec,
        **Accel.of(options.get("accel")).config(),
    }
    meta_file = out / "meta.json"
    old = json.loads(meta_file.read_text()) if meta_file.exists() else None
    if old is not None and {k: with_default_settings(old).get(k) for k in config} != config:
        raise UserInputError(f"{out} holds features of another configuration; choose another folder")
    done_shards = set(old.get("done_shards", [])) if old and resume else set()
    mode = "r+" if done_shards else "w+"
    feats = {
        nm: np.lib.format.open_memmap(
            out / f"{i:03d}.npy", mode=mode, dtype=np.float32, shape=None if done_shards else (n, d)
        )
        for i, (nm, d) in enumerate(zip(names, dims))
    }
    valid = np.load(out / "valid.npy") if done_shards else np.zeros(n, bool)
    labels = np.array([r.label if r.label is not None else -1 for r in source.records], np.int64)
    np.save(out / "labels.npy", labels)
    skipped: list = []

    def checkpoint(finished: bool) -> None:
        for f in feats.values():
            f.flush()
        np.save(out / ".valid.tmp.npy", valid)
        os.replace(out / ".valid.tmp.npy", out / "valid.npy")
        write_text(
            meta_file,
            json.dumps(
                {
                    **config,
                    "done_shards": sorted(done_shards),
                    "done": 1 if finished else 0,
                    "batches": 1,
                    "names": [r.name for r in source.records],
                    "classes": source.classes,
                },
                indent=1,
            ),
        )

    checkpoint(False)
    report = progress or (lambda d, t: None)

    def finished(i, value):
        idx = np.array(parts[i])
        for nm in names:
            feats[nm][idx] = value["features"][nm]
        valid[idx] = value["valid"]
        skipped.extend(value["skipped"])
        done_shards.add(i)
        checkpoint(False)
        report(sum(len(parts[j]) for j in done_shards), n)

    todo = [i for i in range(len(parts)) if i not in done_shards]
    if todo:
        actors = _actors(ray, min(workers, len(todo)), model_spec, device, retries)
        opts = {k: v for k, v in options.items() if k in ("pooling", "p", "batch_size", "accel")}
        _run(
            ray,
            actors,
            [(i, lambda a, i=i: a.features.remote(source_spec, parts[i], names, opts)) for i in todo],
            finished,
        )
    checkpoint(True)
    result = FeatureSet.load(out)
    result.skipped = skipped
    return result


def ray_dissect(
    subject: Subject,
    data,
    layers: Sequence[str],
    *,
    workers: int = 2,
    address: str | None = None,
    n_shards: int | None = None,
    device: str = "cpu",
    retries: int = 3,
    quantile: float = 0.005,
    iou_threshold: float = 0.04,
    max_coverage: float = 0.2,
    top: int = 8,
    batch_size: int | None = None,
    accel=None,
    state_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: Callable[[int, int], None] | None = None,
):
    """:func:`convscope.dissect.dissect` over Ray actors: pass 1 (top activations) on each shard,
    merged into the exact thresholds; pass 2 (IoU counts) on each shard, summed. The result
    equals a single-process dissection up to float rounding. With ``state_dir``, every finished
    shard of either pass is kept there, and ``resume=True`` computes only the missing ones."""

    from convscope.dissect.dissection import _Counts, _Plan, finish, merge_threshold_states

    ray = _init(address, workers, device)
    model_spec, _ = _specs(subject, None)
    spec = dict(getattr(data, "spec", {}))
    if spec.get("kind") not in ("broden", "auto-color"):
        raise UserInputError("--engine ray needs concept data opened from a path (Broden or auto-color)")
    plan = _Plan(subject, data, layers)
    names = plan.names
    bs = batch_size or (4 if device == "cpu" else 64)
    parts = shards(len(data), n_shards or 4 * workers)
    report = progress or (lambda d, t: None)
    total = 2 * len(data)
    state = Path(state_dir) if state_dir is not None else None
    if state is not None:
        if not resume:
            _clear_shards(state)
        state.mkdir(parents=True, exist_ok=True)
        _check_manifest(
            state,
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
            },
        )

    def run_pass(p: int, submit, offset: int) -> dict:
        return _run_shards(
            ray,
            parts,
            submit,
            lambda count: _actors(ray, min(workers, count), model_spec, device, retries),
            lambda i: state / f"pass{p}_shard_{i:04d}_of_{len(parts):04d}.pt" if state is not None else None,
            report,
            offset,
            total,
        )

    state1 = run_pass(
        1, lambda a, i: a.dissect_thresholds.remote(spec, parts[i], names, quantile, bs, accel), 0
    )
    tops, skipped = merge_threshold_states(data, plan.maps, quantile, [state1[i] for i in range(len(parts))])
    thr = {n: tops.thresholds(n, separate=True).cpu() for n in names}
    check_finite(Accel.of(accel), thr)
    state2 = run_pass(
        2, lambda a, i: a.dissect_counts.remote(spec, parts[i], names, thr, top, bs, accel), len(data)
    )
    counts = {
        n: _Counts.from_dicts(
            thr[n],
            plan.n_c,
            len(plan.cats),
            top,
            plan.seg,
            plan.device,
            [state2[i][n] for i in range(len(parts))],
        )
        for n in names
    }
    result = finish(plan, data, thr, counts, iou_threshold, quantile, max_coverage, skipped, subject.name)
    if state is not None:
        _clear_shards(state)
    return result


def _clear_shards(state: Path) -> None:
    """Remove what a Ray dissection kept in ``state`` (and the folder, if that leaves it empty);
    nothing else there is touched."""
    kept = [*state.glob("pass[12]_shard_*_of_*.pt"), *state.glob(".pass[12]_shard_*.tmp")]
    for f in [*kept, state / "manifest.json"]:
        f.unlink(missing_ok=True)
    if state.is_dir() and not any(state.iterdir()):
        state.rmdir()
