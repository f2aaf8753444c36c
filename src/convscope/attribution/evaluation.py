"""Evaluation: every attribution method scored by every metric on the same images, with
confidence intervals, ranks, a table (CSV / JSON) and a ranked plot."""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field

import numpy as np

from convscope.inputs.fileio import write_text
from convscope.results import Result

TABLE_COLUMNS = ("metric", "rank", "method", "mean", "low", "high", "std", "n", "higher_is_better", "seconds")


@dataclass
class Evaluation(Result):
    """Result of :func:`convscope.attribution.evaluate`.

    ``scores`` (M, K, N) float64 holds the score of method ``methods[m]`` under metric
    ``metrics[k]`` on image ``images[n]`` (NaN where it could not be computed, e.g. a failed
    image); ``higher_is_better[metric]`` says which way the metric points; ``seconds`` (M, K) is
    the time spent on each pair (explaining is charged to the method's first metric);
    ``targets`` names what was explained on each image; ``settings`` holds what makes a run
    repeatable (seed, method options, metric settings, model name), ``skipped`` the images that
    could not be read.
    """

    methods: list[str]
    metrics: list[str]
    images: list[str]
    scores: np.ndarray
    higher_is_better: dict[str, bool]
    targets: list[str] = field(default_factory=list)
    seconds: np.ndarray | None = None
    model: str = ""
    settings: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.scores = np.asarray(self.scores, dtype=np.float64)
        want = (len(self.methods), len(self.metrics), len(self.images))
        if self.scores.shape != want:
            raise ValueError(f"scores has shape {self.scores.shape}, expected {want}")

    def __len__(self) -> int:
        return len(self.images)

    def score(self, method: str, metric: str) -> np.ndarray:
        """The per-image scores (N,) of ``method`` under ``metric``."""
        return self.scores[self.methods.index(method), self.metrics.index(metric)]

    def interval(
        self, method: str, metric: str, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
    ) -> tuple[float, float, float]:
        """(mean, low, high): the mean over the images where the pair has a score and its
        percentile-bootstrap ``confidence`` interval (``resamples`` draws, seeded: the same
        numbers every time). One score has no interval: its bounds are NaN (shown as "-"), not
        the score itself, which would read as certainty."""
        v = self.score(method, metric)
        v = v[np.isfinite(v)]
        if len(v) == 0:
            return (float("nan"),) * 3
        if len(v) == 1:
            return float(v[0]), float("nan"), float("nan")
        rng = np.random.default_rng(seed)
        means = v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(1)
        a = (1 - confidence) / 2
        low, high = np.quantile(means, [a, 1 - a])
        return float(v.mean()), float(low), float(high)

    def table(self, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> list[dict]:
        """One row per (metric, method), metrics in order and methods best first within each
        (``rank`` 1 is best, by the mean in the metric's direction; methods with no score last).
        Columns: :data:`TABLE_COLUMNS`."""
        rows = []
        for k, metric in enumerate(self.metrics):
            up = bool(self.higher_is_better.get(metric, True))
            group = []
            for m, method in enumerate(self.methods):
                mean, low, high = self.interval(method, metric, confidence, resamples, seed)
                v = self.scores[m, k]
                v = v[np.isfinite(v)]
                group.append(
                    {
                        "metric": metric,
                        "method": method,
                        "mean": mean,
                        "low": low,
                        "high": high,
                        "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
                        "n": int(len(v)),
                        "higher_is_better": up,
                        "seconds": float(self.seconds[m, k]) if self.seconds is not None else float("nan"),
                    }
                )
            group.sort(key=lambda r: (not np.isfinite(r["mean"]), -r["mean"] if up else r["mean"]))
            # Competition ranking: equal means share the best rank (1, 1, 3); methods with no
            # score share the rank after the scored ones.
            rank = 0
            for pos, r in enumerate(group, 1):
                prev = group[pos - 2]["mean"] if pos > 1 else None
                same = prev is not None and (prev == r["mean"] or (np.isnan(prev) and np.isnan(r["mean"])))
                rank = rank if same else pos
                rows.append({"metric": r["metric"], "rank": rank, **{c: r[c] for c in TABLE_COLUMNS[2:]}})
        return rows

    def to_csv(self, path: str | os.PathLike | None = None, **table) -> str:
        """The :meth:`table` as CSV text; written atomically to ``path`` when given."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(TABLE_COLUMNS), lineterminator="\n")
        w.writeheader()
        for r in self.table(**table):
            w.writerow({c: (f"{v:.6g}" if isinstance(v, float) else v) for c, v in r.items()})
        text = buf.getvalue()
        if path is not None:
            write_text(path, text)
        return text

    def to_json(self, path: str | os.PathLike | None = None, **table) -> str:
        """The :meth:`table` plus the run's description as JSON text (NaN written as null);
        written atomically to ``path`` when given."""

        def clean(v):
            return None if isinstance(v, float) and not np.isfinite(v) else v

        doc = {
            "model": self.model,
            "methods": self.methods,
            "metrics": self.metrics,
            "images": len(self.images),
            "skipped": len(self.skipped),
            "higher_is_better": self.higher_is_better,
            "settings": self.settings,
            "table": [{c: clean(v) for c, v in r.items()} for r in self.table(**table)],
        }
        text = json.dumps(doc, indent=1, default=str)
        if path is not None:
            write_text(path, text)
        return text

    def headline(self) -> str:
        return (
            f"{len(self.methods)} method(s) x {len(self.metrics)} metric(s) on {len(self.images)} image(s)"
            + (f" of {self.model}" if self.model else "")
        )

    def to_image(self, confidence: float = 0.95):
        """One panel per metric: methods ranked best first, mean and confidence interval."""
        from convscope.render.plots import evaluation_figure, figure_to_image

        return figure_to_image(evaluation_figure(self.table(confidence=confidence), self.metrics))


__all__ = ["TABLE_COLUMNS", "Evaluation"]
