"""Network dissection (Bau, Zhou et al. 2017): every unit against every concept.

Two passes over a concept dataset. Pass 1: each unit's threshold T_k, the exact top-0.5%
quantile of all its activations over the dataset (with the scan's saturation rule), placed in
the middle of the gap between the activation values it separates (as the scan's `area`
thresholds: the same values lie above it, but none on it, so a tied value, from max pooling
or a clamp, does not flip with the last-bit rounding of another thread count). Pass 2: each
unit's map, upsampled bilinearly to the segmentation resolution and thresholded at T_k, is
counted against the concept labels on the device: per image, one ``index_add`` of the (pixels x
units) mask by the label of each pixel, so the cost does not grow with the number of concepts.
As in NetDissect, a unit's area is counted per category over the images annotated in that
category, and

    IoU_{k,c} = sum |M_k & L_c| / (sum_{images annotated in cat(c)} |M_k| + sum |L_c| - sum |M_k & L_c|).

Image-level concepts (scene, texture) cover their whole image. A unit detects its best concept
when that IoU exceeds ``iou_threshold`` (0.04, the paper's value).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from convscope.accel import Accel, check_finite, prepared
from convscope.dissect.concepts import ConceptItem
from convscope.dissect.result import Dissection, LayerDissection
from convscope.dissect.transform import with_dissection_transform
from convscope.inputs.images import SkipReport
from convscope.inputs.workers import batch_bytes, resolve_workers
from convscope.quantiles import TopValues, rank
from convscope.recorder import Recorder
from convscope.subject import Subject
from convscope.units import Basis
from convscope.units import resolve_bases as resolve_units_bases

# Elements of one (images x units x pixels) block in pass 2; bounds its memory.
_BLOCK = 1 << 23  # also keeps float32 counts per block exact (< 2**24)


def _collate(items: list[ConceptItem]):
    good = [it for it in items if it.error is None]
    bad = [it for it in items if it.error is not None]
    x = torch.stack([it.x for it in good]) if good else torch.empty(0)
    return x, good, bad


def loader_batch_bytes(subject: Subject, batch_size: int) -> int:
    """Bytes a DataLoader worker hands over per batch of concept data: images and their label
    planes, about twice the images' float32 bytes."""
    return batch_bytes(2 * batch_size, subject.input_size)


class _Forward:
    """Recorded forward passes over ``names`` with one run's speed settings (model layout for
    the duration, autocast, pinned batches, decoding workers sized to the machine)."""

    def __init__(
        self,
        subject: Subject,
        names: Sequence[str],
        accel: Accel | None,
        workers: int | None,
        bases: Mapping[str, Basis] | None = None,
    ):
        self.subject, self.names = subject, list(names)
        self.bases = {n: b.to(subject.device) for n, b in (bases or {}).items()}
        self.accel = Accel.of(accel, subject)
        if self.accel.decode != "cpu":
            from convscope.errors import UserInputError

            raise UserInputError(
                "dissection decodes images with their segmentations on the CPU; "
                "decode='device' is for scans and features (--decode cpu here)"
            )
        self.device = subject.device
        self.workers = workers  # None: sized to the machine and the batch, in batches()
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _Forward:
        self._stack.enter_context(prepared(self.subject.model, self.accel, self.device))
        self.rec = self._stack.enter_context(Recorder(self.subject, self.names, stop=True))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def batches(self, data, batch_size: int, report: SkipReport | None, indices=None):
        """``(x, good items)`` per batch; unreadable items go to ``report``."""
        dataset = data if indices is None else torch.utils.data.Subset(data, list(indices))
        workers = resolve_workers(self.workers, self.device, loader_batch_bytes(self.subject, batch_size))
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
        )
        for x, good, bad in loader:
            if report is not None:
                for it in bad:
                    report.add(data.name(it.index), it.error)
            yield x, good

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Activations (B, U, h, w) in float32 per layer; a layer with a basis gives its codes
        (B, n, h, w), encoded in float32 outside autocast (as the scan does)."""
        with torch.inference_mode(), self.accel.autocast(self.device):
            self.subject(self.accel.inputs(x, self.device))
        out = {}
        for n in self.names:
            a = self.rec[n].float()
            a = a[:, :, None, None] if a.dim() == 2 else a
            if n in self.bases:
                with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
                    a = self.bases[n](a).float()
            out[n] = a
        return out


class _Plan:
    """What both passes need: layers, map sizes, the label -> column table, categories."""

    def __init__(
        self, subject: Subject, data, layers: Sequence[str], bases: Mapping[str, Basis] | None = None
    ):
        self.infos = [subject.layer(n) for n in layers]
        self.names = [i.name for i in self.infos]
        self.bases = resolve_bases(subject, self.names, bases)
        self.units = {i.name: self.bases[i.name].n if i.name in self.bases else i.units for i in self.infos}
        self.maps = {i.name: tuple(i.shape[1:]) if len(i.shape) == 3 else (1, 1) for i in self.infos}
        self.numbers = sorted(data.concepts)
        self.n_c = len(self.numbers)
        device = subject.device
        lut = torch.full((max(self.numbers) + 1,), self.n_c, dtype=torch.long)  # n_c = none
        lut[self.numbers] = torch.arange(self.n_c)
        self.lut = lut.to(device)
        self.cats = list(data.categories)
        self.cat_of = torch.tensor(
            [
                self.cats.index(data.concepts[c].category) if data.concepts[c].category in self.cats else 0
                for c in self.numbers
            ],
            device=device,
        )
        self.seg = tuple(data.seg_size)
        self.s = self.seg[0] * self.seg[1]
        self.device = device

    def labels(self, items) -> _Labels:
        return _labels(items, self.lut, self.cats, self.n_c, self.s, self.device)

    def per_image_bytes(self) -> int:
        maps = self.maps
        return sum(self.units[n] * maps[n][0] * maps[n][1] * 4 for n in self.names) + 8 * self.s


def resolve_bases(subject: Subject, names: Sequence[str], bases: Mapping[str, Basis] | None) -> dict:
    """``bases`` keyed by the exact names of the dissected ``names``
    (:func:`convscope.units.resolve_bases`, the scan's rule)."""
    return resolve_units_bases(subject.layers, names, bases, "dissected")


def _threshold_pass(
    fwd: _Forward,
    plan: _Plan,
    data,
    tops: TopValues,
    batch_size: int,
    skipped: SkipReport | None,
    indices=None,
    keep: list | None = None,
    tick: Callable[[], None] = lambda: None,
) -> None:
    """Pass 1: fold every batch's activations into ``tops``; with ``keep``, also store them with
    their labels there (so that pass 2 need not read the data again)."""
    for x, good in fwd.batches(data, batch_size, skipped, indices):
        if len(good):
            acts = fwd(x)
            tops.add(acts)
            if keep is not None:
                keep.append((acts, plan.labels(good)))
        tick()


def _count_pass(
    fwd: _Forward,
    plan: _Plan,
    data,
    counts: dict,
    batch_size: int,
    indices=None,
    stored: list | None = None,
    tick: Callable[[], None] = lambda: None,
) -> None:
    """Pass 2: add every batch's intersections and areas to ``counts``, from ``stored``
    activations when pass 1 kept them, else by reading the data again."""
    if stored is not None:
        batches = iter(stored)
    else:
        batches = (
            (fwd(x), plan.labels(good)) if len(good) else None
            for x, good in fwd.batches(data, batch_size, None, indices)
        )
    for item in batches:
        if item is not None:
            acts, labels = item
            for n in plan.names:
                counts[n].add(acts[n], labels)
        if stored is None:
            tick()


def threshold_state(
    subject: Subject,
    data,
    layers: Sequence[str],
    *,
    quantile: float = 0.005,
    indices=None,
    batch_size: int = 4,
    workers: int | None = 0,
    accel: Accel | None = None,
    bases: Mapping[str, Basis] | None = None,
):
    """Pass 1 on part of the data (``indices``): per layer the largest activations needed for
    the exact quantile over the *whole* dataset, and the images skipped. Merge the states of
    disjoint parts with :func:`merge_threshold_states`. ``bases``: as in :func:`dissect`."""
    data = with_dissection_transform(data, subject)
    plan = _Plan(subject, data, layers, bases)
    tops = TopValues(len(data), plan.maps, quantile=1 - quantile)
    skipped = SkipReport()
    with _Forward(subject, plan.names, accel, workers, plan.bases) as fwd:
        _threshold_pass(fwd, plan, data, tops, batch_size, skipped, indices)
    return {
        "values": {n: v.cpu() for n, v in tops.values.items()},
        "seen": tops.seen,
        "skipped": skipped.items,
    }


def merge_threshold_states(data, maps: dict, quantile: float, states: list[dict]) -> tuple[TopValues, list]:
    """The :class:`TopValues` of the union of the parts, and every skipped file."""
    tops = TopValues(len(data), maps, quantile=1 - quantile)
    skipped = []
    for st in states:
        skipped += [tuple(x) for x in st["skipped"]]
        for n, v in st["values"].items():
            tops.add_values(n, v, st["seen"][n])
    return tops, skipped


def _new_counts(plan: _Plan, thresholds: dict, top: int) -> dict:
    return {
        n: _Counts(thresholds[n].to(plan.device), plan.n_c, len(plan.cats), top, plan.seg, plan.device)
        for n in plan.names
    }


def count_state(
    subject: Subject,
    data,
    layers: Sequence[str],
    thresholds: dict,
    *,
    top: int = 8,
    indices=None,
    batch_size: int = 4,
    workers: int | None = 0,
    accel: Accel | None = None,
    bases: Mapping[str, Basis] | None = None,
) -> dict:
    """Pass 2 on part of the data: per layer the IoU counts (mergeable by addition) and the
    part's top images. ``bases``: as in :func:`dissect`."""
    data = with_dissection_transform(data, subject)
    plan = _Plan(subject, data, layers, bases)
    counts = _new_counts(plan, thresholds, top)
    with _Forward(subject, plan.names, accel, workers, plan.bases) as fwd:
        _count_pass(fwd, plan, data, counts, batch_size, indices)
    return {n: c.to_dict() for n, c in counts.items()}


def dissect(
    subject: Subject,
    data,
    layers: Sequence[str],
    *,
    quantile: float = 0.005,
    iou_threshold: float = 0.04,
    max_coverage: float = 0.2,
    batch_size: int | None = None,
    workers: int | None = None,
    top: int = 8,
    cache_bytes: int = 2 << 30,
    accel: Accel | None = None,
    progress: Callable[[int, int], None] | None = None,
    bases: Mapping[str, Basis] | None = None,
) -> Dissection:
    """Dissect ``layers`` of ``subject`` against the concepts of ``data`` (a
    :class:`BrodenDataset` or :class:`ColorConcepts`). ``quantile``: fraction of each unit's
    activations above its threshold. ``top``: images kept per unit (by maximum activation) for
    the report. A unit whose region covers more than ``max_coverage`` of all pixels (one that
    saturates on most of the data, where the top-quantile threshold falls at its ceiling) is
    labelled but not counted as a detector. When the activations and labels fit in
    ``cache_bytes``, they are kept from the first pass on the device and the dataset is read
    once; otherwise it is read twice. ``accel``: precision and memory layout
    (:mod:`convscope.accel`).
    ``batch_size`` defaults to 4 on a CPU (where small batches stay in cache and run fastest)
    and 64 on an accelerator. Unreadable images are skipped and listed in the result.
    ``bases`` ``{layer: basis}`` dissects a basis's ``n`` codes as the layer's units instead of
    its channels (thresholds, IoU, detectors and top images per code), as the scan does
    (:class:`convscope.units.Basis`, e.g. a concept set's encoder)."""
    if batch_size is None:
        batch_size = 4 if subject.device.type == "cpu" else 64
    data = with_dissection_transform(data, subject)  # the caller's data keeps its transform (None)
    plan = _Plan(subject, data, layers, bases)
    cache = len(data) * plan.per_image_bytes() <= cache_bytes
    report = progress or (lambda d, t: None)
    skipped = SkipReport()
    total = len(data) * (1 if cache else 2)
    tops = TopValues(len(data), plan.maps, quantile=1 - quantile)
    stored: list | None = [] if cache else None
    done, limit = 0, len(data)  # limit: where the current pass ends

    def tick() -> None:
        nonlocal done
        done = min(done + batch_size, limit)
        report(done, total)

    t0 = time.perf_counter()
    with _Forward(subject, plan.names, accel, workers, plan.bases) as fwd:
        _threshold_pass(fwd, plan, data, tops, batch_size, skipped, keep=stored, tick=tick)
        done, limit = len(data), total
        thr = {n: tops.thresholds(n, separate=True) for n in plan.names}
        check_finite(fwd.accel, thr)  # an overflowed unit has an infinite threshold
        t1 = time.perf_counter()
        counts = _new_counts(plan, thr, top)
        _count_pass(fwd, plan, data, counts, batch_size, stored=stored, tick=tick)
    seconds = {"pass1": t1 - t0, "pass2": time.perf_counter() - t1}
    return finish(
        plan, data, thr, counts, iou_threshold, quantile, max_coverage, skipped.items, subject.name, seconds
    )


def finish(
    plan: _Plan,
    data,
    thr: dict,
    counts: dict,
    iou_threshold: float,
    quantile: float,
    max_coverage: float,
    skipped: list,
    model: str,
    seconds: dict | None = None,
) -> Dissection:
    """IoU from the summed counts of every layer."""
    result = {}
    for n in plan.names:
        c = counts[n]
        both = c.inter[:, : plan.n_c]
        union = c.area_m[:, plan.cat_of] + c.area_l[None, : plan.n_c] - both
        iou = torch.where(union > 0, both / union.clamp_min(1), torch.zeros_like(union))
        result[n] = LayerDissection(
            n,
            thr[n].cpu().numpy(),
            plan.numbers,
            iou.cpu().numpy(),
            c.best_i.cpu().numpy(),
            c.best_v.cpu().numpy(),
            (c.area / max(1, c.pixels)).cpu().numpy(),
        )
    return Dissection(
        result,
        dict(data.concepts),
        plan.cats,
        iou_threshold,
        quantile,
        max_coverage,
        len(data) - len(skipped),
        list(skipped),
        dict(getattr(data, "spec", {})),
        model,
        seconds or {},
    )


@dataclass
class _Labels:
    """One batch's labels: ``cols`` (B, L, S) concept columns (``n_c`` = none; a concept repeated
    at a pixel by a second plane counts once), ``image_cols`` (B, n_c + 1) image-level concepts
    as 0/1, ``annotated`` (B, K) categories, ``index`` (B,) dataset indices, ``area`` (n_c + 1,)
    label pixels."""

    cols: torch.Tensor
    image_cols: torch.Tensor
    annotated: torch.Tensor
    index: torch.Tensor
    area: torch.Tensor


def _labels(items: list[ConceptItem], lut, cats, n_c, s, device) -> _Labels:
    depth = max(1, max(it.planes.shape[0] for it in items))
    dtype = torch.int16 if n_c < 2**15 - 1 else torch.int32
    cols = torch.full((len(items), depth, s), n_c, dtype=torch.long, device=device)
    annotated = torch.zeros(len(items), len(cats), device=device)
    image_cols = torch.zeros(len(items), n_c + 1, device=device)
    for b, it in enumerate(items):
        if it.planes.shape[0]:
            p = it.planes.to(device).flatten(1)
            known = (p >= 0) & (p < len(lut))  # labels missing from label.csv count as none
            cols[b, : p.shape[0]] = torch.where(known, lut[p.clamp(0, len(lut) - 1)], n_c)
        for lvl in range(1, depth):
            dup = (cols[b, :lvl] == cols[b, lvl]).any(0)
            cols[b, lvl][dup] = n_c
        for c in it.image_level:
            if 0 <= c < len(lut):
                image_cols[b, lut[c]] = 1
        for c in it.annotated:
            if c in cats:
                annotated[b, cats.index(c)] = 1
    image_cols[:, n_c] = 0
    area = torch.bincount(cols.flatten(), minlength=n_c + 1).double() + s * image_cols.sum(0).double()
    index = torch.tensor([it.index for it in items], device=device)
    return _Labels(cols.to(dtype), image_cols, annotated, index, area)


class _Counts:
    """One layer's running sums: ``inter`` (U, C + 1), ``area_m`` (U, K) unit pixels over the
    images annotated in each category, ``area_l`` (C + 1,) label pixels, and the top images."""

    def __init__(self, thr, n_c, n_cats, top, seg, device):
        u = thr.numel()
        self.thr, self.n_c, self.top, self.seg = thr, n_c, top, seg
        self.inter = torch.zeros(u, n_c + 1, device=device, dtype=torch.float64)
        self.area_m = torch.zeros(u, n_cats, device=device, dtype=torch.float64)
        self.area_l = torch.zeros(n_c + 1, device=device, dtype=torch.float64)
        self.area = torch.zeros(u, device=device, dtype=torch.float64)
        self.pixels = 0
        self.best_v = torch.full((u, 0), -torch.inf, device=device)
        self.best_i = torch.zeros((u, 0), dtype=torch.long, device=device)

    _FIELDS = ("inter", "area_m", "area_l", "area")

    def to_dict(self) -> dict:
        return {
            **{f: getattr(self, f).cpu() for f in self._FIELDS},
            "pixels": self.pixels,
            "best_v": self.best_v.cpu(),
            "best_i": self.best_i.cpu(),
        }

    @classmethod
    def from_dicts(cls, thr, n_c, n_cats, top, seg, device, parts: list[dict]) -> _Counts:
        """The sum of disjoint parts' counts, and their merged top images."""
        c = cls(thr.to(device), n_c, n_cats, top, seg, device)
        for p in parts:
            for f in cls._FIELDS:
                getattr(c, f).add_(p[f].to(device))
            c.pixels += p["pixels"]
            c._keep_best(p["best_v"].to(device), p["best_i"].to(device))
        return c

    def _keep_best(self, values: torch.Tensor, images: torch.Tensor) -> None:
        """Fold in candidate top images (U, M): the best ``top`` by value, ties by the smaller
        image index (the scan's order), so parts merge to the single-process list."""
        v = torch.cat([self.best_v, values], 1)
        i = torch.cat([self.best_i, images], 1)
        pos = rank(v, i)[:, : self.top]
        self.best_v, self.best_i = v.gather(1, pos), i.gather(1, pos)

    def add(self, a: torch.Tensor, lab: _Labels) -> None:
        """Count one batch of activations ``a`` (B, U, h, w)."""
        b, u = a.shape[:2]
        self.area_l += lab.area
        self.pixels += b * self.seg[0] * self.seg[1]
        peak = a.flatten(2).amax(2)  # (B, U)
        self._keep_best(peak.T, lab.index.expand(u, -1))
        # Bilinear upsampling never exceeds a map's maximum: only (image, unit) pairs whose
        # peak passes the threshold can have mask pixels (NetDissect's shortcut, vectorised).
        bi, ui = (peak > self.thr).nonzero(as_tuple=True)
        s = self.seg[0] * self.seg[1]
        width = self.n_c + 1
        step = max(1, _BLOCK // s)
        for lo in range(0, len(bi), step):
            pb, pu = bi[lo : lo + step], ui[lo : lo + step]
            up = F.interpolate(a[pb, pu][:, None], size=self.seg, mode="bilinear", align_corners=False)
            mask = (up[:, 0] > self.thr[pu, None, None]).flatten(1)  # (P, S)
            rows, pix = mask.nonzero(as_tuple=True)
            area = torch.bincount(rows, minlength=len(pu)).double()
            self.area.index_add_(0, pu, area)
            self.area_m.index_add_(0, pu, area[:, None] * lab.annotated[pb].double())
            self.inter.index_add_(0, pu, area[:, None] * lab.image_cols[pb].double())
            for lvl in range(lab.cols.shape[1]):
                keys = pu[rows] * width + lab.cols[pb[rows], lvl, pix].long()
                self.inter += torch.bincount(keys, minlength=self.inter.numel()).view_as(self.inter)


def dissection_plan(subject: Subject, data, layers: Sequence[str], bases: Mapping[str, Basis] | None = None):
    """What a sharded dissection's driver needs of ``layers`` (exact names) on ``data``:
    ``names``, ``maps`` (layer -> activation map size) for :func:`merge_threshold_states`, the
    concept tables :func:`merge_count_states` and :func:`finish` use, and ``bases`` (checked,
    by exact layer name)."""
    return _Plan(subject, data, layers, bases)


def merge_count_states(plan, thresholds: dict, top: int, states: list[dict]) -> dict:
    """Per layer of ``plan`` the sum of the :func:`count_state` results of disjoint parts, and
    their merged top images: what :func:`finish` turns into IoU."""
    return {
        n: _Counts.from_dicts(
            thresholds[n], plan.n_c, len(plan.cats), top, plan.seg, plan.device, [s[n] for s in states]
        )
        for n in plan.names
    }
