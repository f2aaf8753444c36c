"""The optimisation loop shared by every synthesis method (and adversarial examples later)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from convscope.accel import Accel, prepared
from convscope.errors import UserInputError
from convscope.recorder import Recorder
from convscope.results import Result
from convscope.subject import Subject
from convscope.synthesis.maco import crops as maco_crops
from convscope.synthesis.objectives import Context, Objective
from convscope.synthesis.param import make_param
from convscope.synthesis.transforms import Transform, at_size, standard

Progress = Callable[[int, int], None]


@dataclass
class Synthesis(Result):
    """Optimised images (N, H, W, 3) in [0, 1], the objective's final score for each (on the
    untransformed image; MaCo: the mean over a fixed draw of its crops), the mean score per
    step, frames (K, N, H, W, 3) if asked, and for MaCo the transparency (N, H, W): the sum over
    steps of |d objective / d image|, averaged over the colour channels."""

    images: np.ndarray
    scores: np.ndarray
    history: np.ndarray
    labels: list[str]
    frames: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    transparency: np.ndarray | None = None

    def to_image(self, ncols: int | None = None, cell: int | None = None):
        """The images in a grid, each captioned with its label and final score; with a
        transparency map, each image is followed by itself seen through it (on white)."""
        from convscope.render.grid import image_grid

        caps = [f"{lab} {s:.3g}" for lab, s in zip(self.labels, self.scores)]
        if self.transparency is None:
            return image_grid(list(self.images), ncols=ncols, cell=cell, pad=3, captions=caps)
        from convscope.synthesis.maco import transparency_picture

        cells, twin = [], []
        for img, alpha, cap in zip(self.images, self.transparency, caps):
            cells += [img, transparency_picture(img, alpha)]
            twin += [cap, "transparency"]
        cols = 2 * (ncols or min(4, len(self.images)))
        return image_grid(cells, ncols=cols, cell=cell, pad=3, captions=twin)

    def headline(self) -> str:
        steps = self.info.get("steps", len(self.history))
        return f"{len(self.images)} image(s) of {', '.join(dict.fromkeys(self.labels))} after {steps} steps"


def evaluate(
    subject: Subject,
    objective: Objective,
    images: torch.Tensor,
    transform: Transform | None = None,
    gen: torch.Generator | None = None,
    grad: bool = False,
    accel: Accel | None = None,
) -> torch.Tensor:
    """Objective scores (N,) of images (N, 3, H, W) in [0, 1], optionally transformed first
    (for a fixed-size model, see :func:`model_transform`, resized to its input size)."""
    layers = list(objective.layers)
    stop = bool(layers) and not objective.needs_output
    transform = model_transform(subject, transform)
    x = transform(images, gen) if transform is not None else images
    accel = Accel.of(accel, subject)
    device = subject.device
    x = accel.inputs(subject.preprocess.normalize(x), device)
    ctx_grad = torch.enable_grad() if grad else torch.no_grad()
    with ctx_grad, prepared(subject.model, accel, device), accel.autocast(device):
        if layers:
            with Recorder(subject, layers, detach=not grad, stop=stop) as rec:
                out = subject(x)
                return _score(objective, rec.__getitem__, out, images, x.shape[0] // images.shape[0])
        return _score(objective, None, subject(x), images, x.shape[0] // images.shape[0])


def _score(objective: Objective, acts, out, image: torch.Tensor, k: int) -> torch.Tensor:
    """Scores (N,) where the transform made ``k`` views per image (MaCo's crops, image i's at
    rows i * k ... i * k + k - 1): the objective's mean over the views."""
    if k == 1:
        return objective(Context(acts, out, image)).float()
    total = 0.0
    for j in range(k):
        view = (lambda name, j=j: acts(name)[j::k]) if acts is not None else None
        o = out[j::k] if isinstance(out, torch.Tensor) else out
        total = total + objective(Context(view, o, image)).float()
    return total / k


def model_transform(subject: Subject, transform: Transform | None) -> Transform | None:
    """``transform`` as the model must see it: unchanged where the model takes any size;
    for a model that runs only at its input size (``subject.fixed_input_size``), wrapped by
    :func:`~convscope.synthesis.transforms.at_size` so that every image reaching it has exactly
    ``subject.input_size``. Read before any Recorder is on: the size probe is a forward pass."""
    if not subject.fixed_input_size:
        return transform
    if getattr(transform, "out_size", None) == tuple(subject.input_size):
        return transform  # MaCo's crops: already exactly the input size, from the whole canvas
    return at_size(subject.input_size, transform)


def optimize(
    subject: Subject,
    objective: Objective,
    *,
    batch: int = 1,
    size: int | tuple[int, int] | None = None,
    param: str = "fft",
    decorrelate: bool = True,
    steps: int = 256,
    lr: float | None = None,
    transform: Transform | None = None,
    seed: int = 0,
    frames: Sequence[int] = (),
    labels: Sequence[str] | None = None,
    init=None,
    optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer] | None = None,
    project: Callable[[], None] | None = None,
    final_scores: bool = True,
    accel: Accel | None = None,
    progress: Progress | None = None,
) -> Synthesis:
    """Optimise ``batch`` images for ``objective`` (maximised) with Adam.

    ``size`` is the canvas (H, W) in px (default 128, or the input size of a model that runs
    only at its input size; such a model sees the canvas resized to its input size, and every
    augmented image centre-cropped or padded back to it: see :func:`model_transform`).
    ``param`` is ``"fft"`` (default), ``"pixel"`` or ``"maco"`` (:mod:`convscope.synthesis.maco`:
    phase only, natural-image magnitude; its defaults: canvas 512 px, NAdam with lr 1.0, 6 crops
    per step at the model's input size as its transform, and the transparency map; each image's
    start is seeded by ``seed`` and its label, so a unit's image does not depend on its batch).
    ``lr`` defaults to 0.05 (1.0 for MaCo); ``transform`` defaults to the standard
    jitter/scale/rotate set (``transforms.none()`` for none); ``frames`` lists the steps whose
    images are kept; ``init`` is ``(params, image_fn)`` from :mod:`convscope.synthesis.param`
    to start elsewhere; ``optimizer`` builds the optimiser from the parameters (default Adam
    with ``lr``; adversarial attacks pass sign-gradient steps); ``project`` runs after every
    step (e.g. back onto an epsilon-ball); ``final_scores=False`` skips scoring the final
    images (one forward pass; ``scores`` is then NaN). ``accel``: precision and memory layout
    of the forward and backward passes (:mod:`convscope.accel`; bf16 is safe for gradients,
    fp16 may underflow them). Model weights are never changed and get no gradients.
    """
    if steps < 1 or batch < 1:
        raise UserInputError("steps and batch must be >= 1")
    fixed = subject.fixed_input_size  # before the Recorder below: its probe is a forward pass
    maco = param == "maco"
    if size is None:
        size = 512 if maco else subject.input_size if fixed else 128
    h, w = (size, size) if isinstance(size, int) else size
    gen = torch.Generator().manual_seed(seed)
    device = subject.device
    if lr is None:
        lr = 1.0 if maco else 0.05
    if labels is not None and len(labels) != batch:
        raise UserInputError(f"{len(labels)} labels for a batch of {batch} images")
    if init is not None:
        params, image_fn = init
    elif maco:
        keys = list(labels) if labels is not None else [str(i) for i in range(batch)]
        params, image_fn = make_param(param, (batch, 3, h, w), device=device, keys=keys, seed=seed)
    else:
        shape = (batch, 3, h, w)
        params, image_fn = make_param(param, shape, generator=gen, device=device, decorrelate=decorrelate)
    if transform is None:
        transform = maco_crops(tuple(subject.input_size)) if maco else standard()
    transform = model_transform(subject, transform)
    if optimizer is not None:
        opt = optimizer(params)
    else:
        opt = torch.optim.NAdam(params, lr=lr) if maco else torch.optim.Adam(params, lr=lr)
    alpha = None
    layers = list(objective.layers)
    stop = bool(layers) and not objective.needs_output
    history, kept = [], []
    report = progress or (lambda done, total: None)
    accel = Accel.of(accel, subject)
    with (
        prepared(subject.model, accel, device),
        Recorder(subject, layers, detach=False, stop=stop) if layers else _nullrec() as rec,
    ):
        for step in range(steps):
            img = image_fn()
            x = accel.inputs(subject.preprocess.normalize(transform(img, gen)), device)
            with torch.enable_grad(), accel.autocast(device):
                out = subject(x)
                k = x.shape[0] // img.shape[0]
                score = _score(objective, rec.__getitem__ if layers else None, out, img, k)
                grads = torch.autograd.grad(-score.sum(), params + ([img] if maco else []))
            if maco:
                g = grads[-1].detach().abs().float().mean(dim=1)
                alpha = g if alpha is None else alpha + g
                grads = grads[:-1]
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
            if project is not None:
                with torch.no_grad():
                    project()
            history.append(float(score.detach().mean()))
            if step + 1 in frames:
                kept.append(image_fn().detach().permute(0, 2, 3, 1).cpu().numpy())
            report(step + 1, steps)
    final = image_fn().detach()
    if final_scores:
        # MaCo's canvas is larger than what the model saw: score it on a fixed draw of its crops
        fixed_draw = (transform, torch.Generator().manual_seed(seed)) if maco else (None, None)
        scores = evaluate(subject, objective, final, *fixed_draw, accel=accel)
    else:
        scores = torch.full((final.shape[0],), float("nan"))
    return Synthesis(
        images=final.permute(0, 2, 3, 1).cpu().numpy(),
        scores=scores.detach().cpu().numpy(),
        history=np.array(history),
        labels=list(labels) if labels is not None else [objective.name] * batch,
        frames=np.stack(kept) if kept else None,
        transparency=alpha.cpu().numpy() if alpha is not None else None,
        info={
            "steps": steps,
            "param": param,
            "size": (h, w),
            "lr": lr,
            "seed": seed,
            "precision": accel.precision,
        },
    )


class _nullrec:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
