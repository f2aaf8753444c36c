"""What a scan returns: per-layer states plus the facts needed to read and render them."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from convscope.errors import LayerNotFoundError, UserInputError
from convscope.results import Result
from convscope.scan.state import LayerState, ScanMismatchError

# A layer "saturates" when at least this fraction of its units reach their best `max` score in
# two or more of their top-K images (a ReLU6 at 6.0): their `max` ranking is then by the
# secondary key (state.SECONDARY), not by the response itself. Measured: the default model's
# bn2 (ReLU6) 74% of units over the 18 sample photos, its conv_head and blocks.5-6 0%; ties
# by coincidence, as bfloat16 rounding makes them, 12% in a small layer.
SATURATION_WARN = 0.25


class SaturationWarning(UserWarning):
    """A scanned layer saturates: many units tie at their maximum in the top-K (see
    :meth:`ScanResult.tied_at_max`)."""


@dataclass(frozen=True)
class UnitTopK:
    """Top-K images of one unit under one criterion (best first; empty slots removed).

    ``images`` are source indices, ``names`` their names, ``scores`` the criterion values,
    ``ys``/``xs`` the map position of the unit's maximum in each image.
    """

    layer: str
    unit: int
    criterion: str
    direction: bool
    images: np.ndarray
    names: list[str]
    scores: np.ndarray
    ys: np.ndarray
    xs: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class UnitStats:
    """Per-unit statistics of one layer over the whole scan, arrays of shape (U,)."""

    mean: np.ndarray
    std: np.ndarray
    max: np.ndarray
    fraction_positive: np.ndarray
    threshold: np.ndarray | None


@dataclass
class ScanResult(Result):
    """Scan of ``layers``: ``states[layer]`` holds channels then ``directions[layer]`` (N, C).
    ``source``: the images scanned, when known (for pictures; not saved)."""

    layers: list[str]
    channels: dict[str, int]
    directions: dict[str, torch.Tensor]
    states: dict[str, LayerState]
    k: int
    criteria: tuple[str, ...]
    image_names: list[str]
    image_labels: list[int | None]
    classes: list[str]
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (index, reason)
    processed: int = 0
    seconds: float = 0.0
    config: dict = field(default_factory=dict)
    source: object | None = field(default=None, repr=False, compare=False, metadata={"save": False})

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def tied_at_max(self) -> dict[str, float]:
        """Per layer, the fraction of its channels whose `max` top-K holds two or more images at
        the channel's best score (units whose best score is <= 0, never active, are not counted
        as tied). Empty when `max` was not scanned."""
        if "max" not in self.criteria:
            return {}
        out = {}
        for name in self.layers:
            top, c = self.states[name].topk["max"], self.channels[name]
            if c == 0 or top.scores.shape[1] < 2:
                out[name] = 0.0
                continue
            s, second = top.scores[:c], top.valid_images()[:c, 1]
            tied = (s[:, 1] == s[:, 0]) & (second >= 0) & (s[:, 0] > 0)
            out[name] = float(tied.double().mean())
        return out

    @property
    def saturated(self) -> dict[str, float]:
        """The layers where at least :data:`SATURATION_WARN` of the units tie at their maximum,
        with that fraction (from the recorded ``config["tied_at_max"]`` when there is one)."""
        ties = self.config.get("tied_at_max") or self.tied_at_max()
        return {n: f for n, f in ties.items() if f >= SATURATION_WARN}

    def saturation_message(self) -> str | None:
        """One line about the saturating layers, or None."""
        sat = self.saturated
        if not sat:
            return None
        which = ", ".join(f"{n} ({f:.0%} of units)" for n, f in sat.items())
        return (
            f"{which} saturate: several top-K images reach the maximum (e.g. ReLU6 at 6.0); "
            "ties rank by the map's spatial mean (docs/scan.md); the layer before the clamp "
            "ranks by the response itself"
        )

    def record_ties(self, warn: bool = True) -> None:
        """Store :meth:`tied_at_max` in ``config`` (the atlas keeps it with the run) and, with
        ``warn``, issue a :class:`SaturationWarning` for the saturating layers."""
        self.config["tied_at_max"] = self.tied_at_max()
        note = self.saturation_message()
        if warn and note:
            warnings.warn(SaturationWarning(note), stacklevel=3)

    @property
    def thresholds(self) -> dict[str, torch.Tensor]:
        """Per-layer `area` thresholds (U,), to scan further parts of a dataset consistently."""
        return {n: s.thresholds for n, s in self.states.items() if s.thresholds is not None}

    def _state(self, layer: str) -> LayerState:
        if layer not in self.states:
            raise LayerNotFoundError(layer, self.layers, what="scanned layer")
        return self.states[layer]

    def topk(self, layer: str, unit: int, criterion: str = "max", direction: bool = False) -> UnitTopK:
        """Top-K of channel ``unit`` of ``layer`` (or of random direction ``unit``)."""
        state = self._state(layer)
        if criterion not in state.topk:
            raise UserInputError(f"criterion {criterion!r} was not scanned (have {', '.join(state.topk)})")
        n = self.channels[layer] if not direction else len(self.directions.get(layer, ()))
        if not 0 <= unit < n:
            kind = "direction" if direction else "unit"
            raise UserInputError(f"{layer} has no {kind} {unit} (0..{n - 1})")
        row = unit + (self.channels[layer] if direction else 0)
        top = state.topk[criterion]
        images = top.valid_images()[row].cpu().numpy()
        keep = images >= 0
        pos = top.positions[row].cpu().numpy()[keep]
        w = state.map_size[1]
        return UnitTopK(
            layer,
            unit,
            criterion,
            direction,
            images[keep],
            [self.image_names[i] for i in images[keep]],
            top.scores[row].cpu().numpy()[keep],
            pos // w,
            pos % w,
        )

    def stats(self, layer: str, direction: bool = False) -> UnitStats:
        """Statistics of the channels of ``layer`` (or of its random directions)."""
        s = self._state(layer)
        c = self.channels[layer]
        part = slice(c, None) if direction else slice(0, c)
        return UnitStats(
            s.mean()[part].cpu().numpy(),
            s.std()[part].cpu().numpy(),
            s.max[part].cpu().numpy(),
            s.fraction_positive()[part].cpu().numpy(),
            s.thresholds[part].cpu().numpy() if s.thresholds is not None else None,
        )

    def merge(self, other: ScanResult) -> ScanResult:
        """Combine scans of disjoint parts of one dataset (same layers, K, criteria, directions
        and thresholds) into the scan of their union. ``self`` is updated and returned."""
        if (self.layers, self.k, self.criteria) != (other.layers, other.k, other.criteria):
            raise ScanMismatchError("scans differ in layers, K or criteria")
        for name in self.layers:
            a, b = self.directions.get(name), other.directions.get(name)
            if (a is None) != (b is None) or (a is not None and not torch.equal(a, b)):
                raise ScanMismatchError(f"scans used different random directions in {name}")
            self.states[name].merge(other.states[name])
        self.skipped = sorted(set(self.skipped) | set(other.skipped))
        self.processed += other.processed
        self.seconds += other.seconds
        if "tied_at_max" in self.config:
            self.config["tied_at_max"] = self.tied_at_max()
        return self

    def headline(self) -> str:
        layers = ", ".join(f"{n} ({self.channels[n]} units)" for n in self.layers)
        return f"scan of {self.processed} images, top {self.k} by {', '.join(self.criteria)}: {layers}"

    def to_image(
        self,
        layer: str | None = None,
        units: int | list[int] = 8,
        criterion: str | None = None,
        source=None,
        subject=None,
        cell: int = 64,
    ):
        """The top-K of the first ``units`` units (or those listed) of ``layer`` (default: the
        first scanned) by ``criterion`` (default ``max``): with the scanned images (``source``,
        default the one scanned, when known) one row of images per unit with their scores; with
        a ``subject`` too, each unit's receptive-field patches and activation maps
        (:func:`convscope.scan.patches.render_topk`); without images, the scores and image
        indices as a heat map."""
        layer = layer or self.layers[0]
        criterion = criterion or ("max" if "max" in self.criteria else self.criteria[0])
        state = self._state(layer)
        if criterion not in state.topk:
            raise UserInputError(f"criterion {criterion!r} was not scanned (have {', '.join(state.topk)})")
        shown = list(range(min(units, self.channels[layer]))) if isinstance(units, int) else list(units)
        tops = [self.topk(layer, u, criterion) for u in shown]
        source = source if source is not None else self.source
        title = f"{layer}: top {self.k} by {criterion}, units {shown[0]}..{shown[-1]}" if shown else layer
        if source is not None and subject is not None:
            from convscope.render.grid import stack
            from convscope.scan.patches import render_topk

            return stack([render_topk(subject, source, t, cell=max(cell, 64)) for t in tops if len(t)])
        if source is not None:
            from convscope.render.topk import unit_rows

            rows = [
                (f"unit {t.unit}", [source.read(int(i)) for i in t.images], [f"{s:.3g}" for s in t.scores])
                for t in tops
            ]
            return unit_rows(rows, title, cell)
        from convscope.render.plots import figure_to_image
        from convscope.render.topk import scores_figure

        top = state.topk[criterion]
        rows = torch.as_tensor(shown, dtype=torch.long)
        return figure_to_image(
            scores_figure(
                top.scores[rows].cpu().numpy(), top.valid_images()[rows].cpu().numpy(), shown, title
            )
        )
