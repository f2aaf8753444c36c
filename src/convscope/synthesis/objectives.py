"""Objectives: what an input is optimised for. Each maps the current step to one score per
image (N,), to be *maximised*; they compose with ``+ - * /``, negation and plain numbers::

    obj = channel("blocks.5", range(32)) - 0.05 * total_variation()

Objectives that take a list of units (``channel("blocks.5", [0, 1, 2])``) give image ``i`` unit
``i``: a batch of N images optimises N units in one run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from convscope.errors import UserInputError


class Context:
    """What an objective can read at one step: layer activations, the model output, the
    current image (N, 3, H, W) in [0, 1] before the random transforms."""

    def __init__(self, acts: Callable[[str], torch.Tensor], output, image: torch.Tensor):
        self._acts = acts
        self.output = output
        self.image = image

    def act(self, layer: str) -> torch.Tensor:
        a = self._acts(layer)
        return a[:, :, None, None] if a.dim() == 2 else a


class Objective:
    """A score per image, plus the layers it reads and whether it needs the model output."""

    def __init__(
        self,
        fn: Callable[[Context], torch.Tensor],
        layers: Iterable[str] = (),
        needs_output: bool = False,
        name: str = "",
    ):
        self.fn = fn
        self.layers = tuple(dict.fromkeys(layers))
        self.needs_output = needs_output
        self.name = name

    def __call__(self, ctx: Context) -> torch.Tensor:
        return self.fn(ctx)

    def _combine(self, other, op, sym: str) -> Objective:
        if isinstance(other, (int, float)):
            return Objective(
                lambda c: op(self(c), other), self.layers, self.needs_output, f"({self.name} {sym} {other})"
            )
        return Objective(
            lambda c: op(self(c), other(c)),
            self.layers + other.layers,
            self.needs_output or other.needs_output,
            f"({self.name} {sym} {other.name})",
        )

    def __add__(self, other):
        return self._combine(other, lambda a, b: a + b, "+")

    def __radd__(self, other):
        return self + other

    def __sub__(self, other):
        return self._combine(other, lambda a, b: a - b, "-")

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, other):
        return self._combine(other, lambda a, b: a * b, "*")

    def __rmul__(self, other):
        return self * other

    def __truediv__(self, other):
        return self._combine(other, lambda a, b: a / b, "/")

    def __neg__(self):
        return Objective(lambda c: -self(c), self.layers, self.needs_output, f"-{self.name}")

    def __repr__(self) -> str:
        return f"Objective({self.name})"


def _per_image(values, n: int, what: str) -> torch.Tensor | None:
    if isinstance(values, int):
        return None
    idx = torch.as_tensor(list(values))
    if len(idx) != n:
        raise UserInputError(f"{what}: {len(idx)} entries for a batch of {n} images")
    return idx


def channel(layer: str, unit: int | Sequence[int]) -> Objective:
    """Mean activation of channel ``unit`` (or of ``unit[i]`` in image i) over the map."""

    def fn(c: Context):
        a = c.act(layer)
        idx = _per_image(unit, a.shape[0], "channel")
        if idx is None:
            return a[:, unit].mean(dim=(1, 2))
        return a[torch.arange(a.shape[0]), idx.to(a.device)].mean(dim=(1, 2))

    return Objective(fn, [layer], name=f"channel({layer}:{_fmt(unit)})")


def neuron(layer: str, unit: int | Sequence[int], y: int | None = None, x: int | None = None) -> Objective:
    """One spatial neuron of channel ``unit`` (default: the centre of the map)."""

    def fn(c: Context):
        a = c.act(layer)
        yy = a.shape[2] // 2 if y is None else y
        xx = a.shape[3] // 2 if x is None else x
        idx = _per_image(unit, a.shape[0], "neuron")
        if idx is None:
            return a[:, unit, yy, xx]
        return a[torch.arange(a.shape[0]), idx.to(a.device), yy, xx]

    return Objective(fn, [layer], name=f"neuron({layer}:{_fmt(unit)})")


def direction(layer: str, vectors: torch.Tensor) -> Objective:
    """Mean of sum_c v[c] a_c over the map; ``vectors`` (C,) for all images or (N, C), one each."""

    def fn(c: Context):
        a = c.act(layer)
        v = vectors.to(a.device, a.dtype)
        if v.dim() == 1:
            return torch.einsum("nchw,c->n", a, v) / (a.shape[2] * a.shape[3])
        return torch.einsum("nchw,nc->n", a, v) / (a.shape[2] * a.shape[3])

    return Objective(fn, [layer], name=f"direction({layer})")


def class_logit(cls: int | Sequence[int]) -> Objective:
    """The pre-softmax score of class ``cls`` (or ``cls[i]`` in image i) (Simonyan et al. 2013)."""

    def fn(c: Context):
        out = c.output
        idx = _per_image(cls, out.shape[0], "class_logit")
        if idx is None:
            return out[:, cls]
        return out[torch.arange(out.shape[0]), idx.to(out.device)]

    return Objective(fn, needs_output=True, name=f"logit({_fmt(cls)})")


def class_log_prob(cls: int | Sequence[int]) -> Objective:
    """log softmax probability of class ``cls`` (or ``cls[i]`` in image i): unlike the logit, it
    can only grow by beating every other class (fooling images, targeted attacks)."""

    def fn(c: Context):
        logp = c.output.log_softmax(-1)
        idx = _per_image(cls, logp.shape[0], "class_log_prob")
        if idx is None:
            return logp[:, cls]
        return logp[torch.arange(logp.shape[0]), idx.to(logp.device)]

    return Objective(fn, needs_output=True, name=f"logp({_fmt(cls)})")


def cross_entropy(labels: Sequence[int]) -> Objective:
    """Cross-entropy of the model's output against ``labels[i]`` for image i (the loss an
    untargeted attack increases)."""

    def fn(c: Context):
        idx = torch.as_tensor(list(labels), device=c.output.device)
        return torch.nn.functional.cross_entropy(c.output, idx, reduction="none")

    return Objective(fn, needs_output=True, name="cross-entropy")


def layer_norm(layer: str) -> Objective:
    """Mean squared activation of a whole layer, the DeepDream objective ||Phi(x)||^2."""
    return Objective(lambda c: c.act(layer).pow(2).mean(dim=(1, 2, 3)), [layer], name=f"norm({layer})")


def diversity(layer: str) -> Objective:
    """Minus the mean cosine similarity of each image's Gram matrix to the others' (Olah et al.
    2017): added with a weight, it pushes a batch for one objective towards different images."""

    def fn(c: Context):
        a = c.act(layer)
        n = a.shape[0]
        flat = a.flatten(2)
        gram = torch.bmm(flat, flat.transpose(1, 2)).flatten(1)
        gram = gram / gram.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sim = gram @ gram.T
        off = (sim.sum(dim=1) - sim.diagonal()) / max(n - 1, 1)
        return -off

    return Objective(fn, [layer], name=f"diversity({layer})")


def l2() -> Objective:
    """Squared L2 norm of the (grey-centred) image per pixel, Simonyan et al.'s regulariser;
    use it with a minus sign: ``class_logit(c) - lam * l2()``."""
    return Objective(lambda c: (c.image - 0.5).pow(2).mean(dim=(1, 2, 3)), name="l2")


def l1() -> Objective:
    return Objective(lambda c: (c.image - 0.5).abs().mean(dim=(1, 2, 3)), name="l1")


def total_variation(beta: float = 2.0) -> Objective:
    """Mahendran & Vedaldi's TV^beta: mean over pixels of ((dx)^2 + (dy)^2)^(beta / 2)."""

    def fn(c: Context):
        x = c.image
        dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
        dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
        return (dx.pow(2) + dy.pow(2) + 1e-12).pow(beta / 2).mean(dim=(1, 2, 3))

    return Objective(fn, name=f"tv{beta:g}")


def frequency_penalty(sigma: float = 1.0) -> Objective:
    """Energy of the image's high frequencies: mean squared difference to a blurred copy."""

    def fn(c: Context):
        from convscope.imageops import gaussian_blur

        return (c.image - gaussian_blur(c.image, sigma)).pow(2).mean(dim=(1, 2, 3))

    return Objective(fn, name="freq")


def _fmt(v) -> str:
    if isinstance(v, int):
        return str(v)
    v = list(v)
    return f"{v[0]}..{v[-1]}" if len(v) > 3 else ",".join(map(str, v))
