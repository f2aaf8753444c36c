"""Adversarial perturbations: FGSM, PGD (L-infinity and L2, targeted or not, optional random
start) and Szegedy et al.'s box-constrained minimal perturbation. All run on the synthesis
engine (:func:`convscope.synthesis.optimize`) with an identity pixel parametrisation; they work in
[0, 1] pixel space, before the model's normalisation, so epsilons are in pixel units
(``2/255``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from convscope.adversarial.result import Adversarial, summarize
from convscope.errors import UserInputError
from convscope.subject import ImageLike, Subject
from convscope.synthesis import objectives as O
from convscope.synthesis.engine import optimize
from convscope.synthesis.objectives import Objective
from convscope.synthesis.transforms import none


class PixelModel(torch.nn.Module):
    """The subject's model behind its normalisation: takes [0, 1] pixels, as attack libraries
    (torchattacks) and Lucent expect."""

    def __init__(self, subject: Subject):
        super().__init__()
        self.net = subject.model
        self.pre = subject.preprocess

    def forward(self, x):
        return self.net(self.pre.normalize(x))


class SignStep(torch.optim.Optimizer):
    """p <- p - lr * sign(grad) (L-infinity steepest descent), or with ``norm="l2"``
    p <- p - lr * grad / ||grad|| per image."""

    def __init__(self, params, lr: float, norm: str = "linf"):
        super().__init__(params, {"lr": lr, "norm": norm})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                # An explicit product, not add_(alpha=...), whose fused multiply-add rounds
                # differently: results stay bit-identical to the reference implementations.
                if group["norm"] == "linf":
                    p.sub_(group["lr"] * g.sign())
                else:
                    n = g.flatten(1).norm(dim=1).view(-1, *[1] * (g.dim() - 1)) + 1e-10
                    p.sub_(group["lr"] * (g / n))


def _pixels(subject: Subject, images) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images.to(subject.device).float()
    return subject.load_pixels(images if isinstance(images, (list, tuple)) else [images])


def _labels(subject: Subject, x: torch.Tensor, labels) -> list[int]:
    if labels is not None:
        return [int(v) for v in labels]
    with torch.no_grad():
        out = subject.model(subject.preprocess.normalize(x))
    return out.argmax(-1).tolist()


def pgd(
    subject: Subject,
    images: ImageLike | Sequence[ImageLike] | torch.Tensor,
    *,
    eps: float = 2 / 255,
    alpha: float | None = None,
    steps: int = 10,
    norm: str = "linf",
    target: int | str | Sequence[int | str] | None = None,
    labels: Sequence[int] | None = None,
    random_start: bool = False,
    seed: int = 0,
) -> Adversarial:
    """Projected gradient descent (Madry et al. 2018). Untargeted: increase the cross-entropy of
    ``labels`` (default: the model's own predictions); targeted: decrease that of ``target``.
    ``alpha`` defaults to eps / 4 (L-infinity: the torchattacks default is 2/255 for any eps).
    Images are [0, 1] tensors (N, 3, H, W) or anything :meth:`Subject.load_images` takes."""
    if norm not in ("linf", "l2"):
        raise UserInputError("norm must be 'linf' or 'l2'")
    if eps <= 0 or steps < 1:
        raise UserInputError("eps must be > 0 and steps >= 1")
    x0 = _pixels(subject, images)
    n = x0.shape[0]
    alpha = eps / 4 if alpha is None else alpha
    tgt = _targets(subject, target, n)
    obj: Objective = (
        -O.cross_entropy(tgt) if tgt is not None else O.cross_entropy(_labels(subject, x0, labels))
    )
    adv = x0.clone()
    if random_start:
        gen = torch.Generator(device=x0.device).manual_seed(seed)
        if norm == "linf":
            adv = adv + (torch.rand(x0.shape, generator=gen, device=x0.device) * 2 - 1) * eps
        else:
            d = torch.randn(x0.shape, generator=gen, device=x0.device)
            d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            r = torch.rand(n, 1, 1, 1, generator=gen, device=x0.device)
            adv = adv + d * r * eps
        adv = adv.clamp(0, 1)
    adv.requires_grad_(True)

    def project() -> None:
        delta = adv - x0
        if norm == "linf":
            delta = delta.clamp(-eps, eps)
        else:
            dn = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            delta = delta * torch.clamp(eps / dn, max=1.0).view(-1, 1, 1, 1)
        adv.copy_((x0 + delta).clamp(0, 1))

    optimize(
        subject,
        obj,
        batch=n,
        size=tuple(x0.shape[2:]),
        steps=steps,
        transform=none(),
        init=([adv], lambda: adv),
        optimizer=lambda p: SignStep(p, alpha, norm),
        project=project,
        seed=seed,
        final_scores=False,
    )
    name = f"pgd-{norm}" if steps > 1 or random_start else "fgsm"
    return summarize(name, subject, x0, adv.detach(), tgt)


def fgsm(
    subject: Subject,
    images,
    *,
    eps: float = 2 / 255,
    target: int | str | Sequence[int | str] | None = None,
    labels: Sequence[int] | None = None,
) -> Adversarial:
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size eps."""
    return pgd(subject, images, eps=eps, alpha=eps, steps=1, target=target, labels=labels)


def minimal(
    subject: Subject,
    image,
    target: int,
    *,
    lambdas: Sequence[float] | None = None,
    steps: int = 100,
    lr: float = 0.01,
    seed: int = 0,
) -> Adversarial:
    """Szegedy et al. (2014): the smallest box-constrained r with f(x + r) = target, by
    maximising log p_target(x + r) - lambda * mean(r^2) for a range of lambda at once (one image
    per lambda in one batch) and keeping the success with the largest lambda (smallest r)."""
    x0 = _pixels(subject, image)[:1]
    lambdas = list(lambdas) if lambdas is not None else [10.0**k for k in range(1, 9)]
    n = len(lambdas)
    tgt = _targets(subject, target, n)
    lam = torch.tensor(lambdas, device=x0.device)
    r = torch.zeros((n, *x0.shape[1:]), device=x0.device, requires_grad=True)

    def image_fn():
        return (x0 + r).clamp(0, 1)

    size_pen = Objective(lambda c: lam * (c.image - x0).pow(2).mean(dim=(1, 2, 3)), name="lam*|r|^2")
    obj = O.class_log_prob(tgt) - size_pen
    syn = optimize(
        subject,
        obj,
        batch=n,
        size=tuple(x0.shape[2:]),
        steps=steps,
        lr=lr,
        transform=none(),
        init=([r], image_fn),
        seed=seed,
    )
    adv = torch.as_tensor(syn.images).permute(0, 3, 1, 2).to(x0.device)
    with torch.no_grad():
        pred = subject.model(subject.preprocess.normalize(adv)).argmax(-1).tolist()
    ok = [i for i, p in enumerate(pred) if p == tgt[i]]
    best = max(ok, key=lambda i: lambdas[i]) if ok else 0  # largest lambda that still succeeds
    res = summarize("szegedy", subject, x0, adv[best : best + 1], [tgt[best]])
    res.method = f"szegedy (lambda={lambdas[best]:g})"
    return res


def _targets(subject: Subject, target, n: int) -> list[int] | None:
    if target is None:
        return None
    single = isinstance(target, (int, str)) or not hasattr(target, "__len__")
    tgt = [subject.class_index(t) for t in ([target] * n if single else target)]  # names too
    if len(tgt) != n:
        raise UserInputError(f"{len(tgt)} targets for {n} images")
    return tgt
