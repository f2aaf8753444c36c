"""Per-unit statistics shared by scans and dissection: the high-activation quantile and its
thresholds (exact, streaming, saturation-aware), and the total order of top-K candidates."""

from __future__ import annotations

import torch

from convscope.errors import ConvscopeError

QUANTILE = 0.995  # the "high activation" threshold of `area`: top 0.5% of a unit's values


def rank(scores: torch.Tensor, images: torch.Tensor, secondary: torch.Tensor | None = None) -> torch.Tensor:
    """Per row of (U, M) candidates, their order under the scan's total order: ``scores``
    descending, then ``secondary`` descending, then ``images`` ascending. Stable sorts on the
    tensors' device; the result does not depend on the order the candidates come in."""
    order = images.argsort(dim=1, stable=True)
    for key in (secondary, scores):
        if key is not None:
            step = key.gather(1, order).argsort(dim=1, descending=True, stable=True)
            order = order.gather(1, step)
    return order


def saturation_rule(thresholds: torch.Tensor, maxima: torch.Tensor) -> torch.Tensor:
    """Where a unit's threshold equals its largest value (a saturating unit such as ReLU6 at
    6.0 with >0.5% of its values there), lower it by one float step so `area` counts the
    saturated positions (``> t`` then means ``>= max``) instead of none."""
    lower = torch.nextafter(thresholds, torch.full_like(thresholds, -torch.inf))
    return torch.where(thresholds >= maxima, lower, thresholds)


def separating_thresholds(quantile: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """Thresholds that count the same values as ``quantile`` (with :func:`saturation_rule`) but
    lie in the middle of the gap between the values they separate, rather than on a value.

    ``top`` (U, m): each unit's largest values, sorted descending, among them every value above
    the quantile and the largest one below it. ``> t`` then selects exactly the values above the
    quantile (or, where the quantile is the maximum, the values at the maximum), as before; but
    a value tied with the quantile (duplicates from max pooling, a ReLU6 at 6.0) is no longer on
    the threshold, where the last-bit rounding of another thread count or machine decides
    whether it counts.
    """
    m = top.shape[1]
    above = (top > quantile[:, None]).sum(dim=1)
    at_max = (top == top[:, :1]).sum(dim=1)
    r = torch.where(above > 0, above, at_max)  # values counted: the r largest
    hi = top.gather(1, (r - 1).clamp(0, m - 1)[:, None])[:, 0]  # smallest value counted
    lo = top.gather(1, r.clamp(max=m - 1)[:, None])[:, 0]  # largest value not counted
    mid = lo + (hi - lo) / 2
    mid = torch.where(mid < hi, mid, lo)  # adjacent floats: the lower one
    below = torch.nextafter(hi, torch.full_like(hi, -torch.inf))
    known = (r < m) & (lo < hi)  # else no smaller value is known: one float step below
    # a quantile that is not finite (an overflowed reduced-precision pass) stays as it is, for
    # check_finite to report
    return torch.where(torch.isfinite(quantile), torch.where(known, mid, below), quantile)


def quantile_thresholds(values: torch.Tensor, q: float = QUANTILE) -> torch.Tensor:
    """Per-unit ``q`` quantile of ``values`` (U, N), linear interpolation as ``numpy.quantile``.

    Exact (two ``kthvalue`` selections per unit), so it has no size limit of ``torch.quantile``.
    """
    values = values.float()
    n = values.shape[1]
    pos = (n - 1) * q
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    v_lo = values.kthvalue(lo + 1, dim=1).values
    v_hi = values.kthvalue(hi + 1, dim=1).values if hi != lo else v_lo
    return v_lo + (pos - lo) * (v_hi - v_lo)


class TopValues:
    """Per-unit largest values over a set of images: enough for their exact ``quantile`` (0.995)
    (with the saturation rule), in O(units x values / 200) memory. ``add`` takes
    ``{layer: activations (B, U, H, W)}``; ``n_images`` bounds how many images will be added."""

    def __init__(self, n_images: int, map_sizes: dict, quantile: float = QUANTILE):
        self.quantile = quantile
        self.n = {name: n_images * hw[0] * hw[1] for name, hw in map_sizes.items()}
        self.keep = {name: self._needed(n) for name, n in self.n.items()}
        self.values: dict[str, torch.Tensor] = {}
        self.seen = dict.fromkeys(map_sizes, 0)

    def _needed(self, n: int) -> int:
        # Ranks (from the top) of the two order statistics the interpolated quantile uses, and
        # one more: the largest value below them, for :func:`separating_thresholds`.
        lo = int((n - 1) * self.quantile)
        return min(n, n - lo + 1)

    def add(self, acts: dict[str, torch.Tensor]) -> None:
        for name, a in acts.items():
            flat = a.transpose(0, 1).reshape(a.shape[1], -1)
            self.seen[name] += flat.shape[1]
            cur = self.values.get(name)
            both = flat if cur is None else torch.cat([cur, flat], dim=1)
            m = min(self.keep[name], both.shape[1])
            self.values[name] = both.topk(m, dim=1).values if both.shape[1] > m else both

    def add_values(self, name: str, values: torch.Tensor, seen: int) -> None:
        """Fold in another part's kept values (U, m) of ``seen`` activations (for merging the
        states of disjoint parts of one dataset)."""
        self.seen[name] += seen
        cur = self.values.get(name)
        both = values if cur is None else torch.cat([cur, values.to(cur.device)], dim=1)
        m = min(self.keep[name], both.shape[1])
        self.values[name] = both.topk(m, dim=1).values if both.shape[1] > m else both

    def thresholds(self, name: str, separate: bool = False) -> torch.Tensor:
        """The exact ``quantile`` of every unit's values (with :func:`saturation_rule`); with
        ``separate``, moved into the gap between the values it separates
        (:func:`separating_thresholds`), which counts the same values of these images."""
        n = self.seen[name]
        if n == 0:
            raise ConvscopeError("no image could be read to compute the thresholds")
        vals = self.values[name]
        # The kept values are the top of the full sample: rebuild the quantile from ranks.
        pos = (n - 1) * self.quantile
        lo = int(pos)
        hi = min(lo + 1, n - 1)
        srt = vals.sort(dim=1, descending=True).values
        v_lo = srt[:, n - 1 - lo]
        v_hi = srt[:, n - 1 - hi]
        q = v_lo + (pos - lo) * (v_hi - v_lo)
        return separating_thresholds(q, srt) if separate else saturation_rule(q, srt[:, 0])
