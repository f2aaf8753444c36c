"""Gradient methods: saliency, input x gradient, SmoothGrad, Integrated Gradients, and the
deconvnet / guided-backpropagation rules."""

from __future__ import annotations

import warnings

import torch

from convscope.attribution.base import Method, input_gradient, register
from convscope.attribution.relu_rules import ReluRule


@register
class Saliency(Method):
    """|dS/dx|, maximum over colour channels (Simonyan et al. 2013, eq. 2 and sec. 3.1).

    ``raw`` holds the absolute gradient per channel (as Captum's ``Saliency(abs=True)``)."""

    name = "saliency"

    def attribute(self, x, target):
        g = input_gradient(self.subject, x, target).abs()
        return g.amax(dim=1), g


@register
class InputXGradient(Method):
    """x * dS/dx (Shrikumar et al. 2016), summed over channels for the map (signed)."""

    name = "input_x_gradient"
    signed = True

    def attribute(self, x, target):
        raw = x * input_gradient(self.subject, x, target)
        return raw.sum(dim=1), raw


@register
class SmoothGrad(Method):
    """Average gradient over ``samples`` noisy copies of the input (Smilkov et al. 2017).

    Options: ``samples=50``; ``noise=0.15``, the noise standard deviation *as a fraction of the
    input's range* (max - min), the paper's parametrisation (Captum's NoiseTunnel takes an
    absolute ``stdevs``, default 1.0); ``magnitude=False`` averages signed gradients (True: their
    absolute values); ``seed=0``. The map is the channel-wise max of |average|."""

    name = "smoothgrad"
    takes = ("samples", "noise", "magnitude", "seed")

    def attribute(self, x, target):
        samples = int(self.options.get("samples", 50))
        noise = float(self.options.get("noise", 0.15))
        magnitude = bool(self.options.get("magnitude", False))
        gen = torch.Generator(device=x.device).manual_seed(int(self.options.get("seed", 0)))
        span = x.amax(dim=(1, 2, 3), keepdim=True) - x.amin(dim=(1, 2, 3), keepdim=True)
        total = torch.zeros_like(x)
        # several noisy copies per forward pass (16 inputs, as integrated gradients' default
        # batch): the noise is drawn and the gradients summed in the same order as one at a time
        n = x.shape[0]
        per = max(1, 16 // max(n, 1))
        for s in range(0, samples, per):
            k = min(per, samples - s)
            noisy = torch.cat(
                [x + torch.randn(x.shape, generator=gen, device=x.device) * noise * span for _ in range(k)]
            )
            grads = input_gradient(self.subject, noisy, target.repeated(k)).view(k, *x.shape)
            for g in grads:
                total += g.abs() if magnitude else g
        raw = total / samples
        return raw.abs().amax(dim=1), raw


@register
class IntegratedGradients(Method):
    """(x - x') * integral_0^1 dS/dx(x' + a (x - x')) da (Sundararajan et al. 2017).

    Options: ``steps=50``; ``baseline="black"`` (the paper's black image, i.e. pixel value 0
    mapped through the model's normalisation) or ``"zero"`` (zero in model-input space,
    Captum's default) or a tensor; ``batch=16`` interpolation points per forward pass. The
    integral uses the trapezoidal rule (Captum's ``riemann_trapezoid``). The map is the sum
    over channels (signed)."""

    name = "integrated_gradients"
    takes = ("steps", "batch", "baseline")
    signed = True

    def attribute(self, x, target):
        steps = int(self.options.get("steps", 50))
        batch = int(self.options.get("batch", 16))
        base = self.options.get("baseline", "black")
        if isinstance(base, torch.Tensor):
            baseline = base.to(x).expand_as(x)
        elif base == "zero":
            baseline = torch.zeros_like(x)
        elif base == "black":
            baseline = self.subject.preprocess.normalize(torch.zeros_like(x))
        else:
            raise ValueError(f"unknown baseline {base!r}")
        if steps < 2:
            raise ValueError("integrated gradients needs steps >= 2")
        alphas = torch.linspace(0, 1, steps, device=x.device)
        weights = torch.full((steps,), 1.0 / (steps - 1), device=x.device)
        weights[0] = weights[-1] = 0.5 / (steps - 1)
        total = torch.zeros_like(x)
        n = x.shape[0]
        per = max(1, batch // max(n, 1))
        for s in range(0, steps, per):
            a = alphas[s : s + per]
            path = baseline[None] + a.view(-1, 1, 1, 1, 1) * (x - baseline)[None]  # (k, N, ...)
            t = target.repeated(len(a))
            g = input_gradient(self.subject, path.flatten(0, 1), t).view(len(a), *x.shape)
            total += (g * weights[s : s + per].view(-1, 1, 1, 1, 1)).sum(0)
        raw = (x - baseline) * total
        return raw.sum(dim=1), raw


class _RuleMethod(Method):
    rule = "guided"
    intercepts = True

    def attribute(self, x, target):
        def check(mode: ReluRule) -> None:
            if mode.count == 0:
                warnings.warn(
                    f"{self.name}: the model ran no rectifier (ReLU, ReLU6, hardtanh) on the way to "
                    "the target, so this is the plain gradient",
                    stacklevel=4,
                )

        g = input_gradient(self.subject, x, target, rule=self.rule, on_rule=check)
        return g.abs().amax(dim=1), g


@register
class GuidedBackprop(_RuleMethod):
    """Guided backpropagation (Springenberg et al. 2015): at every rectifier only positive
    gradients pass, and only where the forward input was in the linear region. ``raw`` is
    the reconstructed image-like gradient; the map is its channel-wise max of |.|."""

    name = "guided"
    rule = "guided"


@register
class Deconvnet(_RuleMethod):
    """The "deconvnet" backward rule (Zeiler & Fergus 2014 as formulated by Springenberg et al.
    2015): at every rectifier only positive gradients pass, whatever the forward input."""

    name = "deconvnet"
    rule = "deconvnet"
