"""Layer-wise relevance propagation through Zennit (Anders et al. 2021): convscope gives the
subject, the target and the result; Zennit's rules, composites and canonizers do the propagation.

Zennit is an optional dependency (the ``lrp`` extra), imported only when an LRP map is asked for.
"""

from __future__ import annotations

import torch
from torch import nn

from convscope.attribution.base import Method, register
from convscope.errors import UserInputError

COMPOSITES = (
    "epsilon_plus",
    "epsilon_gamma_box",
    "epsilon_alpha2_beta1",
    "epsilon_plus_flat",
    "epsilon_alpha2_beta1_flat",
    "epsilon",
    "gamma",
    "alpha_beta",
    "zplus",
)
CANONIZERS = ("auto", "resnet", "vgg", "merge_bn", "none")


def zennit():
    """The ``zennit`` package, or a one-line error naming the extra that installs it."""
    try:
        import zennit  # noqa: F401
        import zennit.canonizers
        import zennit.composites
        import zennit.rules
        import zennit.torchvision
        import zennit.types
    except ImportError as err:
        raise UserInputError("method 'lrp' needs Zennit: pip install 'convscope[lrp]'") from err
    return zennit


def canonizers_for(model: nn.Module, which="auto") -> list:
    """Zennit canonizers for ``model``: ``"auto"`` picks Zennit's ``ResNetCanonizer`` for a
    torchvision ResNet (batch norms merged, residual adds as Zennit ``Sum`` modules), its
    ``VGGCanonizer`` for a torchvision VGG, and otherwise merges every batch norm into the
    convolution or linear layer right before it (``"merge_bn"``: Zennit's
    ``SequentialMergeBatchNorm``, extended to timm's ``BatchNormAct2d``, which has children and
    so is not a leaf Zennit's walk sees); ``"none"`` (or None) merges nothing; a list of Zennit
    canonizer instances is used as it is."""
    z = zennit()
    if which is None or which == "none":
        return []
    if isinstance(which, (list, tuple)):
        return list(which)
    if which not in CANONIZERS:
        raise UserInputError(f"lrp: unknown canonizer {which!r}; use one of {', '.join(CANONIZERS)}")
    if which == "auto":
        import torchvision.models as tvm

        if isinstance(model, tvm.ResNet):
            which = "resnet"
        elif isinstance(model, tvm.VGG):
            which = "vgg"
        else:
            which = "merge_bn"
    if which == "resnet":
        return [z.torchvision.ResNetCanonizer()]
    if which == "vgg":
        return [z.torchvision.VGGCanonizer()]
    return [_merge_bn_canonizer()]


def _merge_bn_canonizer():
    z = zennit()

    class MergeBatchNorm(z.canonizers.SequentialMergeBatchNorm):
        """Zennit's sequential merge, where a batch norm with children (timm's ``BatchNormAct2d``:
        norm, then dropout and activation) counts as one leaf that follows the layer before it."""

        def apply(self, root_module):
            instances = []
            last = None
            for leaf in _leaves(root_module, self.batch_norm_type):
                if isinstance(last, self.linear_type) and isinstance(leaf, self.batch_norm_type):
                    instance = self.copy()
                    instance.register((last,), leaf)
                    instances.append(instance)
                last = leaf
            return instances

    return MergeBatchNorm()


def _leaves(module: nn.Module, stop_types):
    """Leaves of ``module`` in registration order; a module of ``stop_types`` is a leaf, its
    children (a ``BatchNormAct2d``'s activation) come after it."""
    children = list(module.children())
    if not children or isinstance(module, stop_types):
        yield module
    for child in children:
        yield from _leaves(child, stop_types)


def composite_for(subject, name: str, options: dict, x: torch.Tensor):
    """The Zennit composite ``name`` with convscope's options (``epsilon``, ``gamma``, ``alpha``,
    ``beta``, ``canonizer``); ``epsilon_gamma_box`` bounds the first layer's input by the
    model-space images of black and white pixels."""
    z = zennit()
    c, r = z.composites, z.rules
    canon = canonizers_for(subject.model, options.get("canonizer", "auto"))
    eps = float(options.get("epsilon", 1e-6))
    gamma = float(options.get("gamma", 0.25))
    alpha = float(options.get("alpha", 2.0))
    beta = float(options.get("beta", 1.0))
    if name == "epsilon_plus":
        return c.EpsilonPlus(epsilon=eps, canonizers=canon)
    if name == "epsilon_alpha2_beta1":
        return c.EpsilonAlpha2Beta1(epsilon=eps, canonizers=canon)
    if name == "epsilon_plus_flat":
        return c.EpsilonPlusFlat(epsilon=eps, canonizers=canon)
    if name == "epsilon_alpha2_beta1_flat":
        return c.EpsilonAlpha2Beta1Flat(epsilon=eps, canonizers=canon)
    if name == "epsilon_gamma_box":
        low, high = box_bounds(subject, x)
        return c.EpsilonGammaBox(low=low, high=high, epsilon=eps, gamma=gamma, canonizers=canon)
    rule = {
        "epsilon": lambda: r.Epsilon(epsilon=eps),
        "gamma": lambda: r.Gamma(gamma=gamma),
        "alpha_beta": lambda: r.AlphaBeta(alpha=alpha, beta=beta),
        "zplus": lambda: r.ZPlus(),
    }[name]()
    layer_map = c.layer_map_base() + [(z.types.Linear, rule)]  # Zennit's Linear: convolutions too
    return c.LayerMapComposite(layer_map=layer_map, canonizers=canon)


def box_bounds(subject, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lowest and highest model-space pixel values (N, 3, H, W): pixel values 0 and 1 normalised."""
    low = subject.preprocess.normalize(torch.zeros_like(x))
    high = subject.preprocess.normalize(torch.ones_like(x))
    return low, high


@register
class LRP(Method):
    """Layer-wise relevance propagation (Bach et al. 2015) by Zennit's composites.

    Options: ``composite="epsilon_plus"`` (Zennit's ``epsilon_plus``, ``epsilon_gamma_box``,
    ``epsilon_alpha2_beta1``, ``epsilon_plus_flat``, ``epsilon_alpha2_beta1_flat``, or one rule
    on every convolution and linear layer: ``epsilon``, ``gamma``, ``alpha_beta``, ``zplus``);
    ``epsilon=1e-6`` (ε rule), ``gamma=0.25`` (γ rule), ``alpha=2``, ``beta=1`` (αβ rule);
    ``canonizer="auto"`` (see :func:`canonizers_for`). The relevance put on the output is the
    target's value (its logit, or a unit's mean activation), so a conserving propagation gives a
    map that sums to it. ``raw`` is the relevance per input channel (N, 3, H, W); the map is its
    sum over channels (signed). Activations pass relevance unchanged (Zennit's ``Pass``, whatever
    the nonlinearity); a residual add that no canonizer replaces passes the gradient, which copies
    the relevance into both branches (see docs/attribution.md for which models conserve).
    """

    name = "lrp"
    signed = True
    intercepts = True
    takes = ("composite", "epsilon", "gamma", "alpha", "beta", "canonizer")

    @classmethod
    def validate(cls, options):
        super().validate(options)
        name = _composite_name(options)
        if name not in COMPOSITES:
            import difflib

            close = difflib.get_close_matches(name, COMPOSITES, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(COMPOSITES)}"
            raise UserInputError(f"lrp: unknown composite {name!r}; {hint}")
        zennit()  # the missing extra is an error before any work

    def __init__(self, subject, **options):
        super().__init__(subject, **options)
        self.composite_name = _composite_name(options)

    def attribute(self, x, target):
        if self.subject.token_layout is not None:
            raise UserInputError(
                f"lrp: {self.subject.name} is a transformer; Zennit's rules cover convolutional "
                "networks (attention and layer norm need rules it does not have)"
            )
        if target.kind == "prob":
            raise UserInputError("lrp explains logits and units, not probabilities: use class:N")
        composite = composite_for(self.subject, self.composite_name, self.options, x)
        x = x.detach().clone().requires_grad_(True)
        with torch.no_grad():
            # The output relevance is the target's value in the model as it is: Zennit's merged
            # batch norms keep their eps, so the canonized model's logits differ by ~eps/2 per norm.
            # Without a graph: it costs a plain forward, as the value Zennit's users take.
            value = target.score(self.subject, x)
        try:
            with torch.enable_grad(), composite.context(self.subject.model):
                score = target.score(self.subject, x)
                if not score.requires_grad:
                    raise _NoGraph
                (relevance,) = torch.autograd.grad(score, x, grad_outputs=value)
        except Exception as err:
            # A model that gives no gradient (run under no_grad, detached outputs) ends in Zennit's
            # hooks meeting tensors without a graph; asking the model as it is tells which it was.
            if isinstance(err, _NoGraph) or not self._has_gradient(x, target):
                from convscope.attribution.base import no_gradient_error

                raise no_gradient_error(self.subject) from None
            raise
        return relevance.sum(dim=1), relevance

    def _has_gradient(self, x, target) -> bool:
        with torch.enable_grad():
            return bool(target.score(self.subject, x).requires_grad)


class _NoGraph(Exception):
    """The composite's score has no graph (raised and caught inside :meth:`LRP.attribute`)."""


def _composite_name(options) -> str:
    return str(options.get("composite", "epsilon_plus")).lower().replace("-", "_")


__all__ = ["CANONIZERS", "COMPOSITES", "LRP", "box_bounds", "canonizers_for", "composite_for", "zennit"]
