"""The scan driver: one pass over a dataset, top-K images per unit, streaming statistics.

Order of work (deterministic for a given seed and batch size):

1. Thresholds for `area` (a unit's top-0.5% activation value): unless given, they are the
   exact 0.995 quantile of each unit's values over a seeded random *calibration sample* of
   ``threshold_sample`` images (rounded up to whole batches), which the scan reads first: the
   first images that decode in an order fixed by a seeded hash of each image's name, a file
   that cannot be decoded being replaced by the next one in that order. Broken files therefore
   change neither the size of the sample nor which images it holds.
   Only the top 0.5% of values are kept while reading them (O(units x sample x positions /
   200) memory), and the sample's activations are reused for the scan when they fit in
   ``buffer_bytes`` (else the sample is read again). On datasets no larger than the sample the
   threshold is the exact quantile over the whole dataset; see docs/scan.md for its accuracy.
   A saturating unit whose threshold equals its maximum gets it lowered by one float step
   (:func:`~convscope.scan.state.saturation_rule`), so `area` counts its saturated positions.
2. The remaining images in index order. Every batch is folded into a mergeable
   :class:`~convscope.scan.state.LayerState`; reductions stay on the device.
3. With ``checkpoint`` set, the state is saved atomically every ``checkpoint_every`` seconds
   at a batch boundary; ``resume=True`` continues from it and ends with the same result as an
   uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral
from pathlib import Path

import torch

from convscope.accel import Accel, check_finite, prepared, with_default_settings
from convscope.errors import ConvscopeError, UserInputError
from convscope.inputs.batches import Batches
from convscope.inputs.fileio import atomic_path, load_weights_only, name_bytes
from convscope.inputs.sources import ImageSource
from convscope.inputs.workers import batch_bytes, resolve_workers
from convscope.quantiles import TopValues
from convscope.recorder import Recorder
from convscope.scan.result import ScanResult
from convscope.scan.state import CRITERIA, SECONDARY, LayerState, Scratch
from convscope.subject import Subject
from convscope.units import Basis, Direction, resolve_bases

Progress = Callable[[int, int], None]
CHECKPOINT_VERSION = 3  # 2: the calibration sample is recorded; 3: top-K keeps the tie-break key


def scan(
    subject: Subject,
    data: ImageSource,
    layers: str | Sequence[str],
    *,
    k: int = 16,
    criteria: Sequence[str] = CRITERIA,
    directions: int = 0,
    seed: int = 0,
    batch_size: int = 32,
    workers: int | None = None,
    threshold_sample: int = 256,
    thresholds: dict[str, torch.Tensor] | None = None,
    indices: Sequence[int] | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: float = 30.0,
    resume: bool = False,
    accel: Accel | None = None,
    buffer_bytes: int = 1 << 30,
    progress: Progress | None = None,
    calibration_only: bool = False,
    bases: Mapping[str, Basis] | None = None,
) -> ScanResult:
    """Scan ``data`` through ``subject``: the top-``k`` images of every unit of ``layers`` under
    each criterion (``max``, ``mean``, ``area``), plus ``directions`` seeded random unit-norm
    directions per layer scanned like units, and per-unit statistics.

    ``indices`` restricts the scan to part of ``data`` (e.g. one machine's share); pass the
    ``thresholds`` of a previous scan to make parts mergeable with :meth:`ScanResult.merge`.
    ``accel`` sets precision, memory layout and where images are decoded (see
    :mod:`convscope.accel`); ``workers`` decoding processes default to the machine's share.
    ``calibration_only`` stops after the calibration sample (a distributed scan's first step):
    the result holds its images and the thresholds every part then uses.
    ``bases`` ``{layer: basis}`` scans a basis's codes as the layer's units instead of its
    channels: a callable (B, C, H, W) -> (B, n, H, W) with attributes ``n`` and ``fingerprint``
    and a ``to(device)`` method (a concept set's encoder, :meth:`ConceptSet.basis`); the random
    ``directions`` stay directions of the channels, appended after the basis's units.
    Returns a :class:`ScanResult`.
    """
    criteria = check_settings(k, criteria, batch_size, directions)
    infos = [subject.layers.get(a) for a in subject.layers.select(layers)]
    for info in infos:
        if info.shape is None:
            raise UserInputError(f"layer {info.name} produces no single tensor and cannot be scanned")
    names = [i.name for i in infos]
    device = subject.device
    bases = resolve_bases(subject.layers, names, bases, "scanned")
    accel = Accel.of(accel, subject)
    workers = resolve_workers(workers, device, batch_bytes(batch_size, subject.input_size, accel.decode))
    if data.transform is None:
        data = data.with_transform(subject.transform)

    channels = {i.name: bases[i.name].n if i.name in bases else i.units for i in infos}
    dirs = {
        i.name: torch.stack(
            [d.vector for d in Direction.random(i.name, i.units, directions, seed=_layer_seed(seed, i.name))]
        ).to(device)
        for i in infos
        if directions
    }
    total_units = {n: channels[n] + (directions if directions else 0) for n in names}
    map_sizes = {i.name: tuple(i.shape[1:]) if len(i.shape) == 3 else (1, 1) for i in infos}
    states = {n: LayerState.empty(total_units[n], map_sizes[n], k, criteria, device) for n in names}

    all_indices = list(range(len(data))) if indices is None else [int(i) for i in indices]
    need_thresholds = "area" in criteria and thresholds is None
    if "area" in criteria and thresholds is not None:
        for n in names:
            if n not in thresholds or thresholds[n].numel() != total_units[n]:
                raise UserInputError(f"thresholds do not cover every unit of {n}")
            states[n].thresholds = thresholds[n].to(device).float()
    n_cal = 0
    if need_thresholds:
        n_cal = min(len(all_indices), math.ceil(threshold_sample / batch_size) * batch_size)
    candidates = _calibration_order(data, all_indices, seed) if n_cal else []
    sample: list[int] | None = None if n_cal else []  # the candidates read for calibration
    order = list(all_indices)  # the read order, calibration sample first once it is known

    config = {
        "model": subject.name,
        "source": data.description,
        "n_source": len(data),
        "layers": names,
        "k": k,
        "criteria": list(criteria),
        "directions": directions,
        "bases": {n: b.fingerprint for n, b in bases.items()},
        "seed": seed,
        "batch_size": batch_size,
        "threshold_sample": n_cal,
        "indices": hashlib.sha1(json.dumps(all_indices).encode()).hexdigest(),
        "given_thresholds": thresholds is not None,
        "secondary_key": dict(SECONDARY),
        **accel.config(),
    }
    position, processed, seconds = 0, 0, 0.0
    skipped: dict[int, str] = {}
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if resume and ckpt is not None and ckpt.exists():
        saved = load_weights_only(ckpt, "scan checkpoint", "start a new scan with --overwrite")
        if not isinstance(saved, dict) or "config" not in saved:
            raise UserInputError(
                f"cannot resume: {ckpt} is not a scan checkpoint; it is left as it "
                "is, start a new scan with --overwrite"
            )
        if (
            saved.get("version") != CHECKPOINT_VERSION
            or {"bases": {}, **with_default_settings(saved["config"])} != config
        ):
            raise ConvscopeError(
                f"the checkpoint {ckpt} belongs to a scan with other settings; "
                "start a new scan instead of resuming"
            )
        states = {n: LayerState.from_dict(saved["states"][n], device) for n in names}
        position, processed, seconds = saved["position"], saved["processed"], saved["seconds"]
        skipped = {int(i): r for i, r in saved["skipped"]}
        sample = saved["sample"]
        if sample is not None:
            order = _sample_first(sample, all_indices)

    def save_checkpoint() -> None:
        if ckpt is None:
            return
        blob = {
            "version": CHECKPOINT_VERSION,
            "config": config,
            "position": position,
            "processed": processed,
            "seconds": seconds,
            "sample": sample,
            "skipped": [[i, r] for i, r in sorted(skipped.items())],
            "states": {n: s.to_dict() for n, s in states.items()},
        }
        with atomic_path(ckpt) as tmp:
            torch.save(blob, tmp)

    report = progress or (lambda done, total: None)
    report(position, len(order))

    def run_batches(start: int, stop: int, indices: list[int] | None = None):
        batches = Batches(
            data,
            batch_size,
            workers,
            indices=order[start:stop] if indices is None else indices,
            pin_memory=device.type == "cuda",
            decode=accel.decode,
            device=device,
        )
        for batch in batches:
            skipped.update(batch.skipped)
            yield batch

    def calibration_batches(read: list[int]):
        # The first n_cal candidates that decode: each round reads (in index order) as many
        # further candidates as images are still missing, and records them in `read`.
        good, nxt = 0, 0
        while good < n_cal and nxt < len(candidates):
            take = sorted(candidates[nxt : nxt + n_cal - good])
            nxt += len(take)
            read.extend(take)
            for batch in run_batches(0, 0, take):
                good += len(batch.indices)
                yield batch

    with _Engine(subject, names, dirs, accel, bases) as engine:
        # 1. calibration sample: `area` thresholds from the top values of each unit
        if sample is None:
            t0 = time.perf_counter()
            tops = TopValues(n_cal, map_sizes)
            buffered: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
            used, done, read = 0, 0, []
            for batch in calibration_batches(read):
                done += len(batch.indices) + len(batch.skipped)
                report(done, len(order))
                if not len(batch.indices):
                    continue
                acts = engine.forward(batch.images)
                tops.add(acts)
                used += sum(a.numel() * a.element_size() for a in acts.values())
                if used <= buffer_bytes:
                    buffered.append((batch.indices, acts))
            for n in names:
                states[n].thresholds = tops.thresholds(n, separate=True).to(device)
            if used <= buffer_bytes:
                for idx, acts in buffered:
                    for n in names:
                        states[n].update(acts[n], idx, engine.scratch)
                    processed += len(idx)
            else:  # the sample's activations did not fit in memory: read it again
                buffered.clear()
                for batch in run_batches(0, 0, read):
                    if len(batch.indices):
                        engine.scan(batch.images, batch.indices, states)
                        processed += len(batch.indices)
            buffered.clear()
            sample, order = read, _sample_first(read, all_indices)
            position = len(sample)
            seconds += time.perf_counter() - t0
            if not calibration_only:
                save_checkpoint()

        # 2. everything else
        t0 = time.perf_counter()
        last_save = time.monotonic()
        for batch in run_batches(position, position if calibration_only else len(order)):
            if len(batch.indices):
                engine.scan(batch.images, batch.indices, states)
            processed += len(batch.indices)
            position = min(position + batch_size, len(order))
            if ckpt is not None and time.monotonic() - last_save >= checkpoint_every:
                seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                save_checkpoint()
                last_save = time.monotonic()
            report(position, len(order))
        seconds += time.perf_counter() - t0
    if not calibration_only:
        save_checkpoint()
    check_finite(accel, {n: s.sum for n, s in states.items()})

    result = ScanResult(
        layers=names,
        channels=channels,
        directions={n: d.cpu() for n, d in dirs.items()},
        states=states,
        k=k,
        criteria=criteria,
        image_names=[r.name for r in data.records],
        image_labels=[r.label for r in data.records],
        classes=list(data.classes),
        skipped=sorted(skipped.items()),
        processed=processed,
        seconds=seconds,
        config={**config, "versions": library_versions()},
        source=data,
    )
    if not calibration_only:
        result.record_ties()  # in the run's config; a SaturationWarning for saturating layers
    return result


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose numerics make a scan's numbers (recorded with the run:
    another torch or thread count rounds the forward pass differently in the last bits)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("convscope", "torch", "torchvision", "timm", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    out["threads"] = str(torch.get_num_threads())
    return out


def _layer_seed(seed: int, layer: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(layer.encode())) % (2**31)


def _calibration_order(data: ImageSource, indices: list[int], seed: int) -> list[int]:
    """``indices`` in the order calibration tries them: by a seeded hash of each image's name,
    so that the images a sample holds do not depend on the other files of the source."""

    def key(i: int) -> tuple[bytes, int]:
        return hashlib.blake2b(
            name_bytes(data.records[i].name), digest_size=8, key=str(seed).encode()
        ).digest(), i

    return sorted(indices, key=key)


def _sample_first(sample: list[int], indices: list[int]) -> list[int]:
    chosen = set(sample)
    return sorted(sample) + [i for i in indices if i not in chosen]


class _Engine:
    """Runs truncated forward passes and folds each recorded layer into the scan state.

    One Recorder stays attached for the whole scan (its hooks go when the engine exits)."""

    def __init__(
        self,
        subject: Subject,
        layers: list[str],
        dirs: dict[str, torch.Tensor],
        accel: Accel | None = None,
        bases: Mapping[str, Basis] | None = None,
    ):
        self.subject = subject
        self.dirs = dirs
        self.bases = {n: b.to(subject.device) for n, b in (bases or {}).items()}
        self.device = subject.device
        self.accel = Accel.of(accel, subject)
        self.scratch = Scratch()  # one work buffer for every layer, freed with the engine
        self._layout = prepared(subject.model, self.accel, self.device)
        self._sink: Callable[[str, torch.Tensor], None] = lambda name, t: None
        self._rec = Recorder(subject, layers, stop=True, keep=False, callback=self._callback)

    def __enter__(self) -> _Engine:
        self._layout.__enter__()
        self._rec.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._rec.remove()
        self._layout.__exit__(None, None, None)

    def _units(self, name: str, t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 2:
            t = t[:, :, None, None]
        t = t.float()
        units = self.bases[name](t) if name in self.bases else t
        if name in self.dirs:
            units = torch.cat([units, torch.einsum("bchw,nc->bnhw", t, self.dirs[name])], dim=1)
        return units

    def _callback(self, address: str, call: int, output) -> None:
        # Reduce inside the hook, before any later in-place op can overwrite the output; in
        # float32 (outside autocast), so that directions and counts add no rounding of their own.
        with torch.autocast(self.device.type, enabled=False):
            self._sink(address, self._units(address, self._rec.extract(address, output)))

    def _run(self, images: torch.Tensor) -> None:
        x = self.accel.inputs(images, self.device)
        with torch.inference_mode(), self.accel.autocast(self.device):
            self.subject(x)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Recorded unit activations (B, U, H, W) per layer (copies)."""
        out: dict[str, torch.Tensor] = {}
        self._sink = lambda name, t: out.__setitem__(name, t.clone())
        self._run(images)
        return out

    def scan(self, images: torch.Tensor, indices: torch.Tensor, states: dict[str, LayerState]) -> None:
        idx = indices.to(self.device)
        self._sink = lambda name, t: states[name].update(t, idx, self.scratch)
        self._run(images)


def check_settings(
    k: int = 16, criteria: Sequence[str] = CRITERIA, batch_size: int = 32, directions: int = 0
) -> tuple[str, ...]:
    """The distinct ``criteria`` when :func:`scan` can run with these settings, else a one-line
    :class:`UserInputError` (checked before any work)."""
    criteria = (criteria,) if isinstance(criteria, str) else tuple(dict.fromkeys(criteria))
    unknown = [c for c in criteria if c not in CRITERIA]
    if unknown or not criteria:
        raise UserInputError(f"unknown criteria {unknown}; choose from {', '.join(CRITERIA)}")

    def whole(v, low: int) -> bool:
        return isinstance(v, Integral) and not isinstance(v, bool) and v >= low

    if not (whole(k, 1) and whole(batch_size, 1) and whole(directions, 0)):
        raise UserInputError(
            f"k and batch size must be whole numbers >= 1 and directions >= 0, not k={k!r}, "
            f"batch_size={batch_size!r}, directions={directions!r}"
        )
    return criteria


__all__ = ["check_settings", "scan"]
