"""A concept set: a dictionary learned from one layer's activations, with its encoder."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from convscope.concepts.basis import LINEAR
from convscope.errors import UserInputError
from convscope.results import Result

NMF_ENCODE = ("beta_loss", "tol", "max_iter", "alpha_W", "alpha_H", "l1_ratio", "solver")


@dataclass
class ConceptSet(Result):
    """``n`` concepts of ``layer`` learned by ``method`` (nmf, pca, ica, sae-topk, sae-batchtopk).

    ``dictionary`` (n, C) float32: the concepts as directions of the layer's C channels (NMF's H,
    PCA's components, ICA's mixing columns, the SAE's decoder rows). ``state``: the tensors
    :meth:`encode` needs (PCA/ICA: ``mean`` (C,), ``unmixing`` (n, C); SAE: its encoder's);
    ``settings``: the method's settings (NMF's solver, tolerance...). ``curve``: the training
    objective per step where the method has one (NMF: none kept by scikit-learn, the SAE: MSE per
    step). ``error``: relative Frobenius reconstruction error ||X - X^||_F / ||X||_F on the
    ``samples`` fitted rows; ``sparsity``: mean fraction of nonzero codes; ``dead``: atoms that
    never fire on the fitted rows (the SAE's own count for the SAE methods); ``usage`` (n,) and
    ``active`` (n,): each concept's mean code and fraction of rows where it is nonzero.
    ``images`` / ``skipped``: the images read and the unreadable ones skipped while collecting
    the activations, ``(source index, reason)`` (0 and none when fitted on given rows).
    """

    layer: str
    method: str
    n: int
    dictionary: torch.Tensor
    state: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    curve: list = field(default_factory=list)
    error: float = float("nan")
    sparsity: float = float("nan")
    dead: int = 0
    usage: torch.Tensor | None = None
    active: torch.Tensor | None = None
    samples: int = 0
    seed: int = 0
    model: str = "model"
    images: int = 0
    skipped: list = field(default_factory=list)

    def __repr__(self) -> str:  # the dataclass's would print every tensor
        return f"ConceptSet({self.headline()})"

    def headline(self) -> str:
        return (
            f"{self.model} {self.layer}: {self.n} {self.method} concepts from {self.samples} positions, "
            f"error {self.error:.3f}, {100 * self.sparsity:.0f}% nonzero, {self.dead} dead"
            + (f", {len(self.skipped)} unreadable images skipped" if self.skipped else "")
        )

    # -- encoding -----------------------------------------------------------------------------
    def encode(self, acts: torch.Tensor) -> torch.Tensor:
        """Concept codes (N, n) float32 of activations ``acts`` (N, C) (on the CPU)."""
        x = torch.as_tensor(acts).detach().float().cpu()
        if x.dim() != 2 or x.shape[1] != self.dictionary.shape[1]:
            raise UserInputError(
                f"encode takes (N, {self.dictionary.shape[1]}) activations of {self.layer}, "
                f"not {tuple(x.shape)}"
            )
        return self.basis().rows(x).cpu()

    def basis(self, device=None):
        """This set's encoder as a :class:`~convscope.concepts.basis.ConceptBasis` on ``device``
        (maps (B, C, H, W) -> codes (B, n, H, W)): what scans and dissections take as ``bases``."""
        from convscope.concepts.basis import ConceptBasis

        return ConceptBasis(self, device)

    def directions(self, concepts=None) -> list:
        """The concepts ``concepts`` (default: all) as unit-norm
        :class:`~convscope.units.Direction` objects of the layer, named ``concept<i>``: what the
        direction objective of feature visualisation takes
        (``convscope.visualize(subject, cs.layer, directions=cs.directions())``). Each is the
        direction the concept's code reads: PCA / ICA's unmixing row, the SAE's encoder column;
        NMF's codes are non-negative least squares, not linear, and its direction is the
        dictionary row (CRAFT's choice)."""
        from convscope.units import Direction

        ids = range(self.n) if concepts is None else [int(i) for i in concepts]
        for i in ids:
            if not 0 <= i < self.n:
                raise UserInputError(f"{self.layer} has concepts 0..{self.n - 1}, not {i}")
        if self.method in LINEAR:
            rows = self.state["unmixing"]
        elif self.method.startswith("sae-"):
            rows = self.state["encoder_weight"].T
        else:
            rows = self.dictionary
        rows = torch.nn.functional.normalize(rows.float(), dim=1)
        return [Direction(self.layer, rows[i], name=f"concept{i}") for i in ids]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Activations (N, C) rebuilt from concept codes (N, n)."""
        x = torch.as_tensor(codes).float() @ self.dictionary
        if "mean" in self.state:
            x = x + self.state["mean"]
        if "pre_bias" in self.state:  # the SAE's
            x = x + self.state["pre_bias"]
        return x

    def heatmaps(self, subject, images) -> torch.Tensor:
        """Concept maps (B, n, H, W) of ``images`` (a preprocessed batch (B, 3, H, W), or paths,
        PIL images, uint8 arrays) on the layer's grid."""
        from convscope.concepts.activations import as_maps

        x = images if isinstance(images, torch.Tensor) else subject.load_images(images)
        # the recorder first: on a fresh subject it traces the layers, which inference mode forbids
        with subject.record([self.layer], stop=True) as rec, torch.inference_mode():
            subject(x.to(subject.device))
        maps = as_maps(rec[self.layer], self.layer).float()
        return self.basis(maps.device)(maps).cpu().contiguous()

    # -- picture --------------------------------------------------------------------------------
    def to_image(self, **options):
        """Three panels: the atoms' cosine similarity (n x n), each concept's usage (mean code and
        fraction of positions where it fires) and the training curve when there is one."""
        from convscope.render.plots import figure_to_image, pyplot

        plt = pyplot()
        d = torch.nn.functional.normalize(self.dictionary.float(), dim=1)
        cos = (d @ d.T).numpy()
        panels = 3 if self.curve else 2
        fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.8))
        im = axes[0].imshow(cos, cmap="RdBu_r", vmin=-1, vmax=1)
        axes[0].set_title("atom cosine similarity")
        axes[0].set_xlabel("concept")
        axes[0].set_ylabel("concept")
        fig.colorbar(im, ax=axes[0], fraction=0.046)
        idx = np.arange(self.n)
        if self.active is not None:
            axes[1].bar(idx, self.active.numpy(), color="tab:blue", label="fraction active")
        if self.usage is not None:
            u = self.usage.numpy()
            top = float(np.abs(u).max()) or 1.0
            axes[1].plot(idx, np.abs(u) / top, "o", color="tab:orange", ms=3, label="|mean code| (scaled)")
        axes[1].xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        axes[1].set_title("concept usage")
        axes[1].set_xlabel("concept")
        axes[1].legend(fontsize=7)
        if self.curve:
            axes[2].plot(np.arange(1, len(self.curve) + 1), self.curve, color="tab:green")
            axes[2].set_yscale("log")
            axes[2].set_title("training curve (MSE)")
            axes[2].set_xlabel("step")
        fig.suptitle(self.headline(), fontsize=9)
        fig.tight_layout()
        return figure_to_image(fig)


def stability(a: ConceptSet, b: ConceptSet) -> float:
    """Mean cosine similarity of the two dictionaries' atoms matched one to one (Hungarian
    matching, :func:`scipy.optimize.linear_sum_assignment`, maximising total similarity). PCA and
    ICA atoms have no sign, so for them the absolute cosine is used. 1.0: the same dictionary up
    to the order of its atoms."""
    from scipy.optimize import linear_sum_assignment

    if a.dictionary.shape[1] != b.dictionary.shape[1]:
        raise UserInputError(
            f"cannot compare dictionaries of {a.dictionary.shape[1]} and {b.dictionary.shape[1]} channels"
        )
    da = torch.nn.functional.normalize(a.dictionary.double(), dim=1)
    db = torch.nn.functional.normalize(b.dictionary.double(), dim=1)
    cos = (da @ db.T).numpy()
    if a.method in LINEAR or b.method in LINEAR:
        cos = np.abs(cos)
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return float(np.clip(cos[rows, cols], -1.0, 1.0).mean())
