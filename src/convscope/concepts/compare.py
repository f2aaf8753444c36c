"""Units vs random directions vs learned concepts, measured on one layer (issue 20 item 5).

Two numbers per "unit" of each family:

- **top-K class purity** on labelled images: the fraction of its top-``k`` images (by the scan's
  ``criterion``) that share its most common class;
- **detector or not** under network dissection, when concept data is given: its best IoU above
  the dissection's threshold (and its region not too broad).

One scan carries all three families (the concept set's encoder stacked after the channels as the
layer's basis, the random directions the scan's own ``directions``), and one dissection does the
same with a basis of ``[channels, concepts, random directions]``: each dataset is read once per
pass whatever the families.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from convscope.concepts.activations import as_source
from convscope.concepts.result import ConceptSet
from convscope.errors import UserInputError
from convscope.results import Result
from convscope.subject import Subject

FAMILIES = ("units", "random", "concepts")


class StackedBasis:
    """Maps (B, C, H, W) -> ``[channels, concept codes, projections on directions]`` (B, n, H, W):
    every family of a layer as one basis, so that one pass measures them all."""

    def __init__(self, concepts_basis, channels: int, directions: torch.Tensor | None = None):
        self.concepts = concepts_basis
        self.channels = int(channels)
        self.directions = directions
        n_dirs = 0 if directions is None else int(directions.shape[0])
        self.n = self.channels + int(concepts_basis.n) + n_dirs
        tag = ""
        if directions is not None:
            digest = hashlib.sha1(directions.detach().float().cpu().contiguous().numpy().tobytes())
            tag = f"+{n_dirs}dirs-{digest.hexdigest()[:8]}"
        self.fingerprint = f"channels+{concepts_basis.fingerprint}{tag}"

    def __repr__(self) -> str:  # stable: Ray's shard manifest records it
        return f"StackedBasis({self.fingerprint}, n={self.n})"

    def to(self, device) -> StackedBasis:
        dirs = None if self.directions is None else self.directions.to(device)
        return StackedBasis(self.concepts.to(device), self.channels, dirs)

    def __call__(self, maps: torch.Tensor) -> torch.Tensor:
        parts = [maps, self.concepts(maps)]
        if self.directions is not None:
            parts.append(torch.einsum("bchw,nc->bnhw", maps, self.directions.to(maps.device)))
        return torch.cat(parts, dim=1)


@dataclass
class BasisComparison(Result):
    """Units, random directions and learned concepts of ``layer`` side by side.

    Per family (``units``, ``random``, ``concepts``): ``purity`` (n,) the fraction of each one's
    top-``k`` images (by ``criterion``) in its most common class (NaN for one constant over the
    data, whose top-K is only the image order: counted in ``silent``), ``majority`` (n,) that
    class's index in ``classes`` (-1 where silent); ``directions`` (n_random, C) the random
    directions (unit norm, of the channels); with concept data, ``detector`` (n,) bool,
    ``iou`` (n,) its best IoU and ``label`` its best concept's name."""

    layer: str
    k: int
    criterion: str
    classes: list[str]
    images: int
    purity: dict[str, np.ndarray]
    majority: dict[str, np.ndarray]
    directions: torch.Tensor | None = None
    detector: dict[str, np.ndarray] = field(default_factory=dict)
    iou: dict[str, np.ndarray] = field(default_factory=dict)
    label: dict[str, list] = field(default_factory=dict)
    iou_threshold: float = float("nan")
    concept_dataset: dict = field(default_factory=dict)
    method: str = ""
    seed: int = 0
    model: str = "model"
    seconds: dict = field(default_factory=dict)

    def headline(self) -> str:
        means = ", ".join(f"{f} {np.nanmean(self.purity[f]):.3f}" for f in FAMILIES if f in self.purity)
        return f"{self.model} {self.layer}: mean top-{self.k} class purity ({self.criterion}) {means}"

    def rows(self) -> list[dict]:
        """One dict per family: ``family``, ``n``, ``silent``, ``mean_purity``, ``median_purity``,
        and with concept data ``detectors`` (count) and ``detector_fraction``. (The plot's dotted
        line is 1 / classes, the purity floor of a top-K spread evenly over the classes.)"""
        out = []
        for f in FAMILIES:
            p = self.purity[f]
            live = p[~np.isnan(p)]
            row = {
                "family": f,
                "n": len(p),
                "silent": int(np.isnan(p).sum()),
                "mean_purity": float(live.mean()) if len(live) else float("nan"),
                "median_purity": float(np.median(live)) if len(live) else float("nan"),
            }
            if f in self.detector:
                d = self.detector[f]
                row["detectors"] = int(d.sum())
                row["detector_fraction"] = float(d.mean()) if len(d) else float("nan")
            out.append(row)
        return out

    def table(self) -> str:
        """Markdown: a row per family; n, silent, mean and median purity, detector fraction."""
        rows = self.rows()
        dets = "detector_fraction" in rows[0]
        head = "| family | n | silent | mean purity | median purity |" + (" detectors |" if dets else "")
        lines = [head, "|---" * (6 if dets else 5) + "|"]
        for r in rows:
            cells = [r["family"], str(r["n"]), str(r["silent"]), f"{r['mean_purity']:.3f}"]
            cells.append(f"{r['median_purity']:.3f}")
            if dets:
                cells.append(f"{r['detectors']}/{r['n']} ({r['detector_fraction']:.1%})")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_image(self, **options):
        """The purity distribution of each family (box and points, mean marked), and the
        fraction of detectors per family when concept data was given."""
        from convscope.render.plots import figure_to_image, pyplot

        plt = pyplot()
        panels = 2 if self.detector else 1
        fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels + 0.6, 3.6), squeeze=False)
        ax = axes[0, 0]
        colours = {"units": "#4c72b0", "random": "#8c8c8c", "concepts": "#dd8452"}
        rng = np.random.default_rng(0)
        for i, f in enumerate(FAMILIES):
            p = self.purity[f][~np.isnan(self.purity[f])]
            if not len(p):
                continue
            ax.boxplot([p], positions=[i], widths=0.5, showfliers=False, medianprops={"color": "black"})
            ax.scatter(i + rng.uniform(-0.18, 0.18, len(p)), p, s=6, alpha=0.45, color=colours[f])
            ax.scatter([i], [p.mean()], marker="D", s=40, color="crimson", zorder=3)
            ax.annotate(f"{p.mean():.2f}", (i + 0.28, p.mean()), va="center", fontsize=8, color="crimson")
        ax.set_xticks(range(len(FAMILIES)), [f"{f}\n(n={len(self.purity[f])})" for f in FAMILIES])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"top-{self.k} class purity ({self.criterion})")
        chance = 1 / max(1, len(self.classes))
        ax.axhline(chance, ls=":", color="grey", lw=1)
        ax.annotate(
            "1 / classes", (len(FAMILIES) - 0.5, chance), va="bottom", ha="right", fontsize=7, color="grey"
        )
        ax.set_title(f"{self.model} {self.layer}: purity on {self.images} images (mean ◆)", fontsize=9)
        if self.detector:
            ax = axes[0, 1]
            fr = [float(self.detector[f].mean()) if len(self.detector[f]) else 0.0 for f in FAMILIES]
            bars = ax.bar(range(len(FAMILIES)), fr, color=[colours[f] for f in FAMILIES])
            for b, f, v in zip(bars, FAMILIES, fr, strict=True):
                n = int(self.detector[f].sum())
                ax.annotate(
                    f"{n}/{len(self.detector[f])}",
                    (b.get_x() + b.get_width() / 2, v),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
            ax.set_xticks(range(len(FAMILIES)), list(FAMILIES))
            ax.set_ylim(0, max(0.1, max(fr) * 1.2))
            ax.set_ylabel("fraction of detectors")
            ax.set_title(f"detectors under dissection (IoU > {self.iou_threshold:g})", fontsize=9)
        fig.tight_layout()
        return figure_to_image(fig)


def _purity(topk, labels: np.ndarray, silent: bool) -> tuple[float, int]:
    if silent:
        return float("nan"), -1
    lab = labels[topk.images]
    lab = lab[lab >= 0]
    if not len(lab):
        return float("nan"), -1
    counts = np.bincount(lab)
    return float(counts.max() / len(lab)), int(counts.argmax())


def compare_bases(
    subject: Subject,
    data,
    concepts: ConceptSet,
    *,
    k: int = 16,
    concept_data=None,
    criterion: str = "max",
    n_random: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    dissect_options: dict | None = None,
) -> BasisComparison:
    """Units (the channels of ``concepts.layer``), ``n_random`` seeded random unit-norm
    directions of those channels (default: as many as the concepts) and the learned concepts,
    measured on the same layer: top-``k`` class purity on the labelled images of ``data`` (an
    image folder with class sub-folders or an :class:`~convscope.inputs.sources.ImageSource`),
    in one scan; and with ``concept_data`` (see :func:`convscope.concepts.labels.concept_dataset`)
    the fraction of each family that are detectors, in one dissection (``dissect_options``: its
    keywords, e.g. ``quantile``, ``iou_threshold``). ``progress(done, total)`` is called by each
    pass in turn. Returns a :class:`BasisComparison`."""
    import time

    from convscope.scan.scanner import scan

    layer = concepts.layer
    info = subject.layers.get(layer)
    if info.units != concepts.dictionary.shape[1]:
        raise UserInputError(
            f"the concepts encode {concepts.dictionary.shape[1]} channels; {layer} has {info.units}"
        )
    n_random = concepts.n if n_random is None else int(n_random)
    source = as_source(subject, data)
    if not source.classes or all(r.label is None for r in source.records):
        raise UserInputError(
            f"{source.description} has no class labels: purity needs images in class folders"
        )
    cdata = None
    if concept_data is not None:
        from convscope.concepts.labels import concept_dataset

        cdata = concept_dataset(concept_data)
    c, n_c = info.units, concepts.n
    stacked = StackedBasis(concepts.basis(subject.device), c)
    t0 = time.perf_counter()
    res = scan(
        subject,
        source,
        [info.name],
        k=k,
        criteria=(criterion,),
        directions=n_random,
        seed=seed,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        bases={info.name: stacked},
    )
    t1 = time.perf_counter()
    labels = np.array([-1 if lab is None else int(lab) for lab in res.image_labels])
    std = res.stats(info.name).std
    std_dirs = res.stats(info.name, direction=True).std
    rows = {
        "units": [(u, False, std[u] == 0) for u in range(c)],
        "concepts": [(c + i, False, std[c + i] == 0) for i in range(n_c)],
        "random": [(i, True, std_dirs[i] == 0) for i in range(n_random)],
    }
    purity, majority = {}, {}
    for f, units in rows.items():
        got = [_purity(res.topk(info.name, u, criterion, direction=d), labels, s) for u, d, s in units]
        purity[f] = np.array([g[0] for g in got], dtype=np.float64)
        majority[f] = np.array([g[1] for g in got], dtype=np.int64)
    out = BasisComparison(
        layer=info.name,
        k=k,
        criterion=criterion,
        classes=list(res.classes),
        images=res.processed,
        purity={f: purity[f] for f in FAMILIES},
        majority={f: majority[f] for f in FAMILIES},
        directions=res.directions[info.name].float() if n_random else torch.zeros(0, c),
        method=concepts.method,
        seed=seed,
        model=subject.name,
        seconds={"scan": t1 - t0},
    )
    if cdata is not None:
        from convscope.dissect.dissection import dissect

        full = StackedBasis(concepts.basis(subject.device), c, out.directions if n_random else None)
        opts = {"workers": workers, **(dissect_options or {})}
        d = dissect(subject, cdata, [info.name], bases={info.name: full}, progress=progress, **opts)
        labs = d.labels(info.name)
        parts = {"units": labs[:c], "concepts": labs[c : c + n_c], "random": labs[c + n_c :]}
        out.detector = {f: np.array([lab.detector for lab in parts[f]], dtype=bool) for f in FAMILIES}
        out.iou = {f: np.array([lab.iou for lab in parts[f]], dtype=np.float64) for f in FAMILIES}
        out.label = {f: [lab.name for lab in parts[f]] for f in FAMILIES}
        out.iou_threshold = d.iou_threshold
        out.concept_dataset = dict(d.dataset)
        out.seconds["dissect"] = time.perf_counter() - t1
    return out
