"""Adversarial: original and perturbed images with what the model said about each."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from convscope.results import Result
from convscope.subject import Subject


@dataclass
class Adversarial(Result):
    """``original`` and ``adversarial`` (N, H, W, 3) in [0, 1]; ``perturbation`` = their
    difference; ``linf`` in 1/255 units and ``l2`` (pixel values in [0, 1]) per image; top-5
    ``before`` and ``after`` as (indices, probs) arrays (N, 5); ``success`` per image (the
    prediction changed, or became the target)."""

    method: str
    original: np.ndarray
    adversarial: np.ndarray
    linf: np.ndarray
    l2: np.ndarray
    before: tuple[np.ndarray, np.ndarray]
    after: tuple[np.ndarray, np.ndarray]
    success: np.ndarray
    labels: list[str] | None = None
    target: list[int] | None = None

    @property
    def perturbation(self) -> np.ndarray:
        return self.adversarial - self.original

    def _name(self, i: int) -> str:
        return self.labels[i] if self.labels else str(i)

    def describe(self, i: int, which: str = "after") -> str:
        idx, prob = self.before if which == "before" else self.after
        return f"{self._name_of(idx[i, 0])} ({prob[i, 0]:.3f})"

    def _name_of(self, c: int) -> str:
        return self.labels[c] if self.labels and 0 <= c < len(self.labels) else str(c)

    def to_image(self, i: int = 0):
        """Original | perturbation (amplified to the full range) | adversarial, with labels."""
        from convscope.render.grid import image_grid

        p = self.perturbation[i]
        amp = 0.5 + 0.5 * p / max(float(np.abs(p).max()), 1e-12)
        caps = [
            f"{self.describe(i, 'before')}",
            f"x{0.5 / max(float(np.abs(p).max()), 1e-12):.0f}, Linf {self.linf[i]:.1f}/255",
            f"{self.describe(i, 'after')}",
        ]
        return image_grid([self.original[i], amp, self.adversarial[i]], ncols=3, pad=4, captions=caps)

    def headline(self) -> str:
        won = int(np.asarray(self.success).sum())
        n, top = len(self.original), float(np.max(self.linf))
        return f"{self.method}: {won} of {n} image(s) changed, max Linf {top:.1f}/255"


def summarize(
    method: str, subject: Subject, x0: torch.Tensor, x: torch.Tensor, target: list[int] | None = None
) -> Adversarial:
    """Build an :class:`Adversarial` from clean and perturbed [0, 1] batches (N, 3, H, W)."""
    with torch.no_grad():
        before = subject.predict(subject.preprocess.normalize(x0), k=5)
        after = subject.predict(subject.preprocess.normalize(x), k=5)
    d = (x - x0).flatten(1)
    if target is not None:
        success = after.indices[:, 0] == np.asarray(target)
    else:
        success = after.indices[:, 0] != before.indices[:, 0]
    return Adversarial(
        method=method,
        original=x0.permute(0, 2, 3, 1).cpu().numpy(),
        adversarial=x.detach().permute(0, 2, 3, 1).cpu().numpy(),
        linf=(d.abs().amax(1) * 255).cpu().numpy(),
        l2=d.norm(dim=1).cpu().numpy(),
        before=(before.indices, before.probs),
        after=(after.indices, after.probs),
        success=success,
        labels=subject.labels,
        target=target,
    )
