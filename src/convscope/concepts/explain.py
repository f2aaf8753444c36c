"""Explaining one image with concepts: where each concept is, and how much it drives a class.

The CRAFT / MACO style "concept attribution map" (Fel et al. 2023): the image's concept heat
maps (the codes of the layer's activations on its grid) and each concept's contribution to the
target logit by gradient x concept activation, the estimator of
:mod:`convscope.concepts.importance` (CRAFT's Sobol indices are not implemented).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from convscope.concepts.importance import gradient_importance
from convscope.concepts.result import ConceptSet
from convscope.errors import UserInputError
from convscope.results import Result
from convscope.subject import Subject


@dataclass
class ConceptExplanation(Result):
    """One image explained by the concepts of ``layer``: ``heatmaps`` (n, h, w) float32 the
    concept codes on the layer's grid, ``contributions`` (n,) float32 each concept's gradient x
    activation for logit ``target`` (class ``target_name``; ``logit`` and ``probability`` its
    score), ``pixels`` (H, W, 3) uint8 the image as the model sees it, ``names`` (n,) a label per
    concept ("" when none), ``top`` how many concepts the picture shows."""

    layer: str
    target: int
    target_name: str
    logit: float
    probability: float
    contributions: torch.Tensor
    heatmaps: torch.Tensor
    pixels: np.ndarray
    names: list[str] = field(default_factory=list)
    top: int = 5
    concept_method: str = ""
    model: str = "model"

    def headline(self) -> str:
        n = len(self.contributions)
        return (
            f"{self.model} {self.layer}: {n} {self.concept_method} concepts explaining "
            f"{self.target_name} (logit {self.logit:.2f}, p {self.probability:.2f})"
        )

    def ranked(self) -> list[int]:
        """Concepts by contribution, largest first."""
        return [int(i) for i in torch.argsort(self.contributions, descending=True)]

    def label(self, k: int) -> str:
        """``"concept k"`` and its name when it has one."""
        name = self.names[k] if k < len(self.names) else ""
        return f"concept {k}" + (f" · {name}" if name else "")

    def to_image(self, top: int | None = None, bars: int = 20, **options):
        """One figure: the image, then the ``top`` concepts of largest contribution each over the
        image (its heat map upsampled from the layer's grid, scaled by its own maximum), titled
        with its id, name and contribution; below, the combined map (each pixel coloured by the
        strongest of those concepts, opacity its strength) and a bar chart of the ``bars``
        largest contributions by magnitude."""
        from convscope.render.plots import figure_to_image, pyplot
        from convscope.render.topk import heat_overlay

        plt = pyplot()
        top = self.top if top is None else top
        n = len(self.contributions)
        best = self.ranked()[: max(0, min(top, n))]
        colours = plt.get_cmap("tab10")
        contrib = self.contributions.numpy()
        cols = len(best) + 1
        fig = plt.figure(figsize=(2.3 * max(cols, 4), 5.4))
        grid = fig.add_gridspec(2, max(cols, 4), height_ratios=[1, 1.05])
        ax = fig.add_subplot(grid[0, 0])
        ax.imshow(self.pixels)
        ax.set_title(f"{self.target_name[:22]}\nlogit {self.logit:.2f}", fontsize=8)
        ax.axis("off")
        maps = self.heatmaps.numpy()
        for j, k in enumerate(best):
            ax = fig.add_subplot(grid[0, j + 1])
            ax.imshow(np.asarray(heat_overlay(self.pixels, maps[k], alpha=0.6)))
            name = self.names[k] if k < len(self.names) else ""
            title = f"{j + 1}. concept {k}" + (f"\n{name[:22]}" if name else "") + f"\n{contrib[k]:+.3g}"
            ax.set_title(title, fontsize=8, color=colours(j % 10))
            ax.axis("off")
        ax = fig.add_subplot(grid[1, 0])
        ax.imshow(self.combined(best))
        ax.set_title("strongest concept per pixel", fontsize=8)
        ax.axis("off")
        ax = fig.add_subplot(grid[1, 1:])
        order = np.argsort(-np.abs(contrib))[:bars]
        order = order[np.argsort(-contrib[order])]
        shade = [colours(best.index(int(k)) % 10) if int(k) in best else (0.6, 0.6, 0.6) for k in order]
        ax.bar(range(len(order)), contrib[order], color=shade)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels([str(int(k)) for k in order], fontsize=7)
        ax.set_xlabel("concept", fontsize=8)
        ax.set_ylabel("contribution (logit)", fontsize=8)
        # the axis on the right: on the left its label ran into the combined map's panel
        ax.yaxis.tick_right()
        ax.yaxis.set_label_position("right")
        shown = f"{len(order)} of {n}" if len(order) < n else f"all {n}"
        ax.set_title(
            f"gradient x concept activation ({shown} concepts, sum {contrib.sum():+.3g})", fontsize=8
        )
        fig.suptitle(self.headline(), fontsize=9)
        fig.tight_layout()
        return figure_to_image(fig)

    def combined(self, concepts: Sequence[int]) -> np.ndarray:
        """(H, W, 3) uint8: each pixel in the colour (tab10, in the order of ``concepts``) of the
        strongest of ``concepts`` there (each map scaled by its own maximum on the image), blended
        over the greyed image by that strength."""
        import matplotlib
        import torch.nn.functional as F

        h, w = self.pixels.shape[:2]
        grey = self.pixels.astype(np.float32).mean(axis=2, keepdims=True).repeat(3, axis=2) / 255.0
        if not len(concepts):
            return (grey * 255).astype(np.uint8)
        m = self.heatmaps[list(concepts)].float().clamp_min(0)
        m = m / m.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
        up = F.interpolate(m[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        strength, which = up.max(dim=0)
        table = np.array([matplotlib.colormaps["tab10"](j % 10)[:3] for j in range(len(concepts))])
        colour = table[which.numpy()]
        a = (0.75 * strength.clamp(0, 1).numpy())[..., None]
        out = (1 - a) * (0.35 + 0.5 * grey) + a * colour
        return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def _as_batch(subject: Subject, image) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        x = image[None] if image.dim() == 3 else image
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise UserInputError(
                f"explain_concepts takes one image (3, H, W) or (1, 3, H, W), not {tuple(image.shape)}"
            )
        return x.to(subject.device).float()
    if isinstance(image, (str, os.PathLike, Image.Image, np.ndarray)):
        return subject.load_images(image)
    raise UserInputError(
        f"explain_concepts takes a path, PIL image, uint8 array or tensor, not {type(image).__name__}"
    )


def _names(names, n: int) -> list[str]:
    if names is None:
        return [""] * n
    if isinstance(names, Mapping):
        return [str(names.get(k, names.get(str(k), "")) or "") for k in range(n)]
    out = [str(v or "") for v in list(names)[:n]]
    return out + [""] * (n - len(out))


def explain_concepts(
    subject: Subject,
    image,
    concepts: ConceptSet,
    target=None,
    *,
    top: int = 5,
    names=None,
) -> ConceptExplanation:
    """Explain one ``image`` (a path, PIL image, uint8 array, or preprocessed tensor (3, H, W) /
    (1, 3, H, W)) with ``concepts``: its concept heat maps (n, h, w) on the layer's grid and each
    concept's contribution to logit ``target`` (a class index or name; None or ``"top"``: the
    predicted class) by gradient x concept activation (:mod:`convscope.concepts.importance`). ``names``
    (a dict or list, concept -> label, e.g. from a dissection) titles the concepts; ``top``
    concepts are drawn. Returns a :class:`ConceptExplanation` whose picture is the figure."""
    if isinstance(image, ConceptSet) or not isinstance(concepts, ConceptSet):
        raise UserInputError("explain_concepts takes (subject, image, concepts, target), the image first")
    if top < 0:
        raise UserInputError(f"top must be >= 0, not {top}")
    x = _as_batch(subject, image)
    cls = None
    if target is not None and str(target) != "top":
        cls = torch.tensor([subject.class_index(target)])
    imp, chosen, logits, codes = gradient_importance(subject, x, concepts, cls)
    c = int(chosen[0])
    pixels = subject.preprocess.denormalize(x[0].detach().float().cpu()).clamp(0, 1)
    pixels = (pixels.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    return ConceptExplanation(
        layer=concepts.layer,
        target=c,
        target_name=subject.label(c),
        logit=float(logits[0, c]),
        probability=float(logits[0].softmax(-1)[c]),
        contributions=imp[0].float(),
        heatmaps=codes[0].float().contiguous(),
        pixels=pixels,
        names=_names(names, concepts.n),
        top=int(top),
        concept_method=concepts.method,
        model=getattr(subject, "name", "model"),
    )
