"""Is a map faithful to the model? Faithfulness, robustness, randomisation and localisation
metrics, batched on the subject's device.

Every metric is a function ``metric(subject, images, maps, targets=None, *, seed=0, **settings)``
taking preprocessed ``images`` (B, 3, H, W), the maps to judge (B, H, W) (an array, a tensor or an
:class:`AttributionMap`) and the explained classes (``None``: the model's top class; an int; or
one per image), and returning one score per image, a float64 tensor (B,) on the CPU. The
perturbed copies of all images go through the model in batches of ``batch``, never one forward
per perturbation; ``batch=None`` sizes them by the bytes of the model's largest activation (see
:func:`auto_batch`). Randomness comes from a ``torch.Generator`` seeded with ``seed``, so a run
repeats. :data:`METRICS` names them all (for ``convscope evaluate``) and :data:`HIGHER_IS_BETTER`
says which way each points.

The conventions (baselines, patch order, channel handling) are Quantus 0.6's unless
docs/attribution.md ("Faithfulness metrics") says otherwise; the tests check each against
Quantus (or pytorch-grad-cam, where Quantus has no such metric or cannot run it).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from convscope.attribution.batching import auto_batch
from convscope.attribution.result import AttributionMap
from convscope.attribution.targets import Target, logits
from convscope.errors import UserInputError
from convscope.subject import Subject

# ---------------------------------------------------------------------------------------------
# shared pieces


def _images(subject: Subject, images) -> torch.Tensor:
    x = images if isinstance(images, torch.Tensor) else subject.load_images(images)
    if x.dim() != 4 or x.shape[1] != 3:
        raise UserInputError(f"expected images (B, 3, H, W), got {tuple(x.shape)}")
    return x.detach().to(subject.device, torch.float32)


def _maps(maps, x: torch.Tensor) -> torch.Tensor:
    if isinstance(maps, AttributionMap):
        maps = maps.maps
    m = torch.as_tensor(np.asarray(maps) if not isinstance(maps, torch.Tensor) else maps)
    if m.dim() == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.shape != (x.shape[0], *x.shape[2:]):
        raise UserInputError(
            f"expected maps {(x.shape[0], *x.shape[2:])} for the images, got {tuple(m.shape)}"
        )
    return m.detach().to(x.device, torch.float64)


def _model_scores(subject: Subject, x: torch.Tensor, classes: torch.Tensor, softmax: bool, batch: int | None):
    """Target class scores (N,) of ``x`` (N, 3, H, W), in chunks of ``batch``, float64."""
    batch = auto_batch(subject, x, batch)
    out = []
    with torch.no_grad():
        for s in range(0, len(x), batch):
            z = logits(subject, x[s : s + batch]).double()
            if softmax:
                z = z.softmax(-1)
            out.append(z.gather(1, classes[s : s + batch, None])[:, 0])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64, device=x.device)


def _classes(subject: Subject, x: torch.Tensor, targets) -> torch.Tensor:
    n = len(x)
    if targets is None or (isinstance(targets, str) and targets == "top"):
        with torch.no_grad():
            return logits(subject, x).argmax(-1)
    if isinstance(targets, Target):
        if targets.kind not in ("class", "prob") or not targets.classes:
            raise UserInputError("metrics explain class targets; resolve 'top' or give class indices")
        targets = list(targets.classes)
    t = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
    if t.numel() == 1:
        t = t.repeat(n)
    if t.numel() != n:
        raise UserInputError(f"got {t.numel()} targets for {n} images")
    return t.to(x.device)


def _baseline(x: torch.Tensor, baseline) -> torch.Tensor:
    """The replacement values, broadcastable to ``x``: Quantus' "black" / "white" (the image's
    own minimum / maximum over all channels), "mean" (its mean), a number, or a tensor."""
    if isinstance(baseline, str):
        flat = x.flatten(1)
        kinds = {"black": flat.amin(1), "white": flat.amax(1), "mean": flat.mean(1)}
        if baseline not in kinds:
            raise UserInputError(
                f"baseline {baseline!r}: use one of {', '.join(kinds)}, a number or a tensor"
            )
        return kinds[baseline].view(-1, 1, 1, 1)
    if isinstance(baseline, (int, float)):
        return torch.full((1, 1, 1, 1), float(baseline), device=x.device, dtype=x.dtype)
    t = torch.as_tensor(baseline, device=x.device, dtype=x.dtype)
    return t.view(*[1] * (4 - t.dim()), *t.shape) if t.dim() < 4 else t


def _sweep(subject, x, cls, base, n_per: int, removed: Callable, softmax: bool, batch, extra=None):
    """Target scores (B, n_per) of the perturbed copies ``where(removed(img, j), base, x[img])``
    for every image ``img`` and perturbation ``j``, built and scored in batches of ``batch``
    copies mixing images (and ``extra(img, x_perturbed)`` per copy, when given)."""
    batch = auto_batch(subject, x, batch)
    b = len(x)
    total = b * n_per
    scores = torch.zeros(total, dtype=torch.float64, device=x.device)
    extras = torch.zeros(total, dtype=torch.float64, device=x.device) if extra else None
    for s in range(0, total, batch):
        p = torch.arange(s, min(s + batch, total), device=x.device)
        img, j = p // n_per, p % n_per
        xp = torch.where(removed(img, j), base[img] if base.shape[0] > 1 else base, x[img])
        scores[p] = _model_scores(subject, xp, cls[img], softmax, batch)
        if extra:
            extras[p] = extra(img, xp)
    return scores.view(b, n_per), (extras.view(b, n_per) if extra else None)


def _generator(seed: int, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


def _norm_abs(m: torch.Tensor, abs: bool, normalise: bool) -> torch.Tensor:
    if normalise:  # per image, by its largest |value| (Quantus divides by the batch's: see docs)
        top = m.flatten(1).abs().amax(1).clamp_min(1e-300).view(-1, *[1] * (m.dim() - 1))
        m = m / top
    return m.abs() if abs else m


def _explain_fn(subject: Subject, method, options: dict | None, maps) -> Callable:
    """``method`` as ``run(subject, x, classes) -> maps (B, H, W)``: a method name for
    :func:`~convscope.explain` (with ``options``), or already such a callable (a map that
    ignores the model, such as an edge filter, is one)."""
    from convscope.attribution.api import explain

    if callable(method):
        return lambda subj, x, classes: torch.as_tensor(method(subj, x, classes)).to(x.device).double()
    if method is None and isinstance(maps, AttributionMap):
        method, options = maps.method, {**maps.options, **(options or {})}
    if method is None:
        raise UserInputError("this metric re-explains the images: give method= (or an AttributionMap)")
    opts = dict(options or {})

    def run(subj: Subject, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        tgt = Target("class", tuple(int(c) for c in classes.tolist()))
        return torch.as_tensor(explain(subj, x, method, target=tgt, **opts).maps).to(x.device).double()

    return run


# ---------------------------------------------------------------------------------------------
# faithfulness: perturb what the map says matters


def pixel_flipping(
    subject: Subject,
    images,
    maps,
    targets=None,
    *,
    step: int | None = None,
    baseline="black",
    softmax: bool = True,
    curve: bool = False,
    batch: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Pixel flipping (Bach et al. 2015): replace the pixels (all channels) by ``baseline`` in
    order of decreasing map value, ``step`` pixels at a time (default: H * W / 64, 64 steps),
    and track the target's score (softmax probability with ``softmax``). Returns the curve
    (B, ceil(HW/step)) with ``curve``, else its mean per image (lower is better). Quantus'
    PixelFlipping with ``features_in_step = 3 * step``."""
    x = _images(subject, images)
    m = _maps(maps, x)
    cls = _classes(subject, x, targets)
    b, _, h, w = x.shape
    step = step or max(1, h * w // 64)
    base = _baseline(x, baseline)
    order = torch.argsort(-m.flatten(1), dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=x.device).expand(b, -1))
    n_steps = math.ceil(h * w / step)
    cuts = torch.arange(1, n_steps + 1, device=x.device) * step
    rank = rank.view(b, 1, h, w)
    out, _ = _sweep(
        subject, x, cls, base, n_steps, lambda i, j: rank[i] < cuts[j].view(-1, 1, 1, 1), softmax, batch
    )
    return (out if curve else out.mean(1)).cpu()


def _patch_ids(h: int, w: int, patch: int, device) -> tuple[torch.Tensor, int, int]:
    """Patch index of every pixel on Quantus' grid (padded symmetrically to a multiple of
    ``patch``, floor before, ceil after), and the grid's size."""
    ph = (-h) % patch
    pw = (-w) % patch
    top, left = ph // 2, pw // 2
    gh, gw = (h + ph) // patch, (w + pw) // patch
    rows = (torch.arange(h, device=device) + top) // patch
    cols = (torch.arange(w, device=device) + left) // patch
    return rows[:, None] * gw + cols[None, :], gh, gw


def region_perturbation(
    subject: Subject,
    images,
    maps,
    targets=None,
    *,
    patch: int = 8,
    order: str = "morf",
    regions: int = 100,
    baseline="black",
    softmax: bool = True,
    curve: bool = False,
    batch: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Region perturbation (Samek et al. 2016): non-overlapping ``patch`` x ``patch`` regions
    ranked by their summed map value (``order`` "morf": most relevant first, "lerf": least,
    "random": seeded), replaced cumulatively by ``baseline``, the first ``regions`` of them.
    Returns the drop in the target's score after each region, (B, R) with ``curve``, else its
    mean, the AOPC (higher is better for morf)."""
    x = _images(subject, images)
    m = _maps(maps, x)
    cls = _classes(subject, x, targets)
    b, _, h, w = x.shape
    ids, gh, gw = _patch_ids(h, w, patch, x.device)
    n_patches = gh * gw
    sums = torch.zeros(b, n_patches, dtype=torch.float64, device=x.device)
    sums.scatter_add_(1, ids.flatten().expand(b, -1), m.flatten(1))
    if order == "morf":
        ranked = torch.argsort(-sums, dim=1, stable=True)
    elif order == "lerf":
        ranked = torch.argsort(sums, dim=1, stable=True)
    elif order == "random":
        g = _generator(seed, "cpu")
        ranked = torch.stack([torch.randperm(n_patches, generator=g) for _ in range(b)]).to(x.device)
    else:
        raise UserInputError(f"order {order!r}: use morf, lerf or random")
    prank = torch.empty_like(ranked)
    prank.scatter_(1, ranked, torch.arange(n_patches, device=x.device).expand(b, -1))
    r_count = min(regions, n_patches)
    base = _baseline(x, baseline)
    y0 = _model_scores(subject, x, cls, softmax, batch)
    pr = prank[:, ids].view(b, 1, h, w)  # the rank of each pixel's region
    after, _ = _sweep(
        subject, x, cls, base, r_count, lambda i, j: pr[i] <= j.view(-1, 1, 1, 1), softmax, batch
    )
    out = y0[:, None] - after
    return (out if curve else out.mean(1)).cpu()


_NEIGHBOURS = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])


def noisy_linear_imputation(
    x: torch.Tensor,
    removed: torch.Tensor,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    tol: float = 1e-10,
    max_iter: int | None = None,
    solver: str = "auto",
) -> torch.Tensor:
    """ROAD's imputation (Rong et al. 2022): each removed pixel (``removed`` (N, H, W) true)
    becomes the weighted mean of its 8 neighbours (1/6 for the 4 direct, 1/12 for the diagonal
    ones, over those inside the image), removed neighbours being unknowns too, plus Gaussian
    noise of std ``noise``. ``x`` (N, C, H, W). ``solver`` "cg" (the default on an accelerator)
    solves the systems of every image and channel at once by Jacobi-preconditioned conjugate
    gradients on the device (float64, to relative residual ``tol``); "direct" (the default on
    the CPU, where it is faster for large holes) factorises each image's sparse system."""
    n, c, h, w = x.shape
    if solver == "auto":
        solver = "cg" if x.device.type != "cpu" else "direct"
    if solver == "direct":
        out = torch.stack([_direct_imputation(x[i], removed[i]) for i in range(n)]).to(x.device)
        if noise:
            eps = noise * torch.randn(out.shape, generator=generator, dtype=torch.float64).to(x.device)
            out = torch.where(removed.to(x.device)[:, None], out + eps, out)
        return out.to(x.dtype)
    if solver != "cg":
        raise UserInputError(f"solver {solver!r}: use auto, cg or direct")
    xd = x.double()
    k = _NEIGHBOURS.to(x.device, torch.float64).view(1, 1, 3, 3)
    mask = removed.to(x.device, torch.float64).view(n, 1, h, w).expand(n, c, h, w).reshape(n * c, 1, h, w)
    known = 1 - mask
    flat = xd.reshape(n * c, 1, h, w)
    diag = F.conv2d(torch.ones(1, 1, h, w, dtype=torch.float64, device=x.device), k, padding=1)
    diag = mask * diag + known  # the identity on the known pixels keeps the system SPD

    def op(v):
        return mask * (diag * v - F.conv2d(mask * v, k, padding=1)) + known * v

    rhs = mask * F.conv2d(known * flat, k, padding=1)
    v = torch.zeros_like(rhs)
    r = rhs.clone()
    z = r / diag
    p = z.clone()
    rz = (r * z).flatten(1).sum(1)
    bnorm = rhs.flatten(1).norm(dim=1).clamp_min(1e-300)
    for it in range(max_iter or 20 * (h + w) + 100):
        # checked every 16 steps: each check waits for the device
        if it % 16 == 0 and bool((r.flatten(1).norm(dim=1) <= tol * bnorm).all()):
            break
        ap = op(p)
        pap = (p * ap).flatten(1).sum(1)
        alpha = torch.where(pap > 0, rz / pap.clamp_min(1e-300), torch.zeros_like(rz)).view(-1, 1, 1, 1)
        v = v + alpha * p
        r = r - alpha * ap
        z = r / diag
        rz_new = (r * z).flatten(1).sum(1)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-300), torch.zeros_like(rz)).view(-1, 1, 1, 1)
        p = z + beta * p
        rz = rz_new
    if noise:
        v = v + noise * torch.randn(v.shape, generator=generator, device="cpu", dtype=torch.float64).to(
            x.device
        )
    out = known * flat + mask * v
    return out.view(n, c, h, w).to(x.dtype)


def _direct_imputation(img: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """One image's imputation (C, H, W), float64, by a sparse direct solve (CPU)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    c, h, w = img.shape
    flat = img.detach().double().reshape(c, -1).cpu().numpy()
    gone = removed.detach().cpu().numpy().reshape(-1).astype(bool)
    idx = np.flatnonzero(gone)
    out = flat.copy()
    if len(idx) == 0:
        return torch.from_numpy(out.reshape(c, h, w))
    var = np.full(h * w, -1)
    var[idx] = np.arange(len(idx))
    r, q = idx // w, idx % w
    diag = np.zeros(len(idx))
    rhs = np.zeros((len(idx), c))
    rows, cols, vals = [], [], []
    kernel = _NEIGHBOURS.numpy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            wt = float(kernel[dy + 1, dx + 1])
            if wt == 0:
                continue
            rr, qq = r + dy, q + dx
            ok = (rr >= 0) & (rr < h) & (qq >= 0) & (qq < w)
            nb = rr[ok] * w + qq[ok]
            at = np.flatnonzero(ok)
            diag[at] += wt
            inner = gone[nb]
            rows.append(at[inner])
            cols.append(var[nb[inner]])
            vals.append(np.full(int(inner.sum()), -wt))
            np.add.at(rhs, at[~inner], wt * flat[:, nb[~inner]].T)
    n_var = len(idx)
    rows = np.concatenate([np.arange(n_var), *rows])
    cols = np.concatenate([np.arange(n_var), *cols])
    vals = np.concatenate([diag, *vals])
    a = coo_matrix((vals, (rows, cols)), shape=(n_var, n_var)).tocsc()
    sol = spsolve(a, rhs)
    out[:, idx] = np.asarray(sol).reshape(n_var, c).T
    return torch.from_numpy(out.reshape(c, h, w))


def road(
    subject: Subject,
    images,
    maps,
    targets=None,
    *,
    percentiles: Sequence[float] = (10, 20, 30, 40, 50, 60, 70, 80, 90),
    order: str = "morf",
    noise: float = 0.01,
    softmax: bool = True,
    curve: bool = False,
    batch: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """ROAD, RemOve And Debias (Rong et al. 2022): remove the pixels whose map value is at or
    above the map's ``p``-th percentile ("morf"; "lerf": at or below the ``100 - p``-th), fill
    them by :func:`noisy_linear_imputation`, and take the change of the target's score (after
    minus before) for every ``p``. Returns (B, P) with ``curve``, else the mean over the
    percentiles (pytorch-grad-cam's ROADMostRelevantFirstAverage / ...LeastRelevantFirstAverage;
    lower is better for morf, higher for lerf)."""
    x = _images(subject, images)
    m = _maps(maps, x)
    cls = _classes(subject, x, targets)
    b, _, h, w = x.shape
    if order not in ("morf", "lerf"):
        raise UserInputError(f"order {order!r}: use morf or lerf")
    mm = m if order == "morf" else 1 - m
    q = torch.tensor([float(p) / 100 for p in percentiles], dtype=torch.float64, device=x.device)
    thr = torch.quantile(mm.flatten(1), q, dim=1).T  # (B, P), numpy's "linear" percentile
    removed = mm[:, None] >= thr[:, :, None, None]  # (B, P, H, W)
    n_p = len(q)
    g = _generator(seed, "cpu")
    y0 = _model_scores(subject, x, cls, softmax, batch)
    flat_removed = removed.reshape(b * n_p, h, w)
    xs = x.repeat_interleave(n_p, 0)
    chunk = batch or 256  # the noise is drawn per chunk: chunks independent of the model's batch
    imputed = torch.cat(
        [
            noisy_linear_imputation(xs[s : s + chunk], flat_removed[s : s + chunk], noise, g)
            for s in range(0, b * n_p, chunk)
        ]
    )
    after = _model_scores(subject, imputed, cls.repeat_interleave(n_p), softmax, batch).view(b, n_p)
    out = after - y0[:, None]
    return (out if curve else out.mean(1)).cpu()


def _scaled(m: torch.Tensor) -> torch.Tensor:
    lo = m.flatten(1).amin(1).view(-1, 1, 1)
    hi = m.flatten(1).amax(1).view(-1, 1, 1)
    return (m - lo) / (1e-7 + (hi - lo))  # pytorch-grad-cam's scale_cam_image


def average_drop(
    subject: Subject,
    images,
    maps,
    targets=None,
    *,
    softmax: bool = True,
    batch: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Average drop (Chattopadhay et al. 2018), per image: ``max(0, Y - O) / Y`` where ``Y`` is
    the target's score on the image and ``O`` on the image multiplied by the map scaled to
    [0, 1] (min-max), in the model's input space (lower is better). pytorch-grad-cam's
    DropInConfidence is ``max(0, Y - O)``, not divided by ``Y``."""
    x = _images(subject, images)
    m = _scaled(_maps(maps, x))
    cls = _classes(subject, x, targets)
    y = _model_scores(subject, x, cls, softmax, batch)
    o = _model_scores(subject, x * m[:, None].float(), cls, softmax, batch)
    return ((y - o).clamp_min(0) / y.abs().clamp_min(1e-12)).cpu()


def increase_in_confidence(
    subject: Subject,
    images,
    maps,
    targets=None,
    *,
    softmax: bool = True,
    batch: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Increase in confidence (Chattopadhay et al. 2018), per image: 1 where the target's
    score on the image multiplied by its min-max scaled map exceeds the score on the image,
    else 0 (averaged over images: the rate; higher is better)."""
    x = _images(subject, images)
    m = _scaled(_maps(maps, x))
    cls = _classes(subject, x, targets)
    y = _model_scores(subject, x, cls, softmax, batch)
    o = _model_scores(subject, x * m[:, None].float(), cls, softmax, batch)
    return (o > y).double().cpu()


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    den = (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)
    return (a * b).sum(-1) / den


def faithfulness_correlation(
    subject: Subject,
    images,
    maps,
    targets=None,
    *,
    runs: int = 100,
    subset: int = 224,
    baseline="black",
    softmax: bool = False,
    subsets: torch.Tensor | None = None,
    batch: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Faithfulness correlation (Bhatt et al. 2020): Pearson correlation, over ``runs`` random
    subsets of ``subset`` input features (channel-pixels of the (3, H, W) input, the map
    counting once per channel), between the map's sum over the subset and the drop of the
    target's score (logit unless ``softmax``) when the subset is set to ``baseline`` (higher is
    better). ``subsets`` (B, runs, subset) of flat feature indices replaces the seeded draws
    (to replay another tool's)."""
    x = _images(subject, images)
    m = _maps(maps, x)
    cls = _classes(subject, x, targets)
    b, c, h, w = x.shape
    nf = c * h * w
    if subsets is None:  # uniform subsets without replacement: the top-k of random keys
        g = _generator(seed, "cpu")
        subsets = torch.stack(
            [torch.rand(runs, nf, generator=g).topk(subset, dim=1).indices for _ in range(b)]
        )
    subsets = torch.as_tensor(subsets, dtype=torch.long).to(x.device)
    runs = subsets.shape[1]
    a_flat = m[:, None].expand(b, c, h, w).reshape(b, nf)
    att = torch.gather(a_flat[:, None].expand(b, runs, nf), 2, subsets).sum(-1)  # (B, runs)
    base = _baseline(x, baseline)
    y0 = _model_scores(subject, x, cls, softmax, batch)

    def hit(i, j):
        out = torch.zeros(len(i), nf, dtype=torch.bool, device=x.device)
        return out.scatter_(1, subsets[i, j], True).view(-1, c, h, w)

    after, _ = _sweep(subject, x, cls, base, runs, hit, softmax, batch)
    drops = y0[:, None] - after
    return _pearson(att, drops).cpu()


def infidelity(
    subject: Subject,
    images,
    maps,
    targets=None,
    *,
    patch_sizes: Sequence[int] = (4,),
    baseline="black",
    softmax: bool = False,
    batch: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Infidelity (Yeh et al. 2019) as Quantus computes it: the ``patch`` x ``patch`` grid
    cells are set to ``baseline`` cumulatively in raster order; for each step ``k`` the drop of
    the target's score (logit unless ``softmax``) is compared with the map's prediction of it,
    ``sum(map * (x - x_k))`` over channels and pixels; the mean squared difference over the
    steps, averaged over ``patch_sizes`` (lower is better). H and W must be multiples of each
    patch size."""
    x = _images(subject, images)
    m = _maps(maps, x)
    cls = _classes(subject, x, targets)
    b, c, h, w = x.shape
    base = _baseline(x, baseline)
    y0 = _model_scores(subject, x, cls, softmax, batch)
    result = torch.zeros(b, dtype=torch.float64, device=x.device)
    for p in patch_sizes:
        if h % p or w % p:
            raise UserInputError(f"infidelity: patch size {p} does not divide the input size {h}x{w}")
        ids, gh, gw = _patch_ids(h, w, p, x.device)
        n = gh * gw
        grid = ids.view(1, 1, h, w)
        after, pred = _sweep(
            subject,
            x,
            cls,
            base,
            n,
            lambda i, j, grid=grid: grid <= j.view(-1, 1, 1, 1),
            softmax,
            batch,
            extra=lambda i, xp: ((x[i] - xp).double() * m[i][:, None]).flatten(1).sum(1),
        )
        result += ((y0[:, None] - after - pred) ** 2).mean(1)
    return (result / len(patch_sizes)).cpu()


# ---------------------------------------------------------------------------------------------
# robustness and randomisation: re-explain


def max_sensitivity(
    subject: Subject,
    images,
    maps,
    targets=None,
    *,
    method: str | Callable | None = None,
    options: dict | None = None,
    samples: int = 200,
    radius: float = 0.2,
    noise: torch.Tensor | None = None,
    batch: int = 64,
    explain_batch: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Max-sensitivity (Yeh et al. 2019): the largest relative change ``||a' - a|| / ||a||``
    (Frobenius) of the map when ``method`` (a name with ``options``, taken from ``maps`` when it
    is an AttributionMap, or a callable ``(subject, x, classes) -> maps``) re-explains the
    images with uniform noise in [-radius, radius] added to every input value, over ``samples``
    draws (lower is better). ``noise`` (samples, B, 3, H, W) replaces the seeded draws.
    The noise is drawn ``batch`` copies at a time (which fixes the seeded draws) and the noisy
    copies are explained ``explain_batch`` at a time (None: :func:`auto_batch`)."""
    run = _explain_fn(subject, method, options, maps)
    x = _images(subject, images)
    m = _maps(maps, x)
    cls = _classes(subject, x, targets)
    b = len(x)
    given = noise is not None
    n_samples = len(noise) if given else samples
    g = _generator(seed, "cpu")
    per = max(1, batch // b)  # samples per model batch: the noise is drawn chunk by chunk
    norm = m.view(1, b, -1).norm(dim=-1).clamp_min(1e-300)
    worst = torch.zeros(b, dtype=torch.float64, device=x.device)
    for s in range(0, n_samples, per):
        k = min(per, n_samples - s)
        if given:
            eps = torch.as_tensor(noise[s : s + k]).to(x.device, torch.float64)
        else:
            eps = ((torch.rand((k, *x.shape), generator=g, dtype=torch.float64) * 2 - 1) * radius).to(
                x.device
            )
        xs = (x[None].double() + eps).float().reshape(-1, *x.shape[1:])  # sample-major
        cs, eb = cls.repeat(k), auto_batch(subject, xs, explain_batch)
        a = torch.cat([run(subject, xs[e : e + eb], cs[e : e + eb]) for e in range(0, len(xs), eb)])
        diff = (a.view(k, b, -1) - m.view(1, b, -1)).norm(dim=-1) / norm
        worst = torch.maximum(worst, diff.amax(0))
    return worst.cpu()
    return (diff / m.view(1, b, -1).norm(dim=-1).clamp_min(1e-300)).amax(0).cpu()


def _ranks(a: torch.Tensor) -> torch.Tensor:
    """Ranks along the last axis, ties given their average rank (as scipy's rankdata)."""
    srt, idx = torch.sort(a, dim=-1, stable=True)
    n = a.shape[-1]
    pos = torch.arange(n, dtype=torch.float64, device=a.device).expand_as(srt)
    new = torch.ones_like(srt, dtype=torch.bool)
    new[..., 1:] = srt[..., 1:] != srt[..., :-1]
    group = new.long().cumsum(-1) - 1
    total = torch.zeros_like(pos).scatter_add_(-1, group, pos)
    count = torch.zeros_like(pos).scatter_add_(-1, group, torch.ones_like(pos))
    avg = (total / count.clamp_min(1)).gather(-1, group)
    return torch.empty_like(avg).scatter_(-1, idx, avg)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of ``a`` and ``b`` (B, ...) per row, ties averaged."""
    return _pearson(_ranks(a.flatten(1).double()), _ranks(b.flatten(1).double()))


def ssim(a: torch.Tensor, b: torch.Tensor, win: int = 7) -> torch.Tensor:
    """Structural similarity of maps ``a`` and ``b`` (B, H, W) per image, as scikit-image's
    ``structural_similarity`` with its defaults (uniform ``win`` x ``win`` window, sample
    covariance, K1 = 0.01, K2 = 0.03, mean over the valid region) and Quantus' data range
    (the span of both maps' values together)."""
    a, b = a.double()[:, None], b.double()[:, None]
    rng = torch.maximum(a.flatten(1).amax(1), b.flatten(1).amax(1)) - torch.minimum(
        a.flatten(1).amin(1), b.flatten(1).amin(1)
    )
    c1 = ((0.01 * rng) ** 2).view(-1, 1, 1, 1)
    c2 = ((0.03 * rng) ** 2).view(-1, 1, 1, 1)
    cov = win * win / (win * win - 1)

    def mean(t):
        return F.avg_pool2d(t, win, stride=1)

    ux, uy = mean(a), mean(b)
    vx = cov * (mean(a * a) - ux * ux)
    vy = cov * (mean(b * b) - uy * uy)
    vxy = cov * (mean(a * b) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def randomisation_layers(subject: Subject, order: str = "top_down") -> list[str]:
    """The modules :func:`model_randomisation` re-initialises, in its order: every module with
    ``reset_parameters`` in registration order, reversed for "top_down" (Quantus' rule)."""
    names = [n for n, mod in subject.model.named_modules() if hasattr(mod, "reset_parameters")]
    return names[::-1] if order == "top_down" else names


def model_randomisation(
    subject: Subject,
    images,
    maps,
    targets=None,
    *,
    method: str | Callable | None = None,
    options: dict | None = None,
    order: str = "top_down",
    layers: int | Sequence[str] | None = None,
    similarity: str = "spearman",
    abs: bool = True,
    normalise: bool = True,
    reduce: str = "mean",
    seed: int = 42,
    batch: int = 64,
) -> torch.Tensor:
    """Model parameter randomisation test (Adebayo et al. 2018) with Quantus' MPRT rules: the
    modules of :func:`randomisation_layers` are re-initialised one more at a time ("top_down",
    cascading) or each alone ("independent"), with ``torch.manual_seed(seed + 1)`` before each
    ``reset_parameters``; after each, ``method`` (a name with ``options``, or a callable
    ``(subject, x, classes) -> maps``) re-explains the images and the similarity
    ("spearman" rank correlation or "ssim") to ``maps`` (both made ``abs`` and divided by their
    largest |value| with ``normalise``) is taken. Returns (B, L) with ``reduce="none"``, else
    the mean over layers per image ("mean") or the last layer's ("last"); lower means the map
    depends on the model, as it should. The global torch RNG is restored afterwards.
    ``layers`` limits the test (each re-initialisation costs one re-explanation): None, all
    of them (Quantus'); an int k, the first k of the order; or a list of module names (taken
    in the order's order)."""
    order_names = randomisation_layers(subject, order)
    if layers is not None:
        if isinstance(layers, int) and not isinstance(layers, bool):
            if layers < 1:
                raise UserInputError(f"layers must be >= 1, a list of module names or None, not {layers}")
            order_names = order_names[:layers]
        else:
            wanted = [layers] if isinstance(layers, str) else list(layers)
            if not wanted:
                raise UserInputError("layers is empty: give module names, an int k >= 1 or None (all)")
            for name in wanted:
                if name not in order_names:
                    from convscope.errors import NameNotFoundError

                    raise NameNotFoundError(name, order_names, what="module with parameters to randomise")
            order_names = [n for n in order_names if n in set(wanted)]
    run = _explain_fn(subject, method, options, maps)
    x = _images(subject, images)
    m = _norm_abs(_maps(maps, x), abs, normalise)
    cls = _classes(subject, x, targets)
    sim = {"spearman": spearman, "ssim": ssim}.get(similarity)
    if sim is None:
        raise UserInputError(f"similarity {similarity!r}: use spearman or ssim")
    if order not in ("top_down", "independent"):
        raise UserInputError(f"order {order!r}: use top_down or independent")
    model = copy.deepcopy(subject.model)
    original = copy.deepcopy(model.state_dict())
    modules = dict(model.named_modules())
    shadow = Subject(
        model, subject.preprocess, subject.labels, subject.name, subject.token_layout, subject.transform
    )
    shadow.layers = subject.layers
    scores = []
    with torch.random.fork_rng(devices=[]):
        for name in order_names:
            if order == "independent":
                model.load_state_dict(original)
            torch.manual_seed(seed + 1)
            modules[name].reset_parameters()
            a = torch.cat(
                [run(shadow, x[s : s + batch], cls[s : s + batch]) for s in range(0, len(x), batch)]
            )
            scores.append(sim(m, _norm_abs(a, abs, normalise)))
    out = torch.stack(scores, 1)
    if reduce == "mean":
        out = out.mean(1)
    elif reduce == "last":
        out = out[:, -1]
    elif reduce != "none":
        raise UserInputError(f"reduce {reduce!r}: use mean, last or none")
    return out.cpu()


# ---------------------------------------------------------------------------------------------
# localisation: where boxes or masks are given


def _regions(masks, boxes, x: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    if masks is not None:
        s = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks)
        if s.dim() == 4:
            s = s[:, 0]
        if s.shape != (b, h, w):
            raise UserInputError(f"expected masks {(b, h, w)}, got {tuple(s.shape)}")
        return s.to(x.device).bool()
    if boxes is None:
        raise UserInputError("a localisation metric needs masks= (B, H, W) or boxes= (B, 4) x0, y0, x1, y1")
    bx = torch.as_tensor(boxes, dtype=torch.float64, device=x.device).view(b, 4)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    x0, y0, x1, y1 = (bx[:, i].view(b, 1, 1) for i in range(4))
    return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)


def pointing_game(
    subject: Subject, images, maps, targets=None, *, masks=None, boxes=None, seed: int = 0
) -> torch.Tensor:
    """Pointing game (Zhang et al. 2018): 1 where a pixel of the map's maximum (any of them,
    on ties) lies inside the object's mask or box (pixel box ``x0, y0, x1, y1``, end exclusive),
    else 0; NaN for an empty mask (higher is better)."""
    x = _images(subject, images)
    m = _maps(maps, x).flatten(1)
    s = _regions(masks, boxes, x).flatten(1)
    hit = ((m == m.amax(1, keepdim=True)) & s).any(1).double()
    hit[s.sum(1) == 0] = float("nan")
    return hit.cpu()


def attribution_localisation(
    subject: Subject, images, maps, targets=None, *, masks=None, boxes=None, abs: bool = True, seed: int = 0
) -> torch.Tensor:
    """Attribution localisation (Kohlbrenner et al. 2020): the share of the map's (positive
    part's, or with ``abs`` its absolute) total that falls inside the mask or box (higher is
    better); NaN for an empty mask."""
    x = _images(subject, images)
    m = _maps(maps, x).flatten(1)
    m = m.abs() if abs else m.clamp_min(0)
    s = _regions(masks, boxes, x).flatten(1)
    out = (m * s).sum(1) / (m.sum(1) + 1e-9)
    out[s.sum(1) == 0] = float("nan")
    return out.cpu()


METRICS: dict[str, Callable[..., torch.Tensor]] = {
    "pixel_flipping": pixel_flipping,
    "region_perturbation": region_perturbation,
    "road": road,
    "average_drop": average_drop,
    "increase_in_confidence": increase_in_confidence,
    "faithfulness_correlation": faithfulness_correlation,
    "infidelity": infidelity,
    "max_sensitivity": max_sensitivity,
    "model_randomisation": model_randomisation,
    "pointing_game": pointing_game,
    "attribution_localisation": attribution_localisation,
}

HIGHER_IS_BETTER: dict[str, bool] = {
    "pixel_flipping": False,
    "region_perturbation": True,
    "road": False,
    "average_drop": False,
    "increase_in_confidence": True,
    "faithfulness_correlation": True,
    "infidelity": False,
    "max_sensitivity": False,
    "model_randomisation": False,
    "pointing_game": True,
    "attribution_localisation": True,
}


def higher_is_better(name: str, options: dict | None = None) -> bool:
    """Which way metric ``name`` points with its ``options``: the direction of
    :data:`HIGHER_IS_BETTER`, except where ``order`` flips it (ROAD with "lerf": removing the
    least relevant pixels should change the score little, so higher; region perturbation with
    "lerf": the drop should stay small, so lower)."""
    order = dict(options or {}).get("order")
    if name == "road" and order is not None:
        return order == "lerf"
    if name == "region_perturbation" and order is not None:
        return order != "lerf"
    return bool(HIGHER_IS_BETTER.get(name, True))


NEEDS_METHOD = frozenset({"max_sensitivity", "model_randomisation"})
NEEDS_REGIONS = frozenset({"pointing_game", "attribution_localisation"})


def metric_names() -> list[str]:
    """Every metric in :data:`METRICS`."""
    return sorted(METRICS)


def get_metric(name: str) -> Callable[..., torch.Tensor]:
    """The metric function called ``name`` (a one-line error with close matches otherwise)."""
    if name not in METRICS:
        from convscope.errors import NameNotFoundError

        raise NameNotFoundError(name, list(METRICS), what="metric")
    return METRICS[name]


# The enumerated options of each metric (the values its own checks accept).
_CHOICES = {
    ("region_perturbation", "order"): ("morf", "lerf", "random"),
    ("road", "order"): ("morf", "lerf"),
    ("model_randomisation", "order"): ("top_down", "independent"),
    ("model_randomisation", "similarity"): ("spearman", "ssim"),
    ("model_randomisation", "reduce"): ("mean", "last", "none"),
}
_COUNTS = ("patch", "regions", "runs", "subset", "samples")  # ints >= 1
_OPTIONAL_COUNTS = ("step", "batch", "explain_batch")  # None or an int >= 1
_FLAGS = ("softmax", "curve", "abs", "normalise")


def check_metric_options(name: str, options: dict | None) -> None:
    """Refuse, in one line, a value metric ``name`` would refuse (or misread) only once it runs:
    an enumerated option outside its choices (``order``, ``similarity``, ``reduce``), a baseline
    name other than black/white/mean, a count below 1, a flag that is not a bool, an empty or
    invalid ``layers``/``percentiles``/``patch_sizes``, a negative ``radius``/``noise``. Names of
    modules in ``layers`` are checked by the metric itself (it needs the model)."""
    get_metric(name)
    for key, value in dict(options or {}).items():
        what = f"metric {name}: {key}"
        choices = _CHOICES.get((name, key))
        if choices is not None:
            if value not in choices:
                raise UserInputError(f"{what} {value!r}: use {', '.join(choices)}")
        elif key == "baseline":
            if isinstance(value, str) and value not in ("black", "white", "mean"):
                raise UserInputError(f"{what} {value!r}: use black, white, mean, a number or a tensor")
            if isinstance(value, bool) or not isinstance(value, (str, int, float, torch.Tensor, np.ndarray)):
                raise UserInputError(f"{what} {value!r}: use black, white, mean, a number or a tensor")
        elif key in _COUNTS or (key in _OPTIONAL_COUNTS and value is not None):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise UserInputError(f"{what} must be an int >= 1, not {value!r}")
        elif key in _FLAGS:
            if not isinstance(value, (bool, np.bool_)):
                raise UserInputError(f"{what} must be True or False, not {value!r}")
        elif key in ("radius", "noise") and not isinstance(value, torch.Tensor):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise UserInputError(f"{what} must be a number >= 0, not {value!r}")
        elif key == "layers" and value is not None:
            if isinstance(value, bool) or (isinstance(value, int) and value < 1):
                raise UserInputError(f"{what} must be >= 1, a list of module names or None, not {value!r}")
            if not isinstance(value, int):
                names = [value] if isinstance(value, str) else list(value)
                if not names or not all(isinstance(n, str) and n for n in names):
                    raise UserInputError(
                        f"{what} must be module names, an int k >= 1 or None (all), not {value!r}"
                    )
        elif key == "percentiles":
            ps = [value] if isinstance(value, (int, float)) else list(value)
            ok = all(isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p <= 100 for p in ps)
            if not ps or not ok:
                raise UserInputError(f"{what} must be numbers from 0 to 100, not {value!r}")
        elif key == "patch_sizes":
            ps = [value] if isinstance(value, int) else list(value)
            if not ps or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 1 for p in ps):
                raise UserInputError(f"{what} must be ints >= 1, not {value!r}")


__all__ = [
    "HIGHER_IS_BETTER",
    "METRICS",
    "NEEDS_METHOD",
    "NEEDS_REGIONS",
    "attribution_localisation",
    "auto_batch",
    "average_drop",
    "check_metric_options",
    "faithfulness_correlation",
    "get_metric",
    "higher_is_better",
    "increase_in_confidence",
    "infidelity",
    "max_sensitivity",
    "metric_names",
    "model_randomisation",
    "noisy_linear_imputation",
    "pixel_flipping",
    "pointing_game",
    "randomisation_layers",
    "region_perturbation",
    "road",
    "spearman",
    "ssim",
]
