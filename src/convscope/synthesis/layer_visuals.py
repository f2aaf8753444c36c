"""Feature visualisations of whole layers, as an atlas stores them: for each chosen unit, the
positive image (its channel maximised), the negative image (minimised) and optionally Lucid's
diversity set (several images maximising it with a diversity term between them), with the
channel's mean activation reached by each.

Many units run in one optimisation (:func:`~convscope.synthesis.engine.optimize`, the forward
pass stopped at the layer). Every image starts from its own seed (``seed``, layer, unit, kind and
index), the random transforms are one draw per step shared by the batch, and the objective of an
image reads only its own activations (the diversity term only its own set's): an image is the
same whatever batch it ran in, to float rounding."""

from __future__ import annotations

import weakref
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

import convscope.synthesis.objectives as O
from convscope.accel import Accel
from convscope.errors import UserInputError
from convscope.results import Result
from convscope.subject import Subject
from convscope.synthesis.engine import evaluate, optimize
from convscope.synthesis.objectives import Context, Objective

KINDS = ("positive", "negative", "diversity")
# Lucid's ``channel(...) - 1e2 * diversity(...)`` (its diversity: the summed cosine similarity
# of each image's Gram matrix to the others'); see _objective for the scaling to ours
DIVERSITY_WEIGHT = 100.0
# batch=None: the share of the device's free memory (a GPU) or available RAM (a CPU) that one
# optimisation may take and the most images it runs; halved on out-of-memory
MEMORY_SHARE = {"cuda": 0.8, "cpu": 0.25}
MAX_BATCH = 1024
# On a CPU more images per optimisation stop paying long before memory runs out: on a busy
# shared 2-core VM (efficientnet_lite0, 128 px, benchmarks/visuals_batch.py, three runs in
# docs/microscope.md) image-steps/s stopped rising at batch 8 (blocks.4) and 2 (bn2) in the
# quietest run, and were flat from 4 (blocks.1) and 16 (bn2) to 32 in another; only under the
# heaviest contention did larger batches still gain
CPU_MAX_BATCH = 16
# A CPU keeps no allocator statistics: one step's peak per image is taken as the bytes autograd
# saves for the backward (counted by saved-tensor hooks) times this factor, for the gradients
# and transient buffers beside them. Measured from the peak RSS of a 32-image step of
# efficientnet_lite0 at 128 px over the saved bytes: 1.50 (blocks.1), 1.47 (blocks.2), 1.51
# (blocks.4), 1.34 (bn2; 1.10 at 8 images)
CPU_BACKWARD_FACTOR = 1.5
# bytes per image measured by image_bytes, per model (dropped with it) and probe settings
_PROBED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class LayerVisuals(Result):
    """Feature visualisations of ``units`` of ``layer``: ``images`` (U, S, H, W, 3) uint8, one
    slot per ``slots`` entry (``(kind, index)``: ``("positive", 0)``, ``("negative", 0)``,
    ``("diversity", 0..D-1)``), ``objectives`` (U, S): the channel's mean activation over the map
    on each final image (the negative image's is the value it pushed down; MaCo: the mean over a
    fixed draw of its crops), the ``settings`` they were made with and, for MaCo, ``alpha``
    (U, S, H, W) float32 in [0, 1]: each image's transparency map
    (:func:`~convscope.synthesis.maco.normalize_transparency` of its accumulated gradient; None
    for the other parametrisations)."""

    layer: str
    units: np.ndarray
    slots: list[tuple[str, int]]
    images: np.ndarray
    objectives: np.ndarray
    settings: dict = field(default_factory=dict)
    alpha: np.ndarray | None = None

    def slot(self, kind: str, index: int = 0) -> int:
        """The slot number of ``(kind, index)`` (UserInputError when it was not made)."""
        try:
            return self.slots.index((kind, index))
        except ValueError:
            have = ", ".join(f"{k}{i}" for k, i in self.slots)
            raise UserInputError(f"no {kind} image {index} (made: {have})") from None

    def image(self, unit: int, kind: str = "positive", index: int = 0) -> np.ndarray:
        """One image (H, W, 3) uint8 of ``unit`` (a unit number of the layer)."""
        rows = np.flatnonzero(np.asarray(self.units) == unit)
        if not len(rows):
            raise UserInputError(f"unit {unit} of {self.layer} was not visualised")
        return self.images[rows[0], self.slot(kind, index)]

    def to_image(self, ncols: int | None = None, cell: int | None = None):
        """One row per unit, one column per slot, each captioned with its objective value; with
        a transparency map, each image is followed by itself seen through it (on white)."""
        from convscope.render.grid import image_grid

        cells, caps = [], []
        for r, unit in enumerate(self.units):
            for s, (kind, index) in enumerate(self.slots):
                cells.append(self.images[r, s])
                tag = kind[:3] + (str(index) if kind == "diversity" else "")
                caps.append(f"{int(unit)} {tag} {self.objectives[r, s]:.3g}")
                if self.alpha is not None:
                    a = self.alpha[r, s][..., None]
                    cells.append(self.images[r, s] / 255.0 * a + (1.0 - a))
                    caps.append("transparency")
        per = len(self.slots) * (1 if self.alpha is None else 2)
        return image_grid(cells, ncols=ncols or per, cell=cell, pad=3, captions=caps)

    def headline(self) -> str:
        kinds = ", ".join(dict.fromkeys(k for k, _ in self.slots))
        return f"{len(self.units)} unit(s) of {self.layer}: {kinds}; {self.settings.get('steps')} steps"


def item_seed(seed: int, layer: str, unit: int, kind: str, index: int) -> int:
    """The seed of one image's start: a function of the run's ``seed`` and the image alone."""
    return zlib.crc32(f"{seed}|{layer}|{unit}|{kind}|{index}".encode()) & 0x7FFFFFFF


def slots_for(kinds: Sequence[str], diversity: int) -> list[tuple[str, int]]:
    """The ``(kind, index)`` slots of one unit: ``kinds`` (positive, negative) then ``diversity``
    diversity images."""
    kinds = list(kinds)
    bad = [k for k in kinds if k not in KINDS[:2]]
    if bad:
        raise UserInputError(f"unknown kind(s) {bad}: use 'positive' and/or 'negative' (diversity=N: a set)")
    if diversity < 0 or diversity == 1:
        raise UserInputError(f"diversity is 0 (none) or a set of at least 2 images, not {diversity}")
    slots = [(k, 0) for k in dict.fromkeys(kinds)] + [("diversity", i) for i in range(diversity)]
    if not slots:
        raise UserInputError("nothing to visualise: give kinds or diversity")
    return slots


def visualize_layer(
    subject: Subject,
    layer: str,
    units: Sequence[int] | None = None,
    *,
    kinds: Sequence[str] = ("positive", "negative"),
    diversity: int = 0,
    diversity_weight: float = DIVERSITY_WEIGHT,
    param: str = "fft",
    steps: int = 256,
    size: int | None = None,
    batch: int | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    **options,
) -> LayerVisuals:
    """Feature visualisations of ``units`` of ``layer`` (default: all its channels): per unit
    the ``kinds`` (``"positive"``: its mean activation maximised; ``"negative"``: minimised)
    and, with ``diversity`` = D >= 2, D images maximising it plus ``diversity_weight`` times
    Lucid's diversity term among them (Olah et al. 2017; the weight is Lucid's: 100 as in its
    ``channel - 1e2 * diversity``). ``param``: ``"fft"`` (Lucid's), ``"pixel"`` or ``"maco"``;
    ``steps``, ``size`` (canvas px), ``seed`` and ``options`` (``lr``, ``transform``,
    ``accel``...) go to :func:`~convscope.synthesis.engine.optimize`.

    ``batch``: images per optimisation (a diversity set is never split); None: as many as fit,
    :func:`auto_batch` (measured by a probe step of 1 and 2 images, within a share of the free
    memory, on a CPU at most where throughput stops rising), halving after an out-of-memory
    error until a batch runs (a rerun batch gives the same images); ``settings["batch"]``
    records it. ``progress(done, total)`` counts images, fractionally within a batch (a batch's
    images advance together, step by step)."""
    info = subject.layer(layer)
    n = info.units or 0
    units = list(range(n)) if units is None else [int(u) for u in units]
    bad = [u for u in units if not 0 <= u < n]
    if bad or not units:
        raise UserInputError(f"{info.name} has units 0..{n - 1}; got {bad or units}")
    if batch is not None and batch < 1:
        raise UserInputError(f"batch must be >= 1, not {batch}")
    slots = slots_for(kinds, diversity)
    accel = Accel.of(options.get("accel"), subject)
    settings = {
        **run_settings(param, steps, size, seed, diversity_weight, options),
        "precision": accel.precision,
        "channels_last": accel.layout(subject.device),
    }
    images = objectives = alpha = None
    jobs = _jobs(units, slots)
    total = len(units) * len(slots)
    done = 0
    report = progress or (lambda d, t: None)
    report(0, total)
    if batch is None and total > 1:
        limit = auto_batch(subject, info.name, param=param, size=size, images=total, **options)
    elif batch is None:  # one image needs no probe
        limit = 1
    else:
        limit = min(batch, total)
    pos, shown = 0, [0.0]
    while pos < len(jobs):
        chunk = _take(jobs, pos, limit)
        count = sum(len(j) for j in chunk)

        def step(d, t, base=done, count=count):  # images done within the batch, fractionally
            shown[0] = max(shown[0], base + count * d / t)  # never back after an out-of-memory retry
            report(shown[0], total)

        try:
            imgs, objs, alphas = _run(
                subject, info.name, units, slots, chunk, param, steps, size, seed, diversity_weight, options,
                progress=step,
            )  # fmt: skip
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            if batch is not None or not _out_of_memory(e) or sum(len(j) for j in chunk) <= 1:
                raise
            limit = max(1, sum(len(j) for j in chunk) // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        if images is None:
            images = np.zeros((len(units), len(slots), *imgs.shape[1:]), np.uint8)
            objectives = np.zeros((len(units), len(slots)), np.float32)
        if alphas is not None and alpha is None:
            alpha = np.zeros((len(units), len(slots), *alphas.shape[1:]), np.float32)
        k = 0
        for job in chunk:
            for row, s in job:
                images[row, s] = imgs[k]
                objectives[row, s] = objs[k]
                if alpha is not None:
                    alpha[row, s] = alphas[k]
                k += 1
        pos += len(chunk)
        done += k
        report(done, total)
    settings = {**settings, "batch": limit}
    return LayerVisuals(info.name, np.array(units), slots, images, objectives, settings, alpha)


def run_settings(param: str, steps: int, size, seed: int, diversity_weight: float, options: dict) -> dict:
    """The settings that decide the images (what a resumed atlas build must match)."""
    speed = options.get("accel")
    plain = {
        k: v
        for k, v in options.items()
        if k != "accel" and isinstance(v, (int, float, str, bool, type(None)))
    }
    other = sorted(k for k in options if k not in plain and k != "accel")
    # a reduced precision changes the images, the memory layout does not (only to float
    # rounding); fp32 records nothing, as the builds made before precision was recorded
    precision = getattr(speed, "precision", "fp32")
    return {
        "param": param,
        "steps": int(steps),
        "size": list(size) if isinstance(size, (tuple, list)) else size,  # as JSON reads it back
        "seed": int(seed),
        "diversity_weight": float(diversity_weight),
        **plain,
        **({"precision": precision} if precision != "fp32" else {}),
        **({"other": other} if other else {}),
    }


def auto_batch(
    subject: Subject,
    layer: str,
    *,
    param: str = "fft",
    size: int | tuple[int, int] | None = None,
    images: int | None = None,
    budget: float | None = None,
    **options,
) -> int:
    """Images per optimisation that ``batch=None`` runs for ``layer`` at canvas ``size`` with
    ``param`` and ``options`` (``accel``, ``transform``...): the memory ``budget`` in bytes
    (default :func:`memory_budget`) over the measured bytes per image of one step
    (:func:`image_bytes`), at most :data:`MAX_BATCH`, on a CPU at most :data:`CPU_MAX_BATCH`
    (where throughput stops rising), at most ``images`` (the job count), at least 1 (also when
    the probe itself runs out of memory)."""
    try:
        per = image_bytes(subject, subject.layer(layer).name, param=param, size=size, **options)
    except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return 1
    room = memory_budget(subject.device) if budget is None else budget
    n = min(MAX_BATCH, int(room // per))
    if subject.device.type == "cpu":
        n = min(n, CPU_MAX_BATCH)
    if images is not None:
        n = min(n, int(images))
    return max(1, n)


def memory_budget(device: torch.device) -> float:
    """Bytes one optimisation may take on ``device``: :data:`MEMORY_SHARE` of a GPU's free
    memory (what the driver reports free plus what PyTorch holds cached but unused), or of the
    RAM available to a CPU (Linux's MemAvailable, else the free pages)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return MEMORY_SHARE["cuda"] * (free + cached)
    return MEMORY_SHARE["cpu"] * _available_ram()


def image_bytes(
    subject: Subject, layer: str, *, param: str = "fft", size: int | tuple[int, int] | None = None, **options
) -> float:
    """The memory in bytes that one more image adds to one optimisation step of ``layer``
    (forward stopped at the layer, backward, optimiser): the difference between probe steps of
    1 and 2 images, which leaves out what does not grow with the batch (weights, workspaces).
    On CUDA the peak allocated memory (``torch.cuda.max_memory_allocated``) of each probe; on
    other devices, which keep no allocator statistics, the bytes autograd saves for the
    backward times :data:`CPU_BACKWARD_FACTOR`."""
    options = {k: v for k, v in options.items() if k not in ("steps", "frames", "progress")}
    # the same probe gives the same bytes: measured once per model, layer and settings, so that
    # a build calling this per stored batch probes each layer once
    key = (layer, param, repr(size), str(subject.device), *sorted((k, repr(v)) for k, v in options.items()))
    known = _PROBED.setdefault(subject.model, {})
    if key not in known:
        known[key] = _probe(subject, layer, param, size, options)
    return known[key]


def _probe(subject: Subject, layer: str, param: str, size, options: dict) -> float:
    units = [0]
    slots = [("positive", 0), ("negative", 0)]
    args = (param, 1, size, 0, 0.0, options)
    if subject.device.type == "cuda":
        peaks = []
        for n in (1, 2):
            torch.cuda.synchronize(subject.device)
            torch.cuda.reset_peak_memory_stats(subject.device)
            _run(subject, layer, units, slots, [[(0, s)] for s in range(n)], *args)
            peaks.append(torch.cuda.max_memory_allocated(subject.device))
        per = peaks[1] - peaks[0]
        return float(per if per > 0 else peaks[1] / 2)
    saved = []
    for n in (1, 2):
        with _SavedBytes() as count:
            _run(subject, layer, units, slots, [[(0, s)] for s in range(n)], *args)
        saved.append(count.bytes)
    per = saved[1] - saved[0]
    return float(CPU_BACKWARD_FACTOR * (per if per > 0 else saved[1] / 2))


class _SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    """Counts the bytes of the distinct storages autograd saves for the backward meanwhile."""

    def __init__(self):
        self.bytes = 0
        seen, self.held = set(), []  # held: no storage freed meanwhile can pass its address on

        def pack(t):
            storage = t.untyped_storage()
            key = (t.device, storage.data_ptr())
            if key not in seen:
                seen.add(key)
                self.held.append(t)
                self.bytes += storage.nbytes()
            return t

        super().__init__(pack, lambda t: t)

    def __enter__(self):
        super().__enter__()
        return self

    def __exit__(self, *exc):
        self.held.clear()
        return super().__exit__(*exc)


def _available_ram() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8.0 * 2**30  # an unknown system: assume a small machine


def _jobs(units: list[int], slots: list[tuple[str, int]]) -> list[list[tuple[int, int]]]:
    """Groups of (row, slot) optimised together: each positive and negative image alone, each
    unit's diversity set whole."""
    jobs = []
    for row in range(len(units)):
        jobs += [[(row, s)] for s, (kind, _) in enumerate(slots) if kind != "diversity"]
        div = [(row, s) for s, (kind, _) in enumerate(slots) if kind == "diversity"]
        if div:
            jobs.append(div)
    return jobs


def _take(jobs, pos: int, limit: int):
    """The jobs from ``pos`` that fit in ``limit`` images (at least one job)."""
    chunk, count = [], 0
    for job in jobs[pos:]:
        if chunk and count + len(job) > limit:
            break
        chunk.append(job)
        count += len(job)
    return chunk


def _out_of_memory(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in text or "can't allocate" in text


def _run(subject, layer, units, slots, chunk, param, steps, size, seed, weight, options, progress=None):
    """Optimise one batch of jobs; the images (N, H, W, 3) uint8, the channel values (N,) and,
    for MaCo, the normalised transparency maps (N, H, W) (else None)."""
    from convscope.synthesis.maco import crops as maco_crops
    from convscope.synthesis.maco import normalize_transparency
    from convscope.synthesis.param import make_param

    flat = [(row, s) for job in chunk for row, s in job]
    chans = [units[row] for row, _ in flat]
    signs = [-1.0 if slots[s][0] == "negative" else 1.0 for _, s in flat]
    labels = [f"{layer}:{units[row]}:{slots[s][0]}{slots[s][1]}" for row, s in flat]
    groups, start = [], 0
    for job in chunk:
        if slots[job[0][1]][0] == "diversity":
            groups.append((start, start + len(job)))
        start += len(job)
    init = None
    if param != "maco":  # MaCo seeds each image by its label itself
        if size is None:
            size = tuple(subject.input_size) if subject.fixed_input_size else 128
        h, w = (size, size) if isinstance(size, int) else size
        params, fns = [], []
        for row, s in flat:
            kind, index = slots[s]
            gen = torch.Generator().manual_seed(item_seed(seed, layer, units[row], kind, index))
            p, fn = make_param(
                param, (1, 3, h, w), generator=gen, device=subject.device,
                decorrelate=options.get("decorrelate", True),
            )  # fmt: skip
            params += p
            fns.append(fn)
        init = (params, lambda: torch.cat([fn() for fn in fns]))
    obj = _objective(layer, chans, signs, groups, weight)
    syn = optimize(
        subject, obj, batch=len(flat), size=size, param=param, steps=steps, seed=seed, labels=labels,
        init=init, final_scores=False, progress=progress, **options,
    )  # fmt: skip
    final = torch.as_tensor(syn.images).permute(0, 3, 1, 2).to(subject.device)
    if param == "maco":  # as the engine scores MaCo: a fixed draw of its crops
        fixed = (maco_crops(tuple(subject.input_size)), torch.Generator().manual_seed(seed))
    else:
        fixed = (None, None)
    values = evaluate(subject, O.channel(layer, chans), final, *fixed, accel=options.get("accel"))
    images = np.round(np.clip(syn.images, 0, 1) * 255).astype(np.uint8)
    alpha = None if syn.transparency is None else normalize_transparency(syn.transparency)
    return images, values.detach().cpu().numpy(), alpha


def _objective(layer: str, units: list[int], signs: list[float], groups: list[tuple[int, int]], weight):
    """Per image i: signs[i] times the mean of channel units[i]; plus, for each diversity set
    (images ``groups[j] = (start, stop)``), ``weight * (n - 1)`` times the existing
    :func:`~convscope.synthesis.objectives.diversity` of the set (minus each image's mean Gram
    similarity to the others): summed over the set that is Lucid's ``-weight * diversity``
    beside its batch-mean channel objective, times n (the same ratio of the two terms)."""
    idx = torch.as_tensor(units)
    sign = torch.as_tensor(signs)
    div = O.diversity(layer)

    def fn(c: Context) -> torch.Tensor:
        a = c.act(layer)
        rows = torch.arange(a.shape[0], device=a.device)
        score = sign.to(a.device, a.dtype) * a[rows, idx.to(a.device)].mean(dim=(1, 2))
        if not groups:
            return score
        extra = torch.zeros_like(score)
        for start, stop in groups:
            sub = Context(lambda name, s=start, e=stop: c.act(name)[s:e], None, c.image[start:stop])
            part = weight * (stop - start - 1) * div(sub)
            extra = extra + torch.nn.functional.pad(part, (start, a.shape[0] - stop))
        return score + extra

    return Objective(fn, [layer], name=f"visuals({layer})")
