"""Fooling images (Nguyen et al. 2015): images that the model assigns to a class with high
confidence although no person would. Three generators:

- ``gradient``: gradient ascent on log p(class) from noise, pixel parametrisation, no priors
  (on the synthesis engine);
- ``evolve``: an evolutionary algorithm on a *direct encoding* (one gene per pixel and channel
  of a low-resolution image, upsampled to the model's size);
- ``cppn``: the same evolutionary algorithm on the weights of a compositional pattern-producing
  network, which paints regular patterns from pixel coordinates.

The evolutionary algorithm is a (mu + lambda) evolution strategy with elitism: each generation
the best ``elite`` genomes survive and the rest of the population are Gaussian mutations of
them (each gene mutated with probability ``rate``); fitness is the target's softmax
probability. The mutation size adapts (Rechenberg's success rule): it grows by 1.2 after a
generation that improved the best fitness and shrinks by 0.85 otherwise. Nguyen et al. used
MAP-Elites over all classes at once; one class at a time keeps a CPU budget small.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from convscope.errors import UserInputError
from convscope.results import Result
from convscope.subject import Subject
from convscope.synthesis import objectives as O
from convscope.synthesis.engine import optimize
from convscope.synthesis.param import pixel_image
from convscope.synthesis.transforms import none

Progress = Callable[[int, int], None]


@dataclass
class Fooling(Result):
    """Best image per run (N, H, W, 3), the target's probability for it, the model's top-1
    label and probability, and the best fitness per generation or step."""

    method: str
    target: int
    images: np.ndarray
    confidence: np.ndarray
    top1: list[str]
    history: np.ndarray

    def to_image(self):
        from convscope.render.grid import image_grid

        caps = [f"{t} ({c:.3f})" for t, c in zip(self.top1, self.confidence)]
        return image_grid(list(self.images), pad=4, captions=caps)

    def headline(self) -> str:
        best = float(np.max(self.confidence)) if len(self.confidence) else 0.0
        return f"{self.method} fooling images for class {self.target}: best confidence {best:.3f}"


def fool(
    subject: Subject,
    target: int | str,
    method: str = "gradient",
    *,
    n: int = 1,
    size: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    **options,
) -> Fooling:
    """Make ``n`` fooling images for class ``target`` (an index or a class name) with ``method``
    (gradient, evolve, cppn).

    gradient: ``steps=60``, ``lr=0.1``. evolve: ``generations=200``, ``population=32``,
    ``elite=4``, ``genome=16`` (px per side), ``rate=0.1``, ``sigma=0.2``. cppn: the same with
    ``hidden=16`` and ``layers=3``."""
    target = subject.class_index(target)  # a name, or a range-checked index
    h, w = (size, size) if size else subject.input_size
    if method == "gradient":
        gen = torch.Generator().manual_seed(seed)
        init = pixel_image((n, 3, h, w), sd=1.0, decorrelate=False, generator=gen, device=subject.device)
        syn = optimize(
            subject,
            O.class_log_prob(target),
            batch=n,
            size=(h, w),
            steps=int(options.get("steps", 60)),
            lr=float(options.get("lr", 0.1)),
            transform=none(),
            init=init,
            seed=seed,
            progress=progress,
        )
        images = torch.as_tensor(syn.images).permute(0, 3, 1, 2)
        history = np.exp(syn.history)
    elif method in ("evolve", "cppn"):
        images, history = _evolve(subject, target, method, n, (h, w), seed, progress, options)
    else:
        raise UserInputError(f"unknown method {method!r}: gradient, evolve or cppn")
    with torch.no_grad():
        probs = subject.model(subject.preprocess.normalize(images.to(subject.device))).softmax(-1)
    top = probs.argmax(-1).tolist()
    return Fooling(
        method,
        target,
        images.permute(0, 2, 3, 1).cpu().numpy(),
        probs[:, target].cpu().numpy(),
        [subject.label(t) for t in top],
        history,
    )


# --- evolution --------------------------------------------------------------------------------


def _coords(h: int, w: int, device) -> torch.Tensor:
    ys = torch.linspace(-1, 1, h, device=device)
    xs = torch.linspace(-1, 1, w, device=device)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    r = torch.sqrt(x * x + y * y)
    return torch.stack([x, y, r, torch.ones_like(r)], dim=-1)  # (h, w, 4)


class _Cppn:
    """Genome = weights of an MLP from (x, y, r, 1) to RGB; hidden units alternate sin, tanh and
    Gaussian activations, which give the symmetric, repeating patterns of CPPN images."""

    def __init__(self, hidden: int, layers: int):
        self.shapes = [(4, hidden)] + [(hidden, hidden)] * (layers - 1) + [(hidden, 3)]
        self.size = sum(a * b for a, b in self.shapes)

    def render(self, genomes: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        h = coords.flatten(0, 1)[None].expand(genomes.shape[0], -1, -1)  # (P, HW, 4)
        pos = 0
        for i, (a, b) in enumerate(self.shapes):
            wgt = genomes[:, pos : pos + a * b].view(-1, a, b)
            pos += a * b
            h = torch.bmm(h, wgt)
            if i < len(self.shapes) - 1:
                kind = i % 3
                h = torch.sin(h) if kind == 0 else torch.tanh(h) if kind == 1 else torch.exp(-h * h)
        out = torch.sigmoid(h)  # (P, HW, 3)
        return out.view(genomes.shape[0], coords.shape[0], coords.shape[1], 3).permute(0, 3, 1, 2)


def _evolve(subject, target, method, n, size, seed, progress, options):
    generations = int(options.get("generations", 200))
    pop = int(options.get("population", 32))
    elite = int(options.get("elite", 4))
    rate = float(options.get("rate", 0.1))
    sigma = float(options.get("sigma", 0.2))
    if not 1 <= elite < pop:
        raise UserInputError("need 1 <= elite < population")
    gen = torch.Generator().manual_seed(seed)
    device = subject.device
    h, w = size
    if method == "evolve":
        g = int(options.get("genome", 16))
        genomes = torch.rand(n, pop, 3 * g * g, generator=gen)

        def decode(x):
            img = x.view(-1, 3, g, g).clamp(0, 1)
            return F.interpolate(img, size=(h, w), mode="nearest")
    else:
        net = _Cppn(int(options.get("hidden", 16)), int(options.get("layers", 3)))
        coords = _coords(h, w, "cpu")
        genomes = torch.randn(n, pop, net.size, generator=gen)

        def decode(x):
            return net.render(x, coords)

    history = np.zeros((generations, n))
    best = torch.zeros(n, 3, h, w)
    step_size = torch.full((n,), sigma)
    record = torch.full((n,), -1.0)
    report = progress or (lambda d, t: None)
    for step in range(generations):
        fit = torch.zeros(n, pop)
        for i in range(n):
            imgs = decode(genomes[i])
            with torch.no_grad():
                out = subject.model(subject.preprocess.normalize(imgs.to(device)))
            fit[i] = out.softmax(-1)[:, target].cpu()
        order = fit.argsort(dim=1, descending=True)
        history[step] = fit.gather(1, order[:, :1])[:, 0].numpy()
        for i in range(n):
            top = float(fit[i, order[i, 0]])
            step_size[i] *= 1.2 if top > record[i] else 0.85
            step_size[i] = step_size[i].clamp(0.01, 2.0)
            record[i] = max(record[i], top)
            parents = genomes[i][order[i, :elite]]
            pick = torch.randint(elite, (pop - elite,), generator=gen)
            children = parents[pick].clone()
            mask = torch.rand(children.shape, generator=gen) < rate
            children = children + mask * torch.randn(children.shape, generator=gen) * step_size[i]
            if method == "evolve":
                children = children.clamp(0, 1)
            genomes[i] = torch.cat([parents, children])
        report(step + 1, generations)
    for i in range(n):  # the elites were kept in front: genome 0 is the best evaluated
        best[i] = decode(genomes[i][:1])[0]
    return best, history.max(axis=1) if n == 1 else history.mean(axis=1)
