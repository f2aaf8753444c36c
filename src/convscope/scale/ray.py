"""The Ray side of :class:`~convscope.scale.engine.RayEngine`: the actors and how shards run on them.

Each actor (:class:`Worker`) loads the model and the images again from their specs (what an
atlas records), runs the ordinary single-process code of the capability folders on its shard
(their public functions only), and returns a mergeable state. Actors are started once per Ray
session and kept (:func:`actors`); a finished shard can be kept in a file so that a killed job
run again computes only the missing ones (:func:`run_shards`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from convscope.errors import UserInputError
from convscope.inputs.fileio import atomic_path
from convscope.inputs.sources import ImageSource
from convscope.scan.scanner import scan
from convscope.subject import Subject


def shards(n: int, parts: int) -> list[list[int]]:
    """``range(n)`` cut into ``parts`` contiguous, nearly equal pieces (none empty)."""
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(parts)]


def import_ray():
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserInputError("--engine ray needs Ray: pip install 'convscope[ray]'") from None
    return ray


def init_ray(address: str | None, workers: int, device: str = "cpu"):
    """Ray, started on ``address`` (None: a local node of ``workers`` CPUs, or of every core and
    GPU for a CUDA ``device``) unless it already runs."""
    ray = import_ray()
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


def specs(subject: Subject, source: ImageSource | None) -> tuple[dict, dict | None]:
    """The specs workers load the model and the images from; a one-line error when the model or
    the images cannot be loaded again elsewhere (random weights, images not from a path)."""
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


class Worker:
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
        self,
        spec: dict,
        indices: list[int],
        layers: list[str],
        quantile: float,
        batch_size: int,
        accel=None,
        bases=None,
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
            bases=bases,
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
        bases=None,
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
            bases=bases,
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


def actors(ray, n: int, model_spec, device: str, retries: int):
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
    cpus = cpus_per_gpu(ray) if gpus else 1
    cls = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=retries, max_task_retries=retries)(Worker)
    while len(pool) < n:
        pool.append(cls.remote(model_spec, device, cpus))
    return pool[:n]


def cpus_per_gpu(ray) -> int:
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
    ray = import_ray()
    for pool in _POOL.values():
        for a in pool:
            ray.kill(a)
    _POOL.clear()


def run_tasks(ray, actors, tasks: list[tuple[int, Callable]], done: Callable[[int, object], None]) -> None:
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


def run_shards(
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
        run_tasks(ray, start_actors(len(todo)), [(i, lambda a, i=i: submit(a, i)) for i in todo], done)
    return got
