"""How much each concept of a layer drives each class: gradient x concept activation.

For an image, the layer's activation ``A`` (C, H, W) is ``decode(U) + residual`` with the codes
``U = basis(A)`` (n, H, W) and the dictionary ``D`` (n, C) (PCA / ICA / SAE add a mean or a bias,
which does not depend on the codes). The importance of concept ``k`` for class ``c`` on that
image is the first-order (Taylor) estimate of what removing the concept costs the class logit:

    I[c, k] = sum_{h, w} U_k(h, w) * < d f_c / d A(h, w), D_k >,

"gradient x concept activation", the estimator that Fel et al., "A Holistic Approach to Unifying
Automatic Concept Extraction and Concept Importance Estimation" (NeurIPS 2023), find the best
or near best of the attribution methods they compare for NMF concepts. When the network after
the layer is linear in ``A`` (global average pooling then a linear classifier) it equals exactly
the drop of the logit when ``U_k D_k`` is subtracted from the layer's output
(:func:`ablation_importance`, the brute-force check; tested). CRAFT's Sobol indices (Fel et
al. 2023, CVPR) are **not** implemented.

Dataset level (:func:`concept_importance`): for each class ``c``, the mean of ``I[c, :]`` over the
images of class ``c``: their label when the data's class names are classes of the model (an
ImageNet-style folder), else the model's predicted class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from convscope.concepts.activations import Progress, as_maps, as_source
from convscope.concepts.result import ConceptSet
from convscope.errors import UserInputError
from convscope.inputs.batches import Batches
from convscope.inputs.workers import batch_bytes, resolve_workers
from convscope.recorder import Recorder, select_tensor
from convscope.results import Result
from convscope.subject import Subject

GROUPINGS = ("auto", "label", "predicted")


@dataclass
class ConceptImportance(Result):
    """Each concept's importance for each class: ``matrix`` (n_classes, n) float32, row ``i`` the
    mean gradient x concept activation (logit units) of the concepts of ``layer`` over the
    ``counts[i]`` images of class ``classes[i]`` (model output ``class_indices[i]``; a row with no
    image is NaN). ``grouping``: ``"label"`` (the images' labels) or ``"predicted"`` (the
    model's top class). ``logits`` (n_classes,): the mean class logit of those images, for scale."""

    layer: str
    matrix: torch.Tensor
    classes: list[str]
    counts: torch.Tensor
    method: str = "gradient_x_activation"
    class_indices: list[int] = field(default_factory=list)
    grouping: str = "predicted"
    logits: torch.Tensor | None = None
    concept_method: str = ""
    model: str = "model"

    def headline(self) -> str:
        n_classes, n = self.matrix.shape
        kind = f"{self.concept_method} " if self.concept_method else ""
        return (
            f"{self.model} {self.layer}: importance ({self.method}) of {n} {kind}concepts "
            f"for {n_classes} classes ({self.grouping}), {int(self.counts.sum())} images"
        )

    def top(self, cls, k: int = 5) -> list[tuple[int, float]]:
        """The ``k`` most important concepts of class ``cls`` (its name or row) as (concept, value)."""
        row = self.classes.index(cls) if isinstance(cls, str) else int(cls)
        v = self.matrix[row]
        order = torch.argsort(torch.nan_to_num(v, nan=-np.inf), descending=True)[:k]
        return [(int(i), float(v[i])) for i in order]

    def shown(self, limit: int = 20) -> list[int]:
        """The rows the picture shows: the ``limit`` classes with most images (ties: first row)."""
        counts = self.counts.tolist()
        return sorted(range(len(self.classes)), key=lambda i: (-counts[i], i))[:limit]

    def to_image(self, limit: int = 20, marks: int = 3, **options):
        """Heat map classes x concepts: the ``limit`` classes with most images, each row scaled by
        its largest |importance| (signed colours), its ``marks`` most important concepts numbered
        1, 2, 3... in their cells; the row label gives the class, its image count and largest
        value."""
        from convscope.render.plots import figure_to_image, pyplot

        plt = pyplot()
        counts = self.counts.numpy()
        rows = self.shown(limit)
        m = self.matrix.numpy()[rows].astype(np.float64)
        scale = np.nanmax(np.abs(m), axis=1, keepdims=True) if m.size else np.zeros((0, 1))
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        shown = m / scale
        n = m.shape[1]
        fig, ax = plt.subplots(figsize=(min(3 + 0.32 * n, 16), 1.4 + 0.34 * max(len(rows), 1)))
        im = ax.imshow(shown, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
        for r in range(len(rows)):
            order = np.argsort(np.nan_to_num(m[r], nan=-np.inf))[::-1][:marks]
            for rank, k in enumerate(order, 1):
                if np.isfinite(m[r, k]):
                    ink = "white" if abs(shown[r, k]) > 0.6 else "black"  # readable on dark cells
                    ax.text(k, r, str(rank), ha="center", va="center", fontsize=7, color=ink)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(
            [
                f"{self.classes[i][:24]} ({int(counts[i])}) max {float(scale[j, 0]):.3g}"
                for j, i in enumerate(rows)
            ],
            fontsize=7,
        )
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True, nbins=min(n, 32)))
        ax.set_xlabel("concept")
        cb = fig.colorbar(im, ax=ax, fraction=0.04)
        cb.set_label("importance / row max |importance|", fontsize=7)
        more = f" ({len(rows)} of {len(self.classes)} classes)" if len(rows) < len(self.classes) else ""
        ax.set_title(self.headline() + more, fontsize=8)
        fig.tight_layout()
        return figure_to_image(fig)


# -- the per-image estimate ----------------------------------------------------------------------
def _logits(out) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        out = select_tensor(out, "logits" if isinstance(out, dict) else None, "output")
    return out


def gradient_importance(
    subject: Subject,
    x: torch.Tensor,
    concepts: ConceptSet,
    target: Callable[[torch.Tensor], torch.Tensor] | torch.Tensor | None = None,
    basis=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient x concept activation for a preprocessed batch ``x`` (B, 3, H, W): returns
    ``(importance (B, n), classes (B,), logits (B, classes), codes (B, n, h, w))`` on the CPU,
    float32. ``target``: the class of each image (B,) (a tensor), a function of the logits
    giving it, or None (the predicted class). One forward and one backward pass."""
    name = concepts.layer
    basis = basis if basis is not None else concepts.basis(subject.device)
    held: list[torch.Tensor] = []

    def edit(t: torch.Tensor) -> torch.Tensor:
        # A leaf in the layer's map form: its gradient is d logits / d A, whatever follows (the
        # copy sent on may be changed in place by the next op)
        leaf = t.detach().requires_grad_(True)
        held.append(leaf)
        return leaf.clone()

    with torch.enable_grad(), Recorder(subject, [name], edits={name: edit}, keep=False):
        out = _logits(subject.model(x.to(subject.device)))
        if target is None:
            cls = out.detach().argmax(-1)
        elif callable(target):
            cls = target(out.detach())
        else:
            cls = torch.as_tensor(target)
        cls = cls.to(out.device).long().view(-1)
        score = out.gather(1, cls[:, None])[:, 0]
        (grad,) = torch.autograd.grad(score.sum(), held[-1])
    maps = as_maps(held[-1].detach(), name).float()
    g = as_maps(grad, name).float()
    codes = basis(maps)  # (B, n, h, w)
    gd = torch.einsum("bchw,kc->bkhw", g, basis.dictionary.to(g.device))
    imp = (codes * gd).sum(dim=(2, 3))
    return imp.cpu(), cls.cpu(), out.detach().float().cpu(), codes.cpu()


def ablation_importance(subject: Subject, images, concepts: ConceptSet, target) -> torch.Tensor:
    """Brute force: the drop of logit ``target`` (a class index or name, or per image (B,)) when
    the layer's output ``A`` is replaced by ``A - U_k D_k`` (concept ``k``'s part of the
    reconstruction, everywhere on the grid), for each concept ``k`` in turn. ``images``: a
    preprocessed batch (B, 3, H, W) or paths / PIL images. Returns (B, n) float32 (n + 1 forward
    passes)."""
    x = images if isinstance(images, torch.Tensor) else subject.load_images(images)
    x = x.to(subject.device)
    name = concepts.layer
    b = len(x)
    if isinstance(target, torch.Tensor) and target.numel() == b:
        cls = target.long().view(-1)
    else:
        cls = torch.full((b,), subject.class_index(target), dtype=torch.long)
    cls = cls.to(subject.device)
    with torch.no_grad(), Recorder(subject, [name]) as rec:
        base = _logits(subject.model(x)).float().gather(1, cls[:, None])[:, 0]
    maps = as_maps(rec[name], name).float()
    basis = concepts.basis(subject.device)
    codes = basis(maps)
    dictionary = basis.dictionary
    drops = torch.zeros(b, concepts.n)
    for k in range(concepts.n):
        part = codes[:, k, None] * dictionary[k][None, :, None, None]  # (B, C, h, w)

        def edit(t: torch.Tensor, part=part) -> torch.Tensor:
            return t - part.reshape(t.shape).to(t.dtype)

        with torch.no_grad(), Recorder(subject, [name], edits={name: edit}, keep=False):
            out = _logits(subject.model(x)).float().gather(1, cls[:, None])[:, 0]
        drops[:, k] = (base - out).cpu()
    return drops


# -- the dataset level ---------------------------------------------------------------------------
def _label_map(subject: Subject, source, numbers: bool = False) -> list[int] | None:
    """The model class of each of the source's classes, or None when some class name is not
    one of the model's (then images are grouped by predicted class). Folders named by numbers
    ("0", "1"...) are taken as class indices only when ``numbers`` (``by="label"``): guessed,
    they would make CIFAR-style numbered folders ImageNet's tench and goldfish."""
    if not source.classes or any(r.label is None for r in source.records):
        return None
    out = []
    for name in source.classes:
        if str(name).strip().lstrip("-").isdigit() and not numbers:
            return None
        try:
            out.append(subject.class_index(name))
        except UserInputError:  # a CIFAR-10 "cat" is no ImageNet class (and "crane" names two)
            return None
    return out


def concept_importance(
    subject: Subject,
    data,
    concepts: ConceptSet,
    *,
    classes: Sequence[int | str] | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    progress: Progress | None = None,
    by: str = "auto",
) -> ConceptImportance:
    """Importance of every concept of ``concepts`` for each class over the images of ``data`` (an
    image source, folder, archive or list of paths): per class ``c``, the mean over the images
    of class ``c`` of the gradient x concept activation for logit ``c`` (see the module
    docstring). ``by``: ``"label"`` groups images by their label (the data's class names must be
    the model's), ``"predicted"`` by the model's top class, ``"auto"`` labels when they are the
    model's classes. ``classes`` (indices or names) keeps those classes only, in that order
    (images of other classes are skipped; a class without images gets a NaN row); by default
    every class with an image. One forward and backward pass per batch on the subject's device;
    memory O(classes x n) beyond a batch. ``progress(done, total)`` counts images."""
    name = subject.layers.select(concepts.layer)
    if len(name) != 1:
        raise UserInputError(f"concepts of {concepts.layer!r}: the subject has no single such layer")
    if by not in GROUPINGS:
        raise UserInputError(f"by must be one of {', '.join(GROUPINGS)}, not {by!r}")
    if batch_size < 1:
        raise UserInputError(f"batch_size must be >= 1, not {batch_size}")
    wanted = [subject.class_index(c) for c in classes] if classes is not None else None
    source = as_source(subject, data)
    mapping = _label_map(subject, source, numbers=by == "label") if by != "predicted" else None
    if by == "label" and mapping is None:
        raise UserInputError(
            f"by='label': the classes of {source.description} ({', '.join(source.classes[:5]) or 'none'}) "
            f"are not all classes of {subject.name}; use by='predicted'"
        )
    labels = torch.tensor([mapping[r.label] for r in source.records], dtype=torch.long) if mapping else None
    device = subject.device
    total = len(source)
    workers = resolve_workers(workers, device, batch_bytes(batch_size, subject.input_size, "cpu"))
    batches = Batches(
        source, batch_size=batch_size, workers=workers, pin_memory=device.type == "cuda", device=device
    )
    basis = concepts.basis(device)
    sums: dict[int, torch.Tensor] = {}
    logit_sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    report = progress or (lambda d, t: None)
    done = 0
    allowed = set(wanted) if wanted is not None else None
    for batch in batches:
        if len(batch.indices):
            x = batch.images.to(device)
            idx = batch.indices.long()
            target = labels[idx] if labels is not None else None
            keep = torch.ones(len(idx), dtype=torch.bool)
            if target is not None and allowed is not None:
                keep = torch.tensor([int(t) in allowed for t in target], dtype=torch.bool)
            if keep.any():
                imp, cls, out, _ = gradient_importance(
                    subject, x[keep.to(x.device)], concepts, None if target is None else target[keep], basis
                )
                for i, c in enumerate(cls.tolist()):
                    if allowed is not None and c not in allowed:
                        continue
                    if c not in sums:
                        sums[c] = torch.zeros(concepts.n, dtype=torch.float64)
                        logit_sums[c], counts[c] = 0.0, 0
                    sums[c] += imp[i].double()
                    logit_sums[c] += float(out[i, c])
                    counts[c] += 1
        done = min(done + batch_size, total)
        report(done, total)
    order = wanted if wanted is not None else sorted(sums)
    if not order:
        raise UserInputError(f"no readable image in {getattr(source, 'description', 'the data')}")
    nan = torch.full((concepts.n,), float("nan"), dtype=torch.float64)
    matrix = torch.stack([sums[c] / counts[c] if c in sums else nan for c in order]).float()
    count = torch.tensor([counts.get(c, 0) for c in order], dtype=torch.int64)
    mean_logits = torch.tensor(
        [logit_sums[c] / counts[c] if c in counts else float("nan") for c in order], dtype=torch.float32
    )
    return ConceptImportance(
        layer=concepts.layer,
        matrix=matrix,
        classes=[subject.label(c) for c in order],
        counts=count,
        class_indices=[int(c) for c in order],
        grouping="label" if labels is not None else "predicted",
        logits=mean_logits,
        concept_method=concepts.method,
        model=getattr(subject, "name", "model"),
    )
