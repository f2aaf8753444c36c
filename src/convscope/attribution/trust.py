"""Can a map be trusted? The model-randomisation sanity check (Adebayo et al. 2018) and the
deletion / insertion curves (Petsiuk et al. 2018)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from convscope.attribution.targets import Target
from convscope.results import Result
from convscope.subject import Subject


def _similarity(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
    """Spearman rank correlation (ties given their average rank, as scipy) or SSIM (as
    scikit-image's, Quantus' data range) of two maps, from :mod:`convscope.attribution.metrics`."""
    from convscope.attribution.metrics import spearman, ssim

    fns = {"spearman": spearman, "ssim": ssim}
    if name not in fns:
        from convscope.errors import UserInputError

        raise UserInputError(f"similarity {name!r}: use spearman or ssim")
    fn = fns[name]
    return lambda a, b: float(fn(torch.as_tensor(a)[None], torch.as_tensor(b)[None])[0])


@dataclass
class SanityCheck(Result):
    """Rank correlation (or SSIM, see ``similarity``) between the map of the trained model and
    the maps after cumulatively re-initialising its layers from the top: ``correlations[i]``
    (images averaged) after randomising ``layers[: i + 1]``. A method that explains the model
    should lose correlation quickly; one that mostly reflects the image (an edge detector)
    keeps it."""

    method: str
    layers: list[str]
    correlations: np.ndarray  # (L,)
    abs_correlations: np.ndarray  # (L,), on |map|
    similarity: str = "spearman"

    def to_image(self):
        """The rank correlations against the number of randomised layers."""
        from convscope.render.plots import figure_to_image, sanity_figure

        return figure_to_image(
            sanity_figure(self.method, self.layers, self.correlations, self.abs_correlations)
        )

    def headline(self) -> str:
        what = f" of {self.method}" if self.method else ""
        return f"sanity check{what}: {len(self.layers)} layers randomised from the top"


def sanity_check(
    explain_fn: Callable[[Subject], np.ndarray],
    subject: Subject,
    layers: list[str] | None = None,
    seed: int = 0,
    similarity: str = "spearman",
) -> SanityCheck:
    """Cascading parameter randomisation. ``explain_fn(subject) -> maps (N, H, W)`` computes the
    method's maps; it is called on the trained subject, then on copies whose parametrised
    layers (default: every leaf module with weights, from the output backwards) are re-initialised
    one more at a time with their own ``reset_parameters``, seeded. ``similarity`` is
    "spearman" or "ssim". Per image, per layer and with Quantus' layer order and seeding:
    :func:`convscope.attribution.metrics.model_randomisation`."""
    sim = _similarity(similarity)
    base = explain_fn(subject)
    model = copy.deepcopy(subject.model)
    modules = dict(model.named_modules())
    if layers is None:
        leaves = [i for i in subject.layers if i.shape is not None and i.call in (None, 0)]
        leaves = [
            i.module
            for i in sorted(leaves, key=lambda i: -i.order)
            if hasattr(modules[i.module], "reset_parameters")
            and any(True for _ in modules[i.module].parameters(recurse=False))
        ]
        layers = list(dict.fromkeys(leaves))
    shadow = Subject(
        model, subject.preprocess, subject.labels, subject.name, subject.token_layout, subject.transform
    )
    shadow.layers = subject.layers  # same architecture, same table
    corr, corr_abs = [], []
    torch.manual_seed(seed)
    for name in layers:
        modules[name].reset_parameters()
        maps = explain_fn(shadow)
        corr.append(np.mean([sim(a, b) for a, b in zip(base, maps)]))
        corr_abs.append(np.mean([sim(np.abs(a), np.abs(b)) for a, b in zip(base, maps)]))
    return SanityCheck("", layers, np.array(corr), np.array(corr_abs), similarity)


@dataclass
class Curve(Result):
    """Target probability as the most important pixels are deleted (or inserted), per step."""

    kind: str  # "deletion" or "insertion"
    fractions: np.ndarray  # (S,) fraction of pixels changed
    scores: np.ndarray  # (N, S)

    @property
    def auc(self) -> np.ndarray:
        """Area under each image's curve (trapezoid over the fraction axis), (N,)."""
        trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 names it trapz
        return trapezoid(self.scores, self.fractions, axis=1)

    def to_image(self):
        """The mean curve over the images, with its AUC."""
        from convscope.render.plots import curve_figure, figure_to_image

        return figure_to_image(curve_figure([self]))

    def headline(self) -> str:
        return f"{self.kind} curve over {len(self.scores)} image(s), mean AUC {float(self.auc.mean()):.3f}"


def deletion_insertion(
    subject: Subject, x: torch.Tensor, maps: np.ndarray, target: Target, steps: int = 32, batch: int = 32
) -> tuple[Curve, Curve]:
    """Deletion: replace pixels by grey in order of decreasing importance and track the target's
    softmax probability (lower AUC is better). Insertion: start from a blurred image and put
    the original pixels back in the same order (higher AUC is better)."""
    from convscope.imageops import gaussian_blur

    n, _, H, W = x.shape
    grey = subject.preprocess.normalize(torch.full_like(x, 0.5))
    blurred = gaussian_blur(x, sigma=max(H, W) / 20)
    fractions = np.linspace(0, 1, steps + 1)
    dele = np.zeros((n, steps + 1))
    ins = np.zeros((n, steps + 1))
    prob = Target("prob", target.classes, top=target.top) if target.kind == "class" else target
    for i in range(n):
        order = torch.as_tensor(np.argsort(-maps[i].ravel(), kind="stable"), device=x.device)
        rank = torch.empty(H * W, dtype=torch.long, device=x.device)
        rank[order] = torch.arange(H * W, device=x.device)
        rank = rank.view(1, 1, H, W)
        t = prob.for_image(i)
        cuts = [int(round(f * H * W)) for f in fractions]
        for s in range(0, len(cuts), batch):
            c = torch.tensor(cuts[s : s + batch], device=x.device).view(-1, 1, 1, 1)
            mask = (rank < c).float()  # 1 where changed
            d = x[i : i + 1] * (1 - mask) + grey[i : i + 1] * mask
            a = blurred[i : i + 1] * (1 - mask) + x[i : i + 1] * mask
            with torch.no_grad():
                dele[i, s : s + batch] = t.score(subject, d).cpu().numpy()
                ins[i, s : s + batch] = t.score(subject, a).cpu().numpy()
    return Curve("deletion", fractions, dele), Curve("insertion", fractions, ins)
