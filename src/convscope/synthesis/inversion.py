"""Inverting a representation (Mahendran & Vedaldi 2015): the image whose features at a layer
match those of a given image, x* = argmin ||Phi(x) - Phi(x0)||^2 / ||Phi(x0)||^2 + lambda TV^beta(x)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

import convscope.synthesis.objectives as O
from convscope.recorder import Recorder
from convscope.results import Result
from convscope.subject import Subject
from convscope.synthesis.engine import optimize
from convscope.synthesis.objectives import Context, Objective
from convscope.synthesis.param import pixel_image
from convscope.synthesis.transforms import none


@dataclass
class Inversion(Result):
    """Best reconstruction per layer: ``images`` (L, H, W, 3), ``errors`` (L,) the normalised
    feature error ||Phi(x*) - Phi(x0)|| / ||Phi(x0)||, and every restart's error (L, R)."""

    layers: list[str]
    original: np.ndarray
    images: np.ndarray
    errors: np.ndarray
    restart_errors: np.ndarray

    def to_image(self):
        """The original, then the best reconstruction from each layer with its error."""
        from convscope.render.grid import image_grid

        caps = ["original"] + [f"{n} err {e:.3f}" for n, e in zip(self.layers, self.errors)]
        return image_grid(
            [self.original] + list(self.images), ncols=len(self.layers) + 1, pad=3, captions=caps
        )

    def headline(self) -> str:
        return "inversion from " + ", ".join(f"{n} (err {e:.3f})" for n, e in zip(self.layers, self.errors))


def invert(
    subject: Subject,
    image,
    layers: Sequence[str],
    *,
    restarts: int = 2,
    tv: float = 0.005,
    beta: float = 2.0,
    steps: int = 200,
    lr: float = 0.05,
    init_sd: float = 0.05,
    seed: int = 0,
    progress=None,
) -> Inversion:
    """Reconstruct ``image`` (path, PIL, array or a preprocessed (1, 3, H, W) batch) from each
    layer in ``layers``, ``restarts`` random starts each (near-grey noise, ``init_sd`` in
    sigmoid-logit units), all optimised together in one batch (layers x restarts images), pixel
    parametrisation, Adam. ``tv`` weighs the TV^beta prior against the normalised feature
    error."""
    x0 = image if isinstance(image, torch.Tensor) else subject.load_images([image])
    x0 = x0[:1].to(subject.device)
    infos = [subject.layer(n) for n in layers]
    names = [i.name for i in infos]
    with torch.no_grad(), Recorder(subject, names, stop=True) as rec:
        subject(x0)
    targets = {n: rec[n].detach() for n in names}
    n_layers = len(names)
    batch = n_layers * restarts
    # image b reconstructs layer b // restarts
    which = torch.arange(batch) // restarts

    def feature_error(c: Context) -> torch.Tensor:
        err = torch.zeros(c.image.shape[0], device=c.image.device)
        for li, n in enumerate(names):
            sel = (which == li).nonzero()[:, 0].to(c.image.device)
            a = c.act(n)[sel]
            t = targets[n]
            if a.shape[2:] != t.shape[2:]:  # jittered inputs: compare on the common area
                h, w = min(a.shape[2], t.shape[2]), min(a.shape[3], t.shape[3])
                a, t = a[:, :, :h, :w], t[:, :, :h, :w]
            d = (a - t).pow(2).flatten(1).sum(1) / t.pow(2).sum().clamp_min(1e-12)
            err = err.index_put((sel,), d)
        return err

    obj = -Objective(feature_error, names, name="feature error") - tv * O.total_variation(beta)
    h, w = x0.shape[2:]
    gen = torch.Generator().manual_seed(seed)
    init = pixel_image((batch, 3, h, w), sd=init_sd, decorrelate=False, generator=gen, device=subject.device)
    syn = optimize(
        subject,
        obj,
        batch=batch,
        size=(h, w),
        steps=steps,
        lr=lr,
        seed=seed,
        transform=none(),
        init=init,
        progress=progress,
    )
    imgs = torch.as_tensor(syn.images).permute(0, 3, 1, 2).to(subject.device)
    with torch.no_grad(), Recorder(subject, names, stop=True) as rec:
        subject(subject.preprocess.normalize(imgs))
    errs = np.zeros((n_layers, restarts))
    for li, n in enumerate(names):
        for r in range(restarts):
            b = li * restarts + r
            t = targets[n][0]
            errs[li, r] = float((rec[n][b] - t).norm() / t.norm().clamp_min(1e-12))
    best = errs.argmin(axis=1)
    original = subject.preprocess.denormalize(x0[0]).clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return Inversion(
        names,
        original,
        np.stack([syn.images[li * restarts + best[li]] for li in range(n_layers)]),
        errs[np.arange(n_layers), best],
        errs,
    )
