"""Post-processing of global descriptors, fitted on one set and applied to another: L2
normalisation, PCA to d dimensions, whitening, signed power normalisation — in the order of
Razavian et al. 2014 and Babenko & Lempitsky 2015 (``"l2,pca:256,whiten,l2"``;
``"power:0.5,l2"`` for the power-normalised variant)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from convscope.errors import UserInputError

_STEPS = ("l2", "pca", "whiten", "power")


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit Euclidean length (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def parse_steps(spec: str | list[str]) -> list[tuple[str, float | None]]:
    """``"l2,pca:128,whiten,power:0.5,l2"`` -> [("l2", None), ("pca", 128), ...]."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, _, arg = item.partition(":")
        if name not in _STEPS:
            raise UserInputError(f"unknown post-processing step {name!r}; use {', '.join(_STEPS)}")
        if name in ("pca", "power") and not arg:
            raise UserInputError(f"{name} needs a value, e.g. {name}:{128 if name == 'pca' else 0.5}")
        out.append((name, float(arg) if arg else None))
    return out


@dataclass
class PostProcess:
    """A fitted chain of steps. ``fit(x)`` learns the PCA (mean, components, eigenvalues) from
    ``x``; ``transform(y)`` applies the chain to any other set."""

    steps: list[tuple[str, float | None]]
    mean: np.ndarray | None = None
    components: np.ndarray | None = None  # (d, C)
    eigenvalues: np.ndarray | None = None  # (d,)
    eps: float = 1e-6
    fitted: bool = field(default=False)

    @classmethod
    def parse(cls, spec: str | list[str]) -> PostProcess:
        return cls(parse_steps(spec))

    def fit(self, x: np.ndarray) -> PostProcess:
        y = np.asarray(x, dtype=np.float64)
        for name, arg in self.steps:
            if name in ("pca", "whiten") and self.components is None:
                d = int(arg) if name == "pca" else min(y.shape)
                self.mean = y.mean(0)
                _, s, vt = np.linalg.svd(y - self.mean, full_matrices=False)
                # directions without variance in the fitting set (rank <= n - 1) are dropped:
                # whitening would blow their noise up by 1 / sqrt(eps)
                rank = int((s > s[0] * 1e-6).sum()) if len(s) and s[0] > 0 else 0
                d = max(1, min(d, rank, vt.shape[0]))
                self.components = vt[:d]
                self.eigenvalues = s[:d] ** 2 / max(1, len(y) - 1)
            y = self._apply(name, arg, y)
        self.fitted = True
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        if not self.fitted:
            raise UserInputError("fit the post-processing before applying it")
        y = np.asarray(x, dtype=np.float64)
        for name, arg in self.steps:
            y = self._apply(name, arg, y)
        return y.astype(np.float32)

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x).transform(x)

    def _apply(self, name, arg, y):
        if name == "l2":
            return l2_normalize(y)
        if name == "power":
            return np.sign(y) * np.abs(y) ** arg
        if name == "pca":
            return (y - self.mean) @ self.components.T
        # whiten: after a pca step the data are already projected; otherwise project first
        if not any(s == "pca" for s, _ in self.steps):
            y = (y - self.mean) @ self.components.T
        return y / np.sqrt(self.eigenvalues + self.eps)

    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "mean": self.mean,
            "components": self.components,
            "eigenvalues": self.eigenvalues,
        }
