"""Backward rules for rectifiers: "deconvnet" and guided backpropagation (Springenberg et al.
2015), applied to every rectifying operation the forward pass runs.

For ``f = relu(x)`` and the incoming gradient ``R``:

- gradient:  ``R * (x > 0)``
- deconvnet: ``R * (R > 0)`` (the forward mask is ignored)
- guided:    ``R * (x > 0) * (R > 0)``

Clipped rectifiers (ReLU6, ``hardtanh(x, 0, 6)``, hardtanh in general) use the mask of their
linear region, ``min < x < max``, in place of ``x > 0``.

The rule is applied by intercepting the operations themselves (``torch.relu``, ``relu_``,
``F.relu``, ``hardtanh``/``relu6`` and their in-place forms) with a ``TorchFunctionMode``, not by
hooking ``nn.ReLU`` modules: it therefore also covers functional calls, ``inplace=True`` and
ReLU6 (Captum's module hooks miss all three on EfficientNet-Lite, which uses ReLU6, and return
the plain gradient there). In-place rectifiers are computed out of place while the rule is
active; models that ignore the return value of an in-place activation are not supported.

Other activations (SiLU, GELU, Hardswish, sigmoid...) keep their ordinary gradient: the rules
are defined for rectifiers only. :class:`ReluRule` counts the operations it changed;
``explain`` warns when that count is zero.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.overrides import TorchFunctionMode

Rule = Literal["deconvnet", "guided"]

_RELU = {"relu", "relu_"}
_HARDTANH = {"hardtanh", "hardtanh_", "relu6"}


class _Rectify(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lo, hi, rule):
        ctx.rule = rule
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp(min=lo, max=hi)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if ctx.rule != "guided":
            return grad.clamp_min(0), None, None, None
        # the forward mask by the fused kernels of relu / hardtanh's own backward (one pass, not
        # three comparisons and a multiply): 0 unless lo < x (< hi)
        if ctx.hi is None:
            out = torch.ops.aten.threshold_backward(grad, x, ctx.lo)
        else:
            out = torch.ops.aten.hardtanh_backward(grad, x, ctx.lo, ctx.hi)
        return out.clamp_min_(0), None, None, None


class ReluRule(TorchFunctionMode):
    """While active, every rectifier in a forward pass uses ``rule`` for its backward pass.

    Run the forward pass inside the mode and the backward pass after leaving it."""

    def __init__(self, rule: Rule):
        super().__init__()
        if rule not in ("deconvnet", "guided"):
            raise ValueError(f"unknown rule {rule!r}")
        self.rule = rule
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _RELU or name in _HARDTANH:
            x = args[0] if args else kwargs.get("input")
            if isinstance(x, torch.Tensor) and x.requires_grad:
                lo, hi = 0.0, None
                if name == "relu6":
                    hi = 6.0
                elif name in ("hardtanh", "hardtanh_"):
                    lo = float(_get(args, kwargs, 1, "min_val", -1.0))
                    hi = float(_get(args, kwargs, 2, "max_val", 1.0))
                self.count += 1
                return _Rectify.apply(x, lo, hi, self.rule)
        return func(*args, **kwargs)


def _get(args, kwargs, i, name, default):
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default
