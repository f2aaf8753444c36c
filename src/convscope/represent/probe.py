"""Linear probes: how linearly decodable the classes are from each layer's features (logistic
regression or a linear SVM on standardised features, one train/test split for all layers)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from convscope.errors import UserInputError
from convscope.results import Result

CLASSIFIERS = ("logistic", "svm")


@dataclass
class ProbeRow:
    layer: str
    dims: int
    train_accuracy: float
    test_accuracy: float


@dataclass
class ProbeResult(Result):
    """Accuracy per layer, the split's sizes and the chance level (the majority-class rate of
    the test set)."""

    rows: list[ProbeRow]
    train_size: int
    test_size: int
    chance: float
    classifier: str

    def best(self) -> ProbeRow:
        return max(self.rows, key=lambda r: r.test_accuracy)

    def to_image(self, title: str = ""):
        """Train and test accuracy per layer, with the chance level."""
        from convscope.render.plots import figure_to_image
        from convscope.render.represent import probe_figure

        return figure_to_image(probe_figure(self, title))

    def headline(self) -> str:
        b = self.best()
        return (
            f"linear probe ({self.classifier}) over {len(self.rows)} layer(s): best {b.layer} "
            f"test {b.test_accuracy:.3f} (chance {self.chance:.3f})"
        )

    def write_report(self, png) -> list:
        """The accuracy figure at ``png`` and the table (CSV) beside it; returns both paths."""
        from convscope.represent.report import write_probe_report  # drawing stays out of results

        return write_probe_report(self, png)


def split(labels: np.ndarray, test_fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A stratified train/test split of indices."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    _, counts = np.unique(labels, return_counts=True)
    n_test = int(np.ceil(test_fraction * len(labels)))
    if n_test < len(counts) or len(labels) - n_test < len(counts):
        raise UserInputError(
            f"{len(labels)} images are too few for a stratified split of "
            f"{len(counts)} classes at --test-fraction {test_fraction}"
        )
    return tuple(
        train_test_split(
            idx, test_size=test_fraction, random_state=seed, stratify=labels if counts.min() > 1 else None
        )
    )


def linear_probe(
    features: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    train: np.ndarray | None = None,
    test: np.ndarray | None = None,
    test_fraction: float = 0.3,
    classifier: str = "logistic",
    c: float = 1.0,
    seed: int = 0,
) -> ProbeResult:
    """Fit one linear classifier per layer on ``features[layer]`` (N, C) and ``labels`` (N,)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    labels = np.asarray(labels)
    if classifier not in CLASSIFIERS:
        raise UserInputError(f"classifier must be one of {', '.join(CLASSIFIERS)}")
    if labels.min() < 0 or len(np.unique(labels)) < 2:
        raise UserInputError(
            "a linear probe needs class labels for every image and 2+ classes "
            "(an ImageFolder-style dataset: one sub-folder per class)"
        )
    if train is None or test is None:
        train, test = split(labels, test_fraction, seed)
    rows = []
    for layer, x in features.items():
        x = np.asarray(x, dtype=np.float32)
        clf = (
            LogisticRegression(C=c, max_iter=2000)
            if classifier == "logistic"
            else LinearSVC(C=c, max_iter=5000, random_state=seed)
        )
        model = make_pipeline(StandardScaler(), clf).fit(x[train], labels[train])
        rows.append(
            ProbeRow(
                layer,
                x.shape[1],
                float(model.score(x[train], labels[train])),
                float(model.score(x[test], labels[test])),
            )
        )
    chance = float(np.bincount(labels[test]).max() / len(test))
    return ProbeResult(rows, len(train), len(test), chance, classifier)
