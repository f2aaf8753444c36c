"""Black-box attribution: methods that only call the model forward, for models that give no
gradient or take no hooks (TorchScript, a wrapped API that returns detached scores).

- ``rise``: RISE (Petsiuk et al. 2018): the score-weighted average of random smooth masks;
- ``kernel_shap`` and ``lime``: Shapley values / a local linear surrogate on SLIC superpixels,
  computed by Captum (``captum.attr.KernelShap`` / ``captum.attr.Lime``, the ``blackbox`` extra).

Occlusion (:mod:`convscope.attribution.occlusion`) is black-box too. Every map here is at the
model's input resolution (N, H, W).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from convscope.attribution.base import Method, register
from convscope.attribution.batching import auto_batch
from convscope.errors import UserInputError
from convscope.imageops import gaussian_blur

FILLS = ("zero", "gray", "mean", "blur")


def rise_masks(
    n: int,
    size: tuple[int, int],
    cells: int = 7,
    p: float = 0.5,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random draws of ``n`` RISE masks from a CPU generator seeded ``seed``, moved to
    ``device``: binary grids (n, cells, cells) (1 with probability ``p``) and the shifts (n,)
    (n,) of their crops, in pixels in ``[0, cell)``. :func:`rise_upsample` turns them into masks
    (the draws are made once so that the masks do not depend on the batch size). Drawn on the
    CPU (they are small: n * cells^2 numbers) so that one seed gives the same masks on every
    device; an accelerator's generator draws another stream."""
    H, W = size
    ch, cw = -(-H // cells), -(-W // cells)
    gen = torch.Generator().manual_seed(int(seed))
    grids = (torch.rand(n, cells, cells, generator=gen) < p).float()
    dy = torch.randint(0, ch, (n,), generator=gen)
    dx = torch.randint(0, cw, (n,), generator=gen)
    return grids.to(device), dy.to(device), dx.to(device)


def rise_upsample(
    grids: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Masks (n, H, W) in [0, 1] from :func:`rise_masks`'s draws, as the paper (sec. 3.2) and
    the authors' code: each s x s grid upsampled bilinearly to (s + 1) * cell (scikit-image's
    ``resize(order=1, mode="reflect")``: half-pixel centres, the grid mirrored past its edges)
    and cropped H x W at its shift."""
    H, W = size
    cells = grids.shape[-1]
    ch, cw = -(-H // cells), -(-W // cells)
    # mirror padding by one cell, then separable linear interpolation as two small matmuls
    padded = F.pad(grids[:, None], (1, 1, 1, 1), mode="reflect")[:, 0] if cells > 1 else grids.repeat(1, 3, 3)
    up = (
        _interp_matrix(cells, (cells + 1) * ch, grids)
        @ padded
        @ _interp_matrix(cells, (cells + 1) * cw, grids).T
    )
    rows = dy[:, None] + torch.arange(H, device=grids.device)  # (n, H)
    cols = dx[:, None] + torch.arange(W, device=grids.device)  # (n, W)
    idx = torch.arange(len(grids), device=grids.device)[:, None, None]
    return up[idx, rows[:, :, None], cols[:, None, :]]


def _interp_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """(n_out, n_in + 2): linear interpolation with half-pixel centres from a grid padded by one
    on each side."""
    u = (torch.arange(n_out, device=like.device, dtype=torch.float64) + 0.5) * n_in / n_out - 0.5
    lo = torch.floor(u)
    frac = (u - lo).to(like.dtype)
    lo = lo.long() + 1  # index in the padded grid
    m = torch.zeros(n_out, n_in + 2, device=like.device, dtype=like.dtype)
    rows = torch.arange(n_out, device=like.device)
    m[rows, lo] = 1 - frac
    m[rows, lo + 1] += frac
    return m


def _filler(subject, xi: torch.Tensor, fill: str, sigma: float) -> torch.Tensor:
    """What hidden pixels of ``xi`` (1, 3, H, W) become, in model-input space (``fill`` checked
    by :meth:`Method.validate`)."""
    if fill == "zero":
        return torch.zeros_like(xi)
    if fill == "gray":
        return subject.preprocess.normalize(torch.full_like(xi, 0.5))
    if fill == "mean":
        return xi.mean(dim=(2, 3), keepdim=True).expand_as(xi).contiguous()
    return gaussian_blur(xi, sigma)


@register
class Rise(Method):
    """RISE (Petsiuk et al. 2018): the expected score when a pixel is kept, over ``N`` random
    smooth masks M_i (each an s x s grid of cells kept with probability ``p``, bilinearly
    upsampled and randomly shifted: :func:`rise_upsample`), S_i = score(x (.) M_i + fill (.)
    (1 - M_i)).

    ``normalize="coverage"`` (default): sum_i S_i M_i / sum_i M_i, the ratio estimator of
    E[S | pixel kept]. The paper's eq. 6 (``normalize="paper"``) divides by N p = N E[M] instead,
    so wherever the drawn masks happen to cover a pixel more (or less) than p, its map is scaled
    up (down) by that chance coverage; with the same masks for every image, a few hundred masks
    give maps that mostly show the masks (a constant score gives the coverage pattern). Dividing
    by the actual coverage removes that term: a constant score gives a constant map.

    Options: ``masks=4000`` (N; the Monte Carlo error falls as 1/sqrt(N)); ``cells=7`` (s);
    ``p=0.5``; ``fill="zero"`` (the paper multiplies the model input by the mask: 0 in
    model-input space), ``"gray"``, ``"mean"`` or ``"blur"`` (sigma = one cell / 2);
    ``batch`` masked copies per forward pass (by default sized by memory:
    :func:`~convscope.attribution.batching.auto_batch`); ``seed=0``. The masks' random draws are
    made on the CPU (the same masks on every device), the masks built on the device, and the same
    masks serve every image. The map is the expected score when a pixel is kept,
    so it is not signed (it can be negative for a logit target)."""

    name = "rise"
    takes = ("masks", "cells", "p", "fill", "batch", "seed", "normalize")
    fills = FILLS
    normalizations = ("coverage", "paper")

    @classmethod
    def validate(cls, options):
        super().validate(options)
        if int(options.get("masks", 4000)) < 1 or int(options.get("batch", 64)) < 1:
            raise UserInputError("rise needs masks >= 1 and batch >= 1")
        p = float(options.get("p", 0.5))
        if not 0 < p <= 1:
            raise UserInputError(f"rise: p is the probability of keeping a cell, in (0, 1], not {p}")
        if int(options.get("cells", 7)) < 1:
            raise UserInputError("rise: cells must be >= 1")
        if options.get("normalize", "coverage") not in cls.normalizations:
            raise UserInputError(f"rise: normalize must be one of {', '.join(cls.normalizations)}")

    def attribute(self, x, target):
        n_masks = int(self.options.get("masks", 4000))
        cells = int(self.options.get("cells", 7))
        p = float(self.options.get("p", 0.5))
        batch = auto_batch(self.subject, x, self.options.get("batch"))
        fill = str(self.options.get("fill", "zero"))
        n, _, H, W = x.shape
        if not 1 <= cells <= min(H, W):
            raise UserInputError(f"rise: cells must be between 1 and {min(H, W)} for a {H}x{W} input")
        sigma = max(-(-H // cells), -(-W // cells)) / 2
        fillers = [_filler(self.subject, x[i : i + 1], fill, sigma) for i in range(n)]
        grids, dy, dx = rise_masks(n_masks, (H, W), cells, p, int(self.options.get("seed", 0)), x.device)
        maps = torch.zeros(n, H * W, device=x.device)
        coverage = torch.zeros(H * W, device=x.device, dtype=torch.float64)
        with torch.inference_mode():
            for s in range(0, n_masks, batch):
                m = rise_upsample(grids[s : s + batch], dy[s : s + batch], dx[s : s + batch], (H, W))
                m4 = m[:, None].to(x.dtype)
                coverage += m.flatten(1).sum(0, dtype=torch.float64)
                for i in range(n):
                    xi, fi = x[i : i + 1], fillers[i]
                    scores = target.for_image(i).score(self.subject, fi + (xi - fi) * m4).float()
                    maps[i] += scores @ m.flatten(1)
                self.report(n * min(s + batch, n_masks) / n_masks, n)
        if self.options.get("normalize", "coverage") == "paper":
            maps = maps / (n_masks * p)
        else:  # a pixel no mask kept (possible for tiny N) has no estimate: the mean score there
            kept = coverage > 0
            mean = maps.sum(1, keepdim=True) / coverage.sum().clamp_min(1e-12).float()
            maps = torch.where(kept, maps / coverage.clamp_min(1e-12).float(), mean)
        return maps.view(n, H, W), None


def superpixels(subject, x: torch.Tensor, segments: int = 50, compactness: float = 10.0) -> torch.Tensor:
    """SLIC superpixels (Achanta et al. 2012, scikit-image) of each image of a preprocessed batch
    as the model sees it (denormalised to [0, 1]): labels (N, H, W), numbered 0..K-1 per image."""
    from skimage.segmentation import slic

    seen = subject.preprocess.denormalize(x.detach()).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
    out, gridded = [], []
    for i, img in enumerate(seen):
        labels = slic(img, n_segments=int(segments), compactness=float(compactness), start_label=0)
        if labels.max() == labels.min():
            # pixel noise gives SLIC nothing to cut along (one superpixel): a regular grid of about
            # `segments` cells still lets the method say which region matters
            labels, _ = grid_segments(img.shape[:2], int(segments))
            gridded.append(i)
        out.append(np.unique(labels, return_inverse=True)[1].reshape(labels.shape))  # 0..K-1, no gaps
    if gridded:
        import warnings

        warnings.warn(
            f"SLIC found one superpixel in image(s) {gridded[:4]} (noise?): a regular grid of "
            f"about {int(segments)} cells is used there",
            stacklevel=2,
        )
    return torch.as_tensor(np.stack(out), dtype=torch.long, device=x.device)


def grid_segments(size: tuple[int, int], segments: int) -> tuple[np.ndarray, int]:
    """Labels (H, W) of a regular grid of about ``segments`` rectangular cells (round(sqrt) per
    side, at most one per pixel) and their count."""
    H, W = size
    g = max(1, round(segments**0.5))
    gy, gx = min(g, H), min(g, W)
    rows = np.arange(H) * gy // H
    cols = np.arange(W) * gx // W
    return rows[:, None] * gx + cols[None, :], gy * gx


def _captum_attr():
    try:
        import captum.attr
    except ImportError:
        raise UserInputError(
            "kernel_shap and lime run on Captum: pip install 'convscope[blackbox]' (or pip install captum)"
        ) from None
    return captum.attr


class _Superpixel(Method):
    takes = ("segments", "compactness", "samples", "fill", "batch", "seed")
    signed = True
    captum_name = ""
    default_samples = 500
    fills = FILLS

    @classmethod
    def validate(cls, options):
        super().validate(options)
        if int(options.get("samples", cls.default_samples)) < 1 or int(options.get("batch", 64)) < 1:
            raise UserInputError(f"{cls.name} needs samples >= 1 and batch >= 1")
        if int(options.get("segments", 50)) < 1:
            raise UserInputError(f"{cls.name}: segments must be >= 1")

    def attribute(self, x, target):
        samples = int(self.options.get("samples", self.default_samples))
        batch = auto_batch(self.subject, x, self.options.get("batch"))
        fill = str(self.options.get("fill", "zero"))
        seed = int(self.options.get("seed", 0))
        cls = getattr(_captum_attr(), self.captum_name)
        seg = superpixels(
            self.subject, x, int(self.options.get("segments", 50)), float(self.options.get("compactness", 10))
        )
        n = x.shape[0]
        for i, k in enumerate((seg.flatten(1).amax(1) + 1).tolist()):
            if k < 2:
                raise UserInputError(
                    f"{self.name}: image {i} has {k} region to explain (an image of one pixel, or "
                    "segments=1?): give more segments"
                )
        raw = torch.zeros_like(x)
        for i in range(n):
            xi, ti = x[i : i + 1], target.for_image(i)
            sigma = max(x.shape[2:]) / (2 * max(int(seg[i].max()) + 1, 1) ** 0.5)  # about a superpixel
            base = _filler(self.subject, xi, fill, sigma)
            done = [0]

            def forward(inp, ti=ti, i=i, done=done):
                done[0] += len(inp)
                self.report(i + min(done[0], samples) / samples, n)
                return ti.score(self.subject, inp)

            with torch.random.fork_rng(), torch.no_grad():
                torch.manual_seed(seed)  # Captum draws its perturbations from the global generator
                raw[i] = cls(forward).attribute(
                    xi,
                    baselines=base,
                    feature_mask=seg[i][None, None],
                    n_samples=samples,
                    perturbations_per_eval=batch,
                )[0]
        flat = [i for i in range(n) if not raw[i].any()]
        if flat and self.name == "lime":
            import warnings

            warnings.warn(
                f"lime: the surrogate is 0 for every superpixel of image(s) {flat[:4]} (the Lasso, alpha "
                "0.01, shrank every weight to 0: score changes too small for it): give more samples, or "
                "use kernel_shap",
                stacklevel=2,
            )
        return raw[:, 0], raw


@register
class KernelShap(_Superpixel):
    """KernelSHAP (Lundberg & Lee 2017) on SLIC superpixels, by Captum's ``KernelShap``: Shapley
    values of the superpixels, hidden ones replaced by ``fill``, from a Shapley-kernel weighted
    linear regression on ``samples`` random coalitions.

    Options: ``segments=50`` (SLIC's target count; it may return a few more or fewer) and
    ``compactness=10``; ``samples=500`` (Captum's ``n_samples``; well above the number of
    superpixels, so the regression is determined); ``fill="zero"`` (Captum's baseline: 0 in
    model-input space), ``"gray"``, ``"mean"`` or ``"blur"``; ``batch=64`` (Captum's
    ``perturbations_per_eval``); ``seed=0`` (each image is explained after
    ``torch.manual_seed(seed)``, the global generator restored afterwards). Signed map: each
    pixel carries its superpixel's value."""

    name = "kernel_shap"
    captum_name = "KernelShap"


@register
class Lime(_Superpixel):
    """LIME (Ribeiro et al. 2016) on SLIC superpixels, by Captum's ``Lime`` with its defaults (a
    Lasso surrogate, alpha 0.01, weighted by an exponential cosine-distance kernel): superpixels
    kept with probability 1/2 in each of ``samples`` perturbations. Options as ``kernel_shap``
    (``samples=500``). Signed map: each pixel carries its superpixel's surrogate weight."""

    name = "lime"
    captum_name = "Lime"


__all__ = [
    "FILLS",
    "KernelShap",
    "Lime",
    "Rise",
    "grid_segments",
    "rise_masks",
    "rise_upsample",
    "superpixels",
]
