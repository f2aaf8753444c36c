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
from convscope.synthesis.objectives import Context, Objective
from convscope.synthesis.param import make_param
from convscope.synthesis.transforms import Transform, at_size, standard

Progress = Callable[[int, int], None]


@dataclass
class Synthesis(Result):
    """Optimised images (N, H, W, 3) in [0, 1], the objective's final score for each (on the
    untransformed image), the mean score per step, and frames (K, N, H, W, 3) if asked."""

    images: np.ndarray
    scores: np.ndarray
    history: np.ndarray
    labels: list[str]
    frames: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def to_image(self, ncols: int | None = None, cell: int | None = None):
        """The images in a grid, each captioned with its label and final score."""
        from convscope.render.grid import image_grid

        caps = [f"{lab} {s:.3g}" for lab, s in zip(self.labels, self.scores)]
        return image_grid(list(self.images), ncols=ncols, cell=cell, pad=3, captions=caps)

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
            acts = rec.__getitem__
        else:
            out, acts = subject(x), None
        return objective(Context(acts, out, images)).float()


def model_transform(subject: Subject, transform: Transform | None) -> Transform | None:
    """``transform`` as the model must see it: unchanged where the model takes any size;
    for a model that runs only at its input size (``subject.fixed_input_size``), wrapped by
    :func:`~convscope.synthesis.transforms.at_size` so that every image reaching it has exactly
    ``subject.input_size``. Read before any Recorder is on: the size probe is a forward pass."""
    if not subject.fixed_input_size:
        return transform
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
    lr: float = 0.05,
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
    ``param`` is ``"fft"`` (default) or ``"pixel"``; ``transform`` defaults to the standard
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
    if size is None:
        size = subject.input_size if fixed else 128
    h, w = (size, size) if isinstance(size, int) else size
    gen = torch.Generator().manual_seed(seed)
    device = subject.device
    params, image_fn = (
        init
        if init is not None
        else make_param(param, (batch, 3, h, w), generator=gen, device=device, decorrelate=decorrelate)
    )
    transform = model_transform(subject, standard() if transform is None else transform)
    opt = optimizer(params) if optimizer is not None else torch.optim.Adam(params, lr=lr)
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
                score = objective(Context(rec.__getitem__ if layers else None, out, img)).float()
                grads = torch.autograd.grad(-score.sum(), params)
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
        scores = evaluate(subject, objective, final, accel=accel)
    else:
        scores = torch.full((final.shape[0],), float("nan"))
    return Synthesis(
        images=final.permute(0, 2, 3, 1).cpu().numpy(),
        scores=scores.detach().cpu().numpy(),
        history=np.array(history),
        labels=list(labels) if labels is not None else [objective.name] * batch,
        frames=np.stack(kept) if kept else None,
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
